//! Timing checks from issue 6 (10,000 x 128 features on 2 cores), ignored by default:
//! `cargo test --release --lib metrics::bench -- --ignored --nocapture`.

use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn features(n: usize, dim: usize, shift: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n * dim)
        .map(|_| rng.sample::<f32, _>(StandardNormal) + shift)
        .collect()
}

#[test]
#[ignore = "timing benchmark; run in release"]
fn bench_frechet_10k_x_128() {
    let (n, dim) = (10_000, 128);
    let real = features(n, dim, 0.0, 1);
    let fake = features(n, dim, 0.1, 2);
    let t = Instant::now();
    let d = super::frechet_distance_features(&real, &fake, dim).unwrap();
    eprintln!(
        "frechet 10k x 128: {:.3} s (d = {d:.4}, threads = {})",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
}

#[test]
#[ignore = "timing benchmark; run in release"]
fn bench_prdc_10k_vs_10k_x_128() {
    let (n, dim) = (10_000, 128);
    let real = features(n, dim, 0.0, 3);
    let fake = features(n, dim, 0.1, 4);
    let t = Instant::now();
    let p = super::prdc(&real, &fake, dim).unwrap();
    eprintln!(
        "prdc 10k vs 10k x 128: {:.3} s ({p:?}, threads = {})",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
}

#[test]
#[ignore = "timing benchmark; run in release"]
fn bench_frechet_2k_x_512() {
    let (n, dim) = (2_000, 512);
    let real = features(n, dim, 0.0, 5);
    let fake = features(n, dim, 0.0, 6);
    let t = Instant::now();
    let d = super::frechet_distance_features(&real, &fake, dim).unwrap();
    eprintln!(
        "frechet 2k x 512: {:.3} s (d = {d:.4})",
        t.elapsed().as_secs_f64()
    );
}
