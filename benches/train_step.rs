//! ablate against PyTorch on the same training step: images/s and peak resident memory of
//! a full step (D step with the rpgan loss and R1 + R2, then G step, EMA) at 3x32x32,
//! batch 64, on the CPU, for the same nets in both (`benches/torch_step.py` builds
//! ablate's `dcgan`, `resnet` and `r3gan` E in PyTorch with equal parameter counts, which
//! this bench checks).
//!
//! ```text
//! cargo bench --bench train_step                      # dcgan resnet r3gan-e, widths 32 64
//! cargo bench --profile dev --bench train_step -- resnet   # reuse the test build
//! ```
//!
//! Every measurement is its own child process (so each peak RSS, VmHWM, is its own), and
//! the two frameworks alternate: ablate, PyTorch, ablate, PyTorch, ... Both get the same
//! threads. Nets by name: `dcgan`, `resnet`, `r3gan-e` (compared), `selfmod`, `stylegan`
//! (ablate only). Settings (environment):
//!
//! - `BENCH_WIDTHS` (default `32,64`): base widths (channels at 32x32; 8 x width at 4x4);
//! - `BENCH_STEPS` (default 3): timed steps after one warm-up step;
//! - `BENCH_ROUNDS` (default 1): alternations; the best round of each is reported;
//! - `BENCH_THREADS` (default: all cores): threads of both;
//! - `ABLATE_TORCH_PYTHON` (default `python3`): a Python with `torch`; without one the
//!   bench says so and prints ablate's figures only;
//! - `BENCH_TORCH_PENALTY` (default `fd`): PyTorch's R1/R2 by the same finite-difference
//!   Hessian-vector product as ablate (`fd`) or by double backward (`double`).

use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use ablate::data::DataTensor;
use ablate::gan::{TrainConfig, Trainer};
use ablate::nn::Rng;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RES: usize = 32;
const CH: usize = 3;
const BATCH: usize = 64;
const COMPARED: [&str; 3] = ["dcgan", "resnet", "r3gan-e"];
const ALL: [&str; 5] = ["dcgan", "resnet", "r3gan-e", "selfmod", "stylegan"];

/// (G, D) configs of a bench net at base width `w`.
fn nets(name: &str, w: usize) -> (Value, Value) {
    let resnet_d = json!({"arch": "resnet", "width": w});
    match name {
        "dcgan" => (
            json!({"arch": "dcgan", "width": w, "z_dim": 128}),
            json!({"arch": "dcgan", "width": w}),
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
        _ => panic!("unknown net {name:?}: {}", ALL.join(" | ")),
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

/// mimalloc's `mi_option_purge_delay` (mimalloc.h): how long freed memory stays mapped.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: i32 = 15;

#[cfg(feature = "mimalloc")]
extern "C" {
    fn mi_option_set(option: i32, value: std::os::raw::c_long);
}

/// Keep freed memory mapped (no purge): a training step frees and re-allocates the same
/// large buffers every op, and each purge makes the next use fault in fresh zeroed pages
/// (a third of a step's samples were in the kernel clearing pages). Costs peak RSS.
fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: sets a process-wide option; mimalloc reads it at purge time
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
}

fn vm_hwm_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The child: one net, one width; prints `RESULT {json}`. It trains inside a pool of its
/// own, as `ablate run` trains an instance (`engine::instance`): the step's parallel
/// kernels are then forks on a worker, not jobs injected from outside the pool (each of
/// those wakes a worker and puts the caller to sleep; 3-5% of a DCGAN-32 step).
fn child(name: &str, width: usize, steps: usize) {
    // RAYON_NUM_THREADS (set by the parent) sizes it, as `--threads` does an instance's
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("ablate-work-{i}"))
        .build()
        .expect("a thread pool");
    pool.install(|| train(name, width, steps));
}

fn train(name: &str, width: usize, steps: usize) {
    let n = 512;
    let mut rng = Rng::new(7);
    let data: Vec<f32> = (0..n * CH * RES * RES)
        .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let data = DataTensor::Images {
        values: data,
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
    let r = json!({
        "net": name,
        "width": width,
        "threads": rayon::current_num_threads(),
        "params_g": pg,
        "params_d": pd,
        "warmup_s": warm,
        "steps": steps,
        "seconds": s,
        "images_per_s": (steps * BATCH) as f64 / s,
        "peak_rss_mib": vm_hwm_mib(),
    });
    println!("RESULT {r}");
}

/// The `RESULT` line of a child's output.
fn result_of(out: &[u8]) -> Option<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|j| serde_json::from_str(j).ok())
}

/// Run a child process, passing its stderr through; its result or why there is none.
fn measure(cmd: &mut Command, what: &str) -> Result<Value, String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    match result_of(&out.stdout) {
        Some(v) if out.status.success() => Ok(v),
        _ => Err(format!(
            "{what}: failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        )),
    }
}

/// The PyTorch version behind `python`, or why there is none.
fn torch_version(python: &str) -> Result<String, String> {
    let out = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{python} has no torch ({})",
            err.lines().last().unwrap_or("").trim()
        ))
    }
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn best(runs: &[Value]) -> Option<&Value> {
    runs.iter()
        .max_by(|a, b| f(a, "images_per_s").total_cmp(&f(b, "images_per_s")))
}

