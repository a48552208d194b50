//! The same saved checkpoint gives the same embeddings on `cpu` (Flex) and `wgpu`
//! (here Mesa's software Vulkan, lavapipe): cosine >= 0.9999 for every item.

mod common;

use common::*;

#[test]
fn cpu_and_wgpu_embed_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = trained_run(d, 2, "run");
    let cpu = index_embeddings(&run, &d.join("cpu.index"), "cpu").unwrap();
    let gpu = match index_embeddings(&run, &d.join("wgpu.index"), "wgpu") {
        Ok(e) => e,
        Err(err) => {
            assert!(
                err.contains("device wgpu unavailable"),
                "wgpu failed for another reason: {err}"
            );
            eprintln!("SKIP cpu/wgpu parity: {err}  (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`)");
            return;
        }
    };
    let dim = 16;
    assert_eq!(cpu.len(), 24 * dim);
    assert_eq!(gpu.len(), cpu.len());
    for (item, (a, b)) in cpu.chunks(dim).zip(gpu.chunks(dim)).enumerate() {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (na * nb);
        assert!(cos >= 0.9999, "item {item}: cosine {cos}");
    }
}
