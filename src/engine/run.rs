//! The scheduler: runs a plan's instances in dependency order, each on a thread and a
//! rayon pool of its own.
//!
//! A coordinator loop keeps the ready set, starts instances while `--jobs` and the
//! resource slots allow (one GPU slot, the machine's CPUs), and collects results over a
//! channel. Every instance gets a thread budget (its stage's `resources: {cpus: N}`, else
//! `--threads`, else the cores shared among the instances that run at once) and its
//! `Stage::run` runs inside a rayon pool of that size, so parallel kernels in the stage
//! use its share and no more. A failure marks every descendant skipped; without
//! `--keep-going` nothing new starts after it. Ctrl-C sets a flag: nothing new starts, running stages stop
//! at their next check, and no manifest is written for unfinished work.

use super::cache::{Cache, InputRecord, Manifest, Timings, MANIFEST};
use super::plan::{Plan, PlanStatus};
use super::registry::Registry;
use super::stage::{DeviceChoice, InputRef, Interrupted, Progress, PublishCtx, RunCtx, Status};
use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Instances in flight: label and progress by instance id.
type Running = HashMap<usize, (String, Arc<Progress>)>;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub jobs: usize,
    pub keep_going: bool,
    pub device: DeviceChoice,
    /// `results/`: tabulate writes `results/<pipeline>/`.
    pub results_root: PathBuf,
    /// Draw a progress bar (off in CI, with `-q`, or when stderr is not a terminal).
    pub progress: bool,
    /// Threads per running instance unless its stage sets `resources: {cpus: N}`
    /// (`None`: the cores divided among the `jobs` instances that may run at once).
    pub threads: Option<usize>,
}

/// The machine's cores (as Rust sees them: cgroup and affinity limits included).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The default thread budget of an instance: the cores shared among the instances that
/// can run at once (`jobs`, or fewer when fewer are to run), at least 1.
pub fn default_threads(cores: usize, jobs: usize, to_run: usize) -> usize {
    (cores / jobs.min(to_run).max(1)).max(1)
}

/// How each instance ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Ran(Status),
    Failed(String),
    Skipped,
    Interrupted,
    NotStarted,
}

/// What `run` reports at the end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub ran: usize,
    pub cached: usize,
    pub diverged: usize,
    pub failed: usize,
    pub skipped: usize,
    pub interrupted: usize,
    pub not_started: usize,
    pub wall_s: f64,
    /// (instance label, error) of every failure.
    pub failures: Vec<(String, String)>,
    pub outcomes: Vec<Outcome>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.interrupted == 0 && self.skipped == 0 && self.not_started == 0
    }
    pub fn line(&self) -> String {
        let mut s = format!(
            "ran {}, cached {}, failed {}, skipped {}",
            self.ran, self.cached, self.failed, self.skipped
        );
        if self.diverged > 0 {
            s.push_str(&format!(" ({} diverged)", self.diverged));
        }
        if self.interrupted > 0 {
            s.push_str(&format!(", interrupted {}", self.interrupted));
        }
        if self.not_started > 0 {
            s.push_str(&format!(", not started {}", self.not_started));
        }
        s.push_str(&format!(" in {:.1}s", self.wall_s));
        s
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the scheduler tells an observer of [`run_observed`].
#[derive(Debug)]
pub struct RunEvent<'a> {
    /// The instance that just ended (ran, failed, was skipped, ...), or `None` at the
    /// start and for the periodic tick (about once a second while instances run).
    pub finished: Option<usize>,
    /// How each instance has ended so far, by instance id (`None`: not yet).
    pub outcomes: &'a [Option<Outcome>],
    /// Instances running now.
    pub running: &'a [usize],
}

/// How often an observer hears from a busy scheduler when nothing finishes.
const TICK: Duration = Duration::from_secs(1);

/// Run everything the plan marks `run`; publish what the cache already has.
pub fn run(
    plan: &Plan,
    reg: &Registry,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
) -> Result<Summary> {
    run_observed(plan, reg, opts, cancel, &mut |_| {})
}