fn params(v: Option<&Value>) -> String {
    match v {
        Some(v) => format!(
            "{:.3}M / {:.3}M",
            f(v, "params_g") / 1e6,
            f(v, "params_d") / 1e6
        ),
        None => "-".into(),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let steps = env("BENCH_STEPS", 3);
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::var_os("TRAIN_STEP_CHILD").is_some() {
        child(&names[0], env("BENCH_WIDTH", 32), steps);
        return ExitCode::SUCCESS;
    }
    let names: Vec<String> = if names.is_empty() {
        COMPARED.iter().map(|s| s.to_string()).collect()
    } else {
        names
    };
    for n in &names {
        nets(n, 8); // unknown names fail here, before anything runs
    }
    let widths: Vec<usize> = std::env::var("BENCH_WIDTHS")
        .unwrap_or_else(|_| "32,64".into())
        .split(',')
        .map(|w| {
            w.trim()
                .parse()
                .expect("BENCH_WIDTHS: comma-separated widths")
        })
        .collect();
    let rounds = env("BENCH_ROUNDS", 1).max(1);
    let threads = env(
        "BENCH_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let python = std::env::var("ABLATE_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let penalty = std::env::var("BENCH_TORCH_PENALTY").unwrap_or_else(|_| "fd".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_step.py");
    let torch = torch_version(&python);
    println!(
        "train step: rpgan + R1 + R2 (ablate: exact tangent-pass HVP), batch {BATCH}, {CH}x{RES}x{RES}, {threads} threads, \
         {steps} timed steps after 1 warm-up, best of {rounds} round(s), allocator {}",
        if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "system"
        }
    );
    match &torch {
        Ok(v) => println!("PyTorch {v} ({python}), R1/R2 by {penalty}"),
        Err(e) => println!(
            "PyTorch: not available: {e}. Set ABLATE_TORCH_PYTHON to a python with torch \
             (e.g. a venv: python3 -m venv v && v/bin/pip install torch). ablate only."
        ),
    }
    let exe = std::env::current_exe().unwrap();
    let mut rows = vec![];
    let mut failed = false;
    for &w in &widths {
        for n in &names {
            let compared = torch.is_ok() && COMPARED.contains(&n.as_str());
            let (mut ours, mut theirs) = (vec![], vec![]);
            for _ in 0..rounds {
                let mut cmd = Command::new(&exe);
                cmd.arg(n)
                    .env("TRAIN_STEP_CHILD", "1")
                    .env("BENCH_WIDTH", w.to_string())
                    .env("BENCH_STEPS", steps.to_string())
                    .env("RAYON_NUM_THREADS", threads.to_string());
                match measure(&mut cmd, &format!("ablate {n} width {w}")) {
                    Ok(v) => {
                        println!(
                            "  ablate  {n:8} width {w:3}: {:8.2} images/s, peak RSS {:6.0} MiB",
                            f(&v, "images_per_s"),
                            f(&v, "peak_rss_mib")
                        );
                        ours.push(v);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
                if compared {
                    let mut cmd = Command::new(&python);
                    cmd.arg(script).args([
                        "--net",
                        n,
                        "--width",
                        &w.to_string(),
                        "--steps",
                        &steps.to_string(),
                        "--threads",
                        &threads.to_string(),
                        "--penalty",
                        &penalty,
                        "--json",
                    ]);
                    match measure(&mut cmd, &format!("torch {n} width {w}")) {
                        Ok(v) => {
                            println!(
                                "  PyTorch {n:8} width {w:3}: {:8.2} images/s, peak RSS {:6.0} MiB",
                                f(&v, "images_per_s"),
                                f(&v, "peak_rss_mib")
                            );
                            theirs.push(v);
                        }
                        Err(e) => {
                            eprintln!("{e}");
                            failed = true;
                        }
                    }
                }
            }
            let (a, t) = (best(&ours).cloned(), best(&theirs).cloned());
            if let (Some(a), Some(t)) = (&a, &t) {
                if (a["params_g"].as_u64(), a["params_d"].as_u64())
                    != (t["params_g"].as_u64(), t["params_d"].as_u64())
                {
                    eprintln!(
                        "PARAMETER COUNTS DIFFER for {n} width {w}: ablate {} vs PyTorch {}: \
                         benches/torch_step.py no longer builds the same nets",
                        params(Some(a)),
                        params(Some(t))
                    );
                    failed = true;
                }
            }
            rows.push((n.clone(), w, a, t));
        }
    }
    println!();
    println!(
        "| net | width | params G / D (ablate) | params G / D (PyTorch) | ablate images/s | \
         PyTorch images/s | ablate / PyTorch | ablate peak RSS | PyTorch peak RSS |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let num = |v: &Option<Value>, k: &str, p: usize| match v {
        Some(v) => format!("{:.*}", p, f(v, k)),
        None => "-".into(),
    };
    let mib = |v: &Option<Value>| match v {
        Some(v) => format!("{:.0} MiB", f(v, "peak_rss_mib")),
        None => "-".into(),
    };
    for (n, w, a, t) in &rows {
        let ratio = match (a, t) {
            (Some(a), Some(t)) => format!("{:.2}x", f(a, "images_per_s") / f(t, "images_per_s")),
            _ => "-".into(),
        };
        println!(
            "| {n} | {w} | {} | {} | {} | {} | {ratio} | {} | {} |",
            params(a.as_ref()),
            params(t.as_ref()),
            num(a, "images_per_s", 2),
            num(t, "images_per_s", 2),
            mib(a),
            mib(t),
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
