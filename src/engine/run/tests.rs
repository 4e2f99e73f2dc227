use super::*;
use crate::engine::plan::PlanOptions;
use crate::engine::stage::{CheckCtx, ConfigError, Stage};
use crate::engine::{Cache, RunCtx};
use serde_json::Value;
use std::path::Path;

/// Records the size of the rayon pool it runs in.
struct Threads;

impl Stage for Threads {
    fn kind(&self) -> &'static str {
        "threads"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test kind: reports rayon::current_num_threads()"
    }
    fn check(&self, params: &Value, _: &CheckCtx) -> Result<Value, ConfigError> {
        Ok(params.clone())
    }
    fn run(&self, _: &RunCtx) -> Result<super::super::stage::Outcome> {
        // the pool a parallel kernel would use, seen from inside it too
        let inner = rayon::join(rayon::current_num_threads, || 0).0;
        Ok(super::super::stage::Outcome::ok()
            .metric("threads", rayon::current_num_threads() as f64)
            .metric("inner", inner as f64))
    }
}

fn plan(dir: &Path, yaml: &str, reg: &Registry) -> Plan {
    let file = dir.join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    Plan::new(
        &file,
        reg,
        Cache::new(dir.join("cache")),
        dir,
        &PlanOptions::default(),
    )
    .unwrap()
}

fn threads_seen(plan: &Plan, stage: &str) -> (f64, f64) {
    let i = plan.ex.by_stage[plan
        .ex
        .pipeline
        .stages
        .iter()
        .position(|s| s.name == stage)
        .unwrap()][0];
    let m = plan
        .cache
        .manifest(&plan.ex.instances[i].kind, &plan.items[i].key)
        .unwrap();
    (m.metrics["threads"], m.metrics["inner"])
}

const YAML: &str = "name: t\nstages:\n  a:\n    kind: threads\n    params: {id: 1}\n  b:\n    kind: threads\n    params: {id: 2}\n    resources: {cpus: 3}\n";

#[test]
fn stage_runs_on_its_thread_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::new();
    reg.register(Threads);
    let p = plan(dir.path(), YAML, &reg);
    let opts = RunOptions {
        jobs: 2,
        keep_going: false,
        device: DeviceChoice::Cpu,
        results_root: dir.path().join("results"),
        progress: false,
        threads: Some(2),
        executor: Default::default(),
    };
    let s = run(&p, &reg, &opts, Arc::default()).unwrap();
    assert!(s.ok(), "{}", s.line());
    assert_eq!(s.ran, 2);
    // a: --threads 2; b: resources.cpus 3 overrides it
    assert_eq!(threads_seen(&p, "a"), (2.0, 2.0));
    assert_eq!(threads_seen(&p, "b"), (3.0, 3.0));

    // resources stay out of the cache key: another cpus count is still cached
    let other = YAML.replace("cpus: 3", "cpus: 1");
    let p2 = plan(dir.path(), &other, &reg);
    assert_eq!(p2.items[1].key, p.items[1].key);
    assert_eq!(p2.counts(), (2, 0));
    assert_eq!(p2.ex.pipeline.stages[1].resources.cpus, Some(1));

    // no --threads: the cores shared among the instances that may run at once
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        dir.path(),
        "name: t\nstages:\n  a:\n    kind: threads\n",
        &reg,
    );
    let opts = RunOptions {
        threads: None,
        jobs: 4,
        ..opts
    };
    assert!(run(&p, &reg, &opts, Arc::default()).unwrap().ok());
    // one instance to run: it gets every core even with -j 4
    assert_eq!(threads_seen(&p, "a").0, cores() as f64);
}

#[test]
fn default_budget_divides_the_cores() {
    assert_eq!(default_threads(16, 4, 100), 4);
    assert_eq!(default_threads(16, 4, 2), 8);
    assert_eq!(default_threads(2, 2, 5), 1);
    assert_eq!(default_threads(2, 8, 8), 1);
    assert_eq!(default_threads(8, 3, 3), 2);
    assert_eq!(default_threads(4, 1, 0), 4);
}

#[test]
fn resources_validated_with_position() {
    let reg = {
        let mut r = Registry::new();
        r.register(Threads);
        r
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    for (bad, line, col, msg) in [
        (
            "cpus: 0",
            5,
            23,
            "`resources.cpus` must be a whole number >= 1",
        ),
        (
            "cpus: two",
            5,
            23,
            "`resources.cpus` must be a whole number >= 1",
        ),
        (
            "disk: 1",
            5,
            17,
            "unknown resource in stage `a`: `disk` (expected one of: cpus, gpus, mem, time, partition, extra)",
        ),
        ("mem: lots", 5, 22, "`resources.mem` must be a size such as 512M, 4G"),
        ("time: 1:2:3:4", 5, 23, "`resources.time` must be minutes or a Slurm time"),
        ("gpus: -1", 5, 23, "`resources.gpus` must be a whole number >= 0"),
        ("extra: [qos]", 5, 24, "`resources.extra` must be a list of sbatch options"),
    ] {
        let y =
            format!("name: t\nstages:\n  a:\n    kind: threads\n    resources: {{{bad}}}\n");
        std::fs::write(&file, y).unwrap();
        let e = match Plan::new(
            &file,
            &reg,
            Cache::new(dir.path().join("c")),
            dir.path(),
            &PlanOptions::default(),
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{bad} accepted"),
        };
        let want = format!("{}:{line}:{col}: stage `a`: ", file.display());
        assert!(e.contains(msg), "{bad}: {e}");
        assert!(
            e.starts_with(&format!("{}:{line}:{col}:", file.display())),
            "{bad}: {e} (want {want})"
        );
    }
}