/// [`run`], calling `observe` on the scheduler's thread when it starts, after every
/// instance ends, and on a tick while work runs. The observer must be quick or
/// rate-limit itself (the CLI rewrites the HTML report from it).
pub fn run_observed(
    plan: &Plan,
    reg: &Registry,
    opts: &RunOptions,
    cancel: Arc<AtomicBool>,
    observe: &mut dyn FnMut(&RunEvent),
) -> Result<Summary> {
    let t0 = Instant::now();
    let n = plan.items.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let results = plan.results_dir(&opts.results_root);
    let pipeline = plan.ex.pipeline.name.clone();

    // Cached instances are done already; make sure their published copies exist.
    for (i, it) in plan.items.iter().enumerate() {
        if it.status == PlanStatus::Cached {
            outcomes[i] = Some(Outcome::Cached);
            let inst = &plan.ex.instances[i];
            let dir = plan.cache.dir(&inst.kind, &it.key);
            reg.get(&inst.kind).unwrap().publish(&PublishCtx {
                pipeline: &pipeline,
                stage: &inst.stage_name,
                dir: &dir,
                results: &results,
            })?;
        }
    }

    // Dependency counts among the instances to run.
    let mut waiting: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![vec![]; n];
    let mut ready: BTreeSet<usize> = BTreeSet::new();
    for (i, inst) in plan.ex.instances.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        for &u in &inst.inputs {
            if outcomes[u].is_none() {
                waiting[i] += 1;
                dependents[u].push(i);
            }
        }
        if waiting[i] == 0 {
            ready.insert(i);
        }
    }
    let to_run = outcomes.iter().filter(|o| o.is_none()).count();
    // CPU budgets: a stage's `resources.cpus`, else --threads, else a share of the cores;
    // instances start while their budgets fit the capacity (one always may start)
    let cores = cores();
    let threads = opts
        .threads
        .unwrap_or_else(|| default_threads(cores, opts.jobs.max(1), to_run))
        .max(1);
    let capacity = cores.max(threads * opts.jobs.max(1));
    let budget = |i: usize| {
        let inst = &plan.ex.instances[i];
        plan.ex.pipeline.stages[inst.stage]
            .resources
            .cpus
            .unwrap_or(threads)
    };
    let mut cpus_busy = 0usize;

    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    let running: Arc<Mutex<Running>> = Arc::default();
    let bar = progress_bar(opts.progress, to_run as u64);
    let mut gpu_busy = false;
    let mut stop = false;
    let mut n_running = 0usize;
    let mut last_tick = Instant::now();
    let mut last_observed = Instant::now();
    let running_ids = |r: &Running| {
        let mut ids: Vec<usize> = r.keys().copied().collect();
        ids.sort_unstable();
        ids
    };
    observe(&RunEvent {
        finished: None,
        outcomes: &outcomes,
        running: &[],
    });

    loop {
        if cancel.load(Ordering::Relaxed) {
            stop = true;
        }
        // Dispatch while slots allow.
        while !stop && n_running < opts.jobs.max(1) {
            let pick = ready.iter().copied().find(|&i| {
                let inst = &plan.ex.instances[i];
                let res = reg
                    .get(&inst.kind)
                    .unwrap()
                    .resources(&plan.items[i].params, opts.device);
                !(res.gpu && gpu_busy) && (n_running == 0 || cpus_busy + budget(i) <= capacity)
            });
            let Some(i) = pick else { break };
            ready.remove(&i);
            let inst = &plan.ex.instances[i];
            let res = reg
                .get(&inst.kind)
                .unwrap()
                .resources(&plan.items[i].params, opts.device);
            gpu_busy |= res.gpu;
            n_running += 1;
            let cpus = budget(i);
            cpus_busy += cpus;
            let prog = Arc::new(Progress::default());
            running
                .lock()
                .unwrap()
                .insert(i, (inst.label.clone(), prog.clone()));
            let job = Job {
                plan,
                reg,
                opts,
                idx: i,
                threads: cpus,
                cancel: cancel.clone(),
                progress: prog,
            }
            .prepare();
            let tx = tx.clone();
            let gpu = res.gpu;
            match job {
                // a plain thread per instance: it only waits on the instance's own pool
                // (a rayon worker waiting there would run other instances nested in it)
                Ok(job) => {
                    let spawned = std::thread::Builder::new()
                        .name(format!("ablate-job-{i}"))
                        .spawn({
                            let tx = tx.clone();
                            move || {
                                let out = job.execute();
                                let _ = tx.send((i, out));
                            }
                        });
                    if let Err(e) = spawned {
                        let _ = tx.send((i, Outcome::Failed(format!("starting a thread: {e}"))));
                    }
                }
                Err(e) => {
                    let _ = tx.send((i, Outcome::Failed(format!("{e:#}"))));
                }
            }
            if gpu {
                tracing::debug!("{} holds the GPU slot", inst.label);
            }
        }
        if n_running == 0 {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((i, out)) => {
                n_running -= 1;
                cpus_busy -= budget(i);
                running.lock().unwrap().remove(&i);
                let inst = &plan.ex.instances[i];
                let res = reg
                    .get(&inst.kind)
                    .unwrap()
                    .resources(&plan.items[i].params, opts.device);
                if res.gpu {
                    gpu_busy = false;
                }
                if let Some(b) = &bar {
                    b.inc(1);
                }
                match &out {
                    Outcome::Ran(Status::Diverged) => tracing::warn!("{} diverged", inst.label),
                    Outcome::Ran(_) | Outcome::Cached => tracing::info!("done {}", inst.label),
                    Outcome::Failed(e) => {
                        let first = e.lines().next().unwrap_or("");
                        match &bar {
                            Some(b) => {
                                b.suspend(|| tracing::error!("{} failed: {first}", inst.label))
                            }
                            None => tracing::error!("{} failed: {first}", inst.label),
                        }
                    }
                    _ => {}
                }
                let success = matches!(out, Outcome::Ran(_) | Outcome::Cached);
                let interrupted = out == Outcome::Interrupted;
                outcomes[i] = Some(out);
                if interrupted {
                    // Its descendants stay unstarted: they count as interrupted too.
                } else if success {
                    for &d in &dependents[i] {
                        waiting[d] -= 1;
                        if waiting[d] == 0 && outcomes[d].is_none() {
                            ready.insert(d);
                        }
                    }
                } else {
                    // Everything downstream of a failure is skipped.
                    let mut stack = dependents[i].clone();
                    while let Some(d) = stack.pop() {
                        if outcomes[d].is_none() {
                            outcomes[d] = Some(Outcome::Skipped);
                            ready.remove(&d);
                            stack.extend(dependents[d].iter().copied());
                        }
                    }
                    if matches!(outcomes[i], Some(Outcome::Failed(_))) && !opts.keep_going {
                        stop = true;
                    }
                }
                let ids = running_ids(&running.lock().unwrap());
                observe(&RunEvent {
                    finished: Some(i),
                    outcomes: &outcomes,
                    running: &ids,
                });
                last_observed = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_observed.elapsed() >= TICK {
            let ids = running_ids(&running.lock().unwrap());
            observe(&RunEvent {
                finished: None,
                outcomes: &outcomes,
                running: &ids,
            });
            last_observed = Instant::now();
        }
        if let Some(b) = &bar {
            if last_tick.elapsed() > Duration::from_millis(200) {
                last_tick = Instant::now();
                b.set_message(running_message(&running.lock().unwrap()));
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    let mut s = Summary {
        wall_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for (i, o) in outcomes.into_iter().enumerate() {
        let o = o.unwrap_or(if cancel.load(Ordering::Relaxed) {
            Outcome::Interrupted
        } else {
            Outcome::NotStarted
        });
        match &o {
            Outcome::Cached => s.cached += 1,
            Outcome::Ran(st) => {
                s.ran += 1;
                if *st == Status::Diverged {
                    s.diverged += 1;
                }
            }
            Outcome::Failed(e) => {
                s.failed += 1;
                s.failures
                    .push((plan.ex.instances[i].label.clone(), e.clone()));
            }
            Outcome::Skipped => s.skipped += 1,
            Outcome::Interrupted => s.interrupted += 1,
            Outcome::NotStarted => s.not_started += 1,
        }
        s.outcomes.push(o);
    }
    Ok(s)
}

fn progress_bar(on: bool, len: u64) -> Option<indicatif::ProgressBar> {
    if !on || len == 0 {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    b.enable_steady_tick(Duration::from_millis(250));
    crate::logging::set_bar(Some(b.clone()));
    Some(b)
}

fn running_message(running: &Running) -> String {
    let mut parts: Vec<(usize, String)> = running
        .iter()
        .map(|(i, (label, p))| {
            let total = p.total.load(Ordering::Relaxed);
            let done = p.done.load(Ordering::Relaxed);
            let s = if total > 0 {
                format!("{label} {:.0}%", 100.0 * done as f64 / total as f64)
            } else {
                label.clone()
            };
            (*i, s)
        })
        .collect();
    parts.sort();
    parts
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join("  ")
}

/// One instance on its way to the pool.
struct Job<'a> {
    plan: &'a Plan,
    reg: &'a Registry,
    opts: &'a RunOptions,
    idx: usize,
    /// Thread budget of the instance.
    threads: usize,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// Everything an instance needs, owned, so it can move to a worker thread.
struct Ready {
    stage: Arc<dyn super::stage::Stage>,
    cache: Cache,
    pipeline: String,
    stage_name: String,
    label: String,
    kind: String,
    key: String,
    forced: bool,
    params: serde_json::Value,
    vars: serde_json::Map<String, serde_json::Value>,
    inputs: Vec<InputRef>,
    ancestors: Vec<InputRef>,
    device: DeviceChoice,
    results: PathBuf,
    threads: usize,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl Job<'_> {
    fn input_ref(&self, u: usize) -> Result<InputRef> {
        let inst = &self.plan.ex.instances[u];
        let key = &self.plan.items[u].key;
        let dir = self.plan.cache.dir(&inst.kind, key);
        let manifest = self.plan.cache.manifest(&inst.kind, key).with_context(|| {
            format!("input {} has no manifest in {}", inst.label, dir.display())
        })?;
        Ok(InputRef {
            stage: inst.stage_name.clone(),
            kind: inst.kind.clone(),
            label: inst.label.clone(),
            key: key.clone(),
            dir,
            vars: inst.vars.clone(),
            manifest,
        })
    }

    fn prepare(self) -> Result<Ready> {
        let inst = &self.plan.ex.instances[self.idx];
        let it = &self.plan.items[self.idx];
        let inputs = inst
            .inputs
            .iter()
            .map(|&u| self.input_ref(u))
            .collect::<Result<Vec<_>>>()?;
        // Every instance upstream, each once, nearest first.
        let mut seen = BTreeSet::new();
        let mut queue: std::collections::VecDeque<usize> = inst.inputs.iter().copied().collect();
        let mut ancestors = vec![];
        while let Some(u) = queue.pop_front() {
            if seen.insert(u) {
                ancestors.push(self.input_ref(u)?);
                queue.extend(self.plan.ex.instances[u].inputs.iter().copied());
            }
        }
        Ok(Ready {
            stage: self.reg.get(&inst.kind).unwrap().clone(),
            cache: self.plan.cache.clone(),
            pipeline: self.plan.ex.pipeline.name.clone(),
            stage_name: inst.stage_name.clone(),
            label: inst.label.clone(),
            kind: inst.kind.clone(),
            key: it.key.clone(),
            forced: it.forced,
            params: it.params.clone(),
            vars: inst.vars.clone(),
            inputs,
            ancestors,
            device: self.opts.device,
            results: self.plan.results_dir(&self.opts.results_root),
            threads: self.threads,
            cancel: self.cancel,
            progress: self.progress,
        })
    }
}

impl Ready {
    fn execute(self) -> Outcome {
        match self.try_execute() {
            Ok(o) => o,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn try_execute(&self) -> Result<Outcome> {
        let dir = self.cache.dir(&self.kind, &self.key);
        let _lock = self.cache.lock(&self.kind, &self.key)?;
        let mut clear = self.forced;
        if let Some(m) = self.cache.manifest(&self.kind, &self.key) {
            let changed = self.cache.changed_output(&m);
            if m.status != Status::Failed && !self.forced && changed.is_none() {
                // Another process finished it while we waited for the lock.
                self.publish(&dir)?;
                return Ok(Outcome::Cached);
            }
            if let Some(why) = changed.filter(|_| m.status != Status::Failed) {
                // Nothing of a changed instance is reused (no resuming from its files).
                tracing::warn!("{}: {why}: recomputing it", self.label);
                clear = true;
            }
        }
        let _ = std::fs::remove_file(dir.join(MANIFEST));
        if clear && dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        tracing::info!("running {} ({})", self.label, &self.key[..12]);
        let started = now();
        let t = Instant::now();
        let cx = RunCtx {
            pipeline: &self.pipeline,
            stage: &self.stage_name,
            label: &self.label,
            key: &self.key,
            params: &self.params,
            vars: &self.vars,
            inputs: self.inputs.clone(),
            ancestors: self.ancestors.clone(),
            dir: &dir,
            device: self.device,
            cancel: &self.cancel,
            progress: self.progress.clone(),
        };
        // the instance's own pool: rayon-parallel work inside the stage uses its budget
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.threads)
            .thread_name(|i| format!("ablate-work-{i}"))
            .build()
            .context("starting the instance's thread pool")?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| self.stage.run(&cx))
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(anyhow::anyhow!("stage panicked: {msg}"))
        });
        let wall = t.elapsed().as_secs_f64();
        let timings = Timings {
            started,
            finished: now(),
            wall_s: wall,
        };
        let (status, error, metrics, info) = match result {
            Ok(o) => (o.status, None, o.metrics, o.info),
            Err(e)
                if e.downcast_ref::<Interrupted>().is_some()
                    || self.cancel.load(Ordering::Relaxed) =>
            {
                return Ok(Outcome::Interrupted)
            }
            Err(e) => (
                Status::Failed,
                Some(format!("{e:#}")),
                Default::default(),
                Default::default(),
            ),
        };
        let device = info
            .get("device")
            .and_then(|d| d.as_str())
            .unwrap_or("cpu")
            .to_string();
        let m = Manifest {
            kind: self.kind.clone(),
            version: self.stage.version(),
            key: self.key.clone(),
            stage: self.stage_name.clone(),
            label: self.label.clone(),
            params: self.params.clone(),
            inputs: self
                .inputs
                .iter()
                .map(|i| InputRecord {
                    stage: i.stage.clone(),
                    key: i.key.clone(),
                })
                .collect(),
            outputs: Cache::record_outputs(&dir)?,
            status,
            error: error.clone(),
            metrics,
            info,
            timings,
            device,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        self.cache.write_manifest(&m)?;
        self.cache
            .remember(&self.pipeline, &self.label, &self.kind, &self.key)?;
        if let Some(e) = error {
            return Ok(Outcome::Failed(e));
        }
        self.publish(&dir)?;
        Ok(Outcome::Ran(status))
    }

    fn publish(&self, dir: &Path) -> Result<()> {
        self.stage.publish(&PublishCtx {
            pipeline: &self.pipeline,
            stage: &self.stage_name,
            dir,
            results: &self.results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::PlanOptions;
    use crate::engine::stage::{CheckCtx, ParamError, Stage};
    use serde_json::Value;

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
        fn check(&self, params: &Value, _: &CheckCtx) -> Result<Value, ParamError> {
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
                "gpus: 1",
                5,
                17,
                "unknown resource in stage `a`: `gpus` (expected one of: cpus)",
            ),
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
}

#[cfg(test)]
mod observer_tests {
    use super::*;
    use crate::engine::{typed_params, CheckCtx, ParamError, PlanOptions, Stage};
    use serde_json::Value;

    /// Reports its id; fails when its id is `fail_on`.
    struct Toy;

    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ToyParams {
        id: i64,
        fail_on: i64,
    }

    impl Stage for Toy {
        fn kind(&self) -> &'static str {
            "toy"
        }
        fn version(&self) -> u32 {
            1
        }
        fn about(&self) -> &'static str {
            "test kind"
        }
        fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ParamError> {
            typed_params::<ToyParams>(params, |_| Ok(()))
        }
        fn run(&self, cx: &RunCtx) -> Result<super::super::stage::Outcome> {
            let p: ToyParams = cx.params()?;
            anyhow::ensure!(p.id != p.fail_on, "asked to fail");
            Ok(super::super::stage::Outcome::ok().metric("id", p.id as f64))
        }
    }

    #[test]
    fn observer_hears_the_start_and_every_instance_once() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.yaml");
        // a: 4 instances, id 3 fails; b fans out with a (the failed one's b is skipped).
        std::fs::write(
            &f,
            "name: obs\nstages:\n  a:\n    kind: toy\n    matrix: {id: [0, 1, 2, 3]}\n    \
             params: {id: '${id}', fail_on: 3}\n  b: {kind: toy, needs: [a], params: {id: 9, fail_on: -1}}\n",
        )
        .unwrap();
        let mut reg = Registry::new();
        reg.register(Toy);
        let cache = Cache::new(d.path().join("cache"));
        let plan = Plan::new(&f, &reg, cache, d.path(), &PlanOptions::default()).unwrap();
        assert_eq!(plan.items.len(), 8);
        let opts = RunOptions {
            jobs: 2,
            keep_going: true,
            device: DeviceChoice::Cpu,
            results_root: d.path().join("results"),
            progress: false,
            threads: None,
        };
        let mut heard: Vec<Option<usize>> = vec![];
        let s = run_observed(
            &plan,
            &reg,
            &opts,
            Arc::new(AtomicBool::new(false)),
            &mut |ev| {
                if let Some(i) = ev.finished {
                    // The outcome is recorded before the observer hears of it.
                    assert!(ev.outcomes[i].is_some());
                    assert!(!ev.running.contains(&i));
                }
                if ev.finished.is_some() || heard.is_empty() {
                    heard.push(ev.finished);
                }
            },
        )
        .unwrap();
        assert_eq!(heard[0], None, "the start comes first");
        let mut done: Vec<usize> = heard[1..].iter().map(|i| i.unwrap()).collect();
        done.sort_unstable();
        // Each of the 7 instances that ran (6) or failed (1) is heard once; the skipped one is not.
        let expected: Vec<usize> = (0..8)
            .filter(|&i| !matches!(s.outcomes[i], Outcome::Skipped))
            .collect();
        assert_eq!(expected.len(), 7, "{}", s.line());
        assert_eq!(done, expected);
        assert_eq!((s.ran, s.failed, s.skipped), (6, 1, 1), "{}", s.line());
    }
}
