//! Engine overheads (run with `cargo bench --bench engine`):
//! - planning a synthetic 10,000-instance sweep (parse, expand, check, key, cache lookups);
//! - a fully cached re-run of a 1,000-instance pipeline (plan + run, wall);
//! - scheduling overhead per instance (1,000 no-op instances, wall / 1,000).
//!
//! Targets from issue 2: < 1 s, < 2 s, < 1 ms. Uses a no-op stage kind registered
//! through the library API, so the figures are the engine's own. The per-instance
//! figure includes one fsync of the manifest (durability before the rename): run with
//! `TMPDIR=/dev/shm` to see the engine without the disk.

use ablate::engine::{
    self, typed_params, Cache, CheckCtx, ConfigError, Outcome, Plan, PlanOptions, RunCtx,
    RunOptions, Stage,
};
use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

struct Noop;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoopParams {
    a: i64,
    b: i64,
    lr: f64,
}

impl Stage for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "does nothing"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<NoopParams>(params, |_| Ok(()))
    }
    fn run(&self, _cx: &RunCtx) -> anyhow::Result<Outcome> {
        Ok(Outcome::ok().metric("x", 1.0))
    }
}

fn pipeline(n_a: usize, n_b: usize) -> String {
    let a: Vec<String> = (0..n_a).map(|i| i.to_string()).collect();
    let b: Vec<String> = (0..n_b).map(|i| i.to_string()).collect();
    format!(
        "name: bench\nstages:\n  sweep:\n    kind: noop\n    matrix: {{a: [{}], b: [{}]}}\n    params: {{a: '${{a}}', b: '${{b}}', lr: 0.001}}\n",
        a.join(", "),
        b.join(", ")
    )
}

fn main() {
    let mut reg = ablate::stages::registry();
    reg.register(Noop);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    // 1. Plan 10,000 instances against an empty cache.
    let f10k = root.join("p10k.yaml");
    std::fs::write(&f10k, pipeline(100, 100)).unwrap();
    let t = Instant::now();
    let plan = Plan::new(
        &f10k,
        &reg,
        Cache::new(root.join("cache")),
        root,
        &PlanOptions::default(),
    )
    .unwrap();
    let plan_s = t.elapsed().as_secs_f64();
    assert_eq!(plan.items.len(), 10_000);
    println!("plan 10,000 instances: {:.3} s (target < 1 s)", plan_s);

    // 2. Run 1,000 instances, then re-run with everything cached.
    let f1k = root.join("p1k.yaml");
    std::fs::write(&f1k, pipeline(10, 100)).unwrap();
    let opts = RunOptions {
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        keep_going: false,
        device: engine::DeviceChoice::Cpu,
        results_root: root.join("results"),
        progress: false,
        threads: None,
        executor: Default::default(),
    };
    let cache = Cache::new(root.join("cache1k"));
    let t = Instant::now();
    let plan = Plan::new(&f1k, &reg, cache.clone(), root, &PlanOptions::default()).unwrap();
    let s = engine::run(&plan, &reg, &opts, Arc::new(AtomicBool::new(false))).unwrap();
    let first_s = t.elapsed().as_secs_f64();
    assert_eq!(s.ran, 1000);
    println!(
        "first run of 1,000 no-op instances: {:.3} s = {:.3} ms per instance (scheduling, lock, manifest; target < 1 ms)",
        first_s,
        first_s
    );
    let t = Instant::now();
    let plan = Plan::new(&f1k, &reg, cache, root, &PlanOptions::default()).unwrap();
    let s = engine::run(&plan, &reg, &opts, Arc::new(AtomicBool::new(false))).unwrap();
    let cached_s = t.elapsed().as_secs_f64();
    assert_eq!(s.cached, 1000);
    println!(
        "cached re-run of 1,000 instances (plan + run): {:.3} s (target < 2 s)",
        cached_s
    );
}
