//! Seeded initialisation under the process-wide seeding lock. Its own test binary: the
//! backend's RNG is global to the process, and the unit tests of the library draw from it
//! concurrently.

use burn::backend::Flex;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Distribution, Tensor};
use vitrine_train::dist::seed_guard;

type B = Flex;

fn init() -> Linear<B> {
    LinearConfig::new(8, 4).init::<B>(&Default::default())
}

fn values(m: &Linear<B>) -> Vec<f32> {
    let mut v: Vec<f32> = m.weight.val().into_data().iter::<f32>().collect();
    if let Some(b) = &m.bias {
        v.extend(b.val().into_data().iter::<f32>());
    }
    v
}

/// Another worker's draw between a model's `init` and its first use.
fn someone_else_draws() {
    let _ = Tensor::<B, 1>::random([64], Distribution::Default, &Default::default());
}

#[test]
fn finish_draws_every_parameter_under_the_seed() {
    let device = Default::default();
    let reference = values(&seed_guard::<B>(&device, 7).finish(init()));
    assert_eq!(reference.len(), 8 * 4 + 4);

    let eager = seed_guard::<B>(&device, 7).finish(init());
    someone_else_draws();
    assert_eq!(
        values(&eager),
        reference,
        "drawn in finish, not at first use"
    );

    // Why finish exists: Burn draws a parameter at its first access, so without it the
    // values depend on what other threads drew in between.
    let lazy = {
        let seeded = seed_guard::<B>(&device, 7);
        let m = init();
        drop(seeded);
        m
    };
    someone_else_draws();
    assert_ne!(values(&lazy), reference);
    assert_eq!(lazy.num_params(), 8 * 4 + 4);
}
