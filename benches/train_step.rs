//! Images/s of a full training step (D step with R1 and R2, then G step, EMA) at 32x32x3,
//! batch 64, on the CPU, and the peak resident memory (VmHWM) of the process, for every
//! generator family of the generator-history study at one width.
//!
//! Run with `cargo bench --profile dev --bench train_step` (every net, one child process
//! each so every peak-memory figure is its own) or name some:
//! `cargo bench --profile dev --bench train_step -- dcgan resnet`.
//! Nets: `dcgan` (G and D), `resnet` (SNGAN-style G and D), `selfmod` (resnet body, resnet
//! D), `stylegan` (mapping 8 x 512, noise, resnet D), `r3gan-e` (G and D), and
//! `dcgan-torch` (the width-32 DCGAN of `benches/torch_dcgan.py`, for the PyTorch
//! comparison). `BENCH_WIDTH` (default 64) sets the base width (channels at 32x32;
//! 8 x width at 4x4), `BENCH_STEPS` (default 5) the timed steps after one warm-up step.

use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

use ablate::gan::{TrainConfig, TrainData, Trainer};
use ablate::nn::Rng;

const RES: usize = 32;
const CH: usize = 3;
const BATCH: usize = 64;
const NETS: [&str; 5] = ["dcgan", "resnet", "selfmod", "stylegan", "r3gan-e"];

/// (G, D) of a bench net at base width `w`. `dcgan-torch`: width 32 gives D
/// 3->64->128->256 (4x4) -> linear and G z(128) -> 256x4x4 -> 128 -> 64 -> 32 -> 3x3 conv
/// -> 3, BN in G only (the PyTorch DCGAN CIFAR sizes).
fn nets(name: &str, w: usize) -> (Value, Value) {
    let resnet_d = json!({"arch": "resnet", "width": w});
    match name {
        "dcgan" => (
            json!({"arch": "dcgan", "width": w, "z_dim": 128}),
            json!({"arch": "dcgan", "width": w}),
        ),
        "dcgan-torch" => (
            json!({"arch": "dcgan", "width": 32, "z_dim": 128}),
            json!({"arch": "dcgan", "width": 32}),
        ),
        "resnet" => (
            json!({"arch": "resnet", "width": w, "z_dim": 128}),
            resnet_d,
        ),
        "selfmod" => (
            json!({"arch": "selfmod", "width": w, "z_dim": 128}),
            resnet_d,
        ),
        "stylegan" => (
            json!({"arch": "stylegan", "width": w, "z_dim": 128, "noise": true}),
            resnet_d,
        ),
        "r3gan-e" => (
            json!({"arch": "r3gan", "variant": "E", "width": w, "z_dim": 128}),
            json!({"arch": "r3gan", "variant": "E", "width": w}),
        ),
        _ => panic!(
            "unknown net {name:?}: dcgan | resnet | selfmod | stylegan | r3gan-e | dcgan-torch"
        ),
    }
}

fn config(name: &str, w: usize) -> TrainConfig {
    let (g, d) = nets(name, w);
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

fn run(name: &str, width: usize, steps: usize) {
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
    let mut t = Trainer::new(config(name, width), data, 1).unwrap();
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
        "{name:11} G {pg:>9} D {pd:>9} params | warm-up {warm:.2} s | {steps} steps {s:.2} s \
         | {:.3} s/step | {:.1} images/s | peak RSS {:.0} MiB",
        s / steps as f64,
        (steps * BATCH) as f64 / s,
        vm_hwm_mib()
    );
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let steps = env("BENCH_STEPS", 5);
    let width = env("BENCH_WIDTH", 64);
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::var_os("TRAIN_STEP_CHILD").is_none() {
        println!(
        "train step: rpgan + R1 + R2 (FD-HVP), batch {BATCH}, {CH}x{RES}x{RES}, width {width}, {} threads",
        rayon::current_num_threads()
    );
    }
    if names.is_empty() {
        // one child per net so that each VmHWM is its own
        let exe = std::env::current_exe().unwrap();
        for n in NETS {
            let st = Command::new(&exe)
                .arg(n)
                .env("TRAIN_STEP_CHILD", "1")
                .status()
                .unwrap();
            assert!(st.success());
        }
        return;
    }
    for n in names {
        run(&n, width, steps);
    }
}
