//! Images/s of a full training step (D step with R1 and R2, then G step, EMA) at 32x32x3,
//! batch 64, on the CPU, and the peak resident memory (VmHWM) of the process.
//!
//! Run with `cargo bench --bench train_step` (both nets, one child process each so every
//! peak-memory figure is its own) or `cargo bench --bench train_step -- dcgan|r3gan-e`.
//! `BENCH_STEPS` (default 5) timed steps follow one warm-up step.
//! Same DCGAN step in PyTorch: `benches/torch_dcgan.py`.

use std::process::Command;
use std::time::Instant;

use serde_json::json;

use ablate::gan::{TrainConfig, TrainData, Trainer};
use ablate::nn::Rng;

const RES: usize = 32;
const CH: usize = 3;
const BATCH: usize = 64;

/// dcgan: width 32 gives D 3->64->128->256 (4x4) -> linear and G z(128) -> 256x4x4 ->
/// 128 -> 64 -> 32 -> 3x3 conv -> 3, BN in G only (the PyTorch DCGAN CIFAR sizes).
/// r3gan-e: width 32 (channels 32/64/128/256 from 32x32 down to 4x4), expansion 2,
/// group size 16, one block per stage.
fn config(name: &str) -> TrainConfig {
    let (g, d) = match name {
        "dcgan" => (
            json!({"arch": "dcgan", "width": 32, "z_dim": 128}),
            json!({"arch": "dcgan", "width": 32}),
        ),
        "r3gan-e" => (
            json!({"arch": "r3gan", "variant": "E", "width": 32, "z_dim": 128}),
            json!({"arch": "r3gan", "variant": "E", "width": 32}),
        ),
        _ => panic!("unknown net {name:?}: dcgan | r3gan-e"),
    };
    serde_json::from_value(json!({
        "generator": g,
        "discriminator": d,
        "loss": "rpgan",
        "penalties": ["r1", "r2"],
        "gamma": 0.1,
        "optimizer": {"lr": 2e-4, "betas": [0.0, 0.99]},
        "batch": BATCH,
        "steps": 1_000_000,
        "ema": 0.999,
        "seed": 1,
    }))
    .unwrap()
}

fn vm_hwm_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn run(name: &str, steps: usize) {
    let n = 512;
    let mut rng = Rng::new(7);
    let data: Vec<f32> = (0..n * CH * RES * RES)
        .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let data = TrainData::Images {
        data,
        n,
        c: CH,
        h: RES,
        w: RES,
    };
    let mut t = Trainer::new(config(name), data, 1).unwrap();
    let (pg, pd) = t.param_counts();
    let t0 = Instant::now();
    t.step();
    let warm = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..steps {
        let l = t.step();
        assert!(l.is_finite(), "{name} diverged: {l:?}");
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{name:8} G {pg:>9} D {pd:>9} params | warm-up {warm:.2} s | {steps} steps {s:.2} s \
         | {:.3} s/step | {:.1} images/s | peak RSS {:.0} MiB",
        s / steps as f64,
        (steps * BATCH) as f64 / s,
        vm_hwm_mib()
    );
}

fn main() {
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!(
        "train step: rpgan + R1 + R2 (FD-HVP), batch {BATCH}, {CH}x{RES}x{RES}, {} threads",
        rayon::current_num_threads()
    );
    if names.is_empty() {
        // one child per net so that each VmHWM is its own
        let exe = std::env::current_exe().unwrap();
        for n in ["dcgan", "r3gan-e"] {
            let st = Command::new(&exe).arg(n).status().unwrap();
            assert!(st.success());
        }
        return;
    }
    for n in names {
        run(&n, steps);
    }
}
