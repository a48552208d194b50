//! The same saved checkpoint gives the same embeddings on `cpu` (Flex) and `wgpu`
//! (here Mesa's software Vulkan, lavapipe): cosine >= 0.9999 for every item.

mod common;

use common::*;

fn index_embeddings(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    // Index files are read through the library, as the CLI does.
    let index = vitrine_index::Index::load(path).unwrap();
    (0..index.len())
        .map(|r| {
            (
                index.item(r).unwrap().id.clone(),
                index.embedding(r).unwrap().to_vec(),
            )
        })
        .collect()
}

#[test]
fn cpu_and_wgpu_embed_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_catalogue(d);
    let config = write_config(d, 2);
    let run = d.join("run");
    ok(&[
        "train",
        "--config",
        s(&config),
        "--run-dir",
        s(&run),
        "--quiet",
    ]);
    let cpu = d.join("cpu.index");
    ok(&[
        "index",
        "build",
        "--run",
        s(&run),
        "--out",
        s(&cpu),
        "--quiet",
    ]);

    let gpu = d.join("wgpu.index");
    let out = vitrine(&[
        "index",
        "build",
        "--run",
        s(&run),
        "--out",
        s(&gpu),
        "--quiet",
        "--device",
        "wgpu",
    ]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("device wgpu unavailable"),
            "wgpu failed for another reason: {err}"
        );
        eprintln!("SKIP cpu/wgpu parity: {err}  (install a Vulkan driver, e.g. `apt-get install mesa-vulkan-drivers`)");
        return;
    }
    let a = index_embeddings(&cpu);
    let b = index_embeddings(&gpu);
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), 24);
    for ((ida, ea), (idb, eb)) in a.iter().zip(&b) {
        assert_eq!(ida, idb);
        let dot: f32 = ea.iter().zip(eb).map(|(x, y)| x * y).sum();
        let na: f32 = ea.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = eb.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (na * nb);
        assert!(cos >= 0.9999, "item {ida}: cosine {cos}");
    }
}
