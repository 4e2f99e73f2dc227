//! The scheduler: runs a plan's instances in dependency order through an [`Executor`].
//!
//! The coordinator loop (here) owns the schedule: the ready set, what a failure skips
//! downstream, `--keep-going`, Ctrl-C, the observer and the summary. An executor owns
//! how a ready instance is computed and how its end is noticed:
//!
//! - [`LocalExecutor`] (default) runs each instance on a thread and a rayon pool of its
//!   own, starting instances while `--jobs` and the resource slots allow (one GPU slot,
//!   the machine's CPUs). Every instance gets a thread budget (its stage's `resources:
//!   {cpus: N}`, else `--threads`, else the cores shared among the instances that run at
//!   once), so parallel kernels in the stage use its share and no more.
//! - [`super::slurm::SlurmExecutor`] submits ready instances to a Slurm cluster with
//!   `sbatch` (one job array per stage) and polls the queue.
//!
//! Both compute an instance the same way ([`super::instance`]). A failure marks every
//! descendant skipped; without `--keep-going` nothing new starts after it. Ctrl-C sets
//! a flag: nothing new starts, the executor stops what runs (local stages at their next
//! check; cluster jobs are cancelled), and no manifest is written for unfinished work.

use super::instance::Frozen;
use super::plan::{Plan, PlanStatus};
use super::registry::Registry;
use super::slurm::{SlurmExecutor, SlurmOptions};
use super::stage::{DeviceChoice, Progress, PublishCtx, Status};
use anyhow::Result;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Where instances are computed.
#[derive(Debug, Clone, Default)]
pub enum ExecutorChoice {
    /// On this machine, in threads of this process.
    #[default]
    Local,
    /// On a Slurm cluster, one job (array task) per instance.
    Slurm(SlurmOptions),
}

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
    pub executor: ExecutorChoice,
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

/// How each instance of a run ended (what a stage reports is [`super::stage::Outcome`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Cached,
    Ran(Status),
    Failed(String),
    Skipped,
    Interrupted,
    NotStarted,
}

impl RunOutcome {
    /// One word for logs.
    pub fn word(&self) -> &'static str {
        match self {
            RunOutcome::Cached => "cached",
            RunOutcome::Ran(Status::Diverged) => "diverged",
            RunOutcome::Ran(_) => "done",
            RunOutcome::Failed(_) => "failed",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::NotStarted => "not started",
        }
    }
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
    pub outcomes: Vec<RunOutcome>,
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

/// What the scheduler tells an observer of [`run_observed`].
#[derive(Debug)]
pub struct RunEvent<'a> {
    /// The instance that just ended (ran, failed, was skipped, ...), or `None` at the
    /// start and for the periodic tick (about once a second while instances run).
    pub finished: Option<usize>,
    /// How each instance has ended so far, by instance id (`None`: not yet).
    pub outcomes: &'a [Option<RunOutcome>],
    /// Instances running now.
    pub running: &'a [usize],
}

/// How often an observer hears from a busy scheduler when nothing finishes.
const TICK: Duration = Duration::from_secs(1);

/// How ready instances get computed. The scheduler calls `start` with the ready set
/// whenever it may start more, `wait` while anything is in flight, and `cancel` once
/// on Ctrl-C; every instance `start` took comes back from `wait` or `cancel` exactly once.
pub trait Executor {
    /// Take what it can of `ready` (instance ids, in order) and return the ids taken.
    /// A failure to start one is reported later by `wait`, as its outcome.
    fn start(&mut self, ready: &BTreeSet<usize>) -> Vec<usize>;
    /// Wait up to `timeout` for instances to end; their outcomes.
    fn wait(&mut self, timeout: Duration) -> Vec<(usize, RunOutcome)>;
    /// Instances taken and not yet returned.
    fn in_flight(&self) -> usize;
    /// Instances computing now (not queued), in id order.
    fn running(&self) -> Vec<usize>;
    /// One line for the progress bar: what runs, how far.
    fn message(&self) -> String {
        String::new()
    }
    /// Ctrl-C: stop everything in flight. Outcomes it already knows are returned; the
    /// rest come from `wait`.
    fn cancel(&mut self) -> Vec<(usize, RunOutcome)> {
        vec![]
    }
}

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
    let to_run = plan
        .items
        .iter()
        .filter(|i| i.status == PlanStatus::Run)
        .count();
    match &opts.executor {
        ExecutorChoice::Local => {
            let mut ex = LocalExecutor::new(plan, reg, opts, cancel.clone(), to_run);
            schedule(plan, reg, opts, &mut ex, cancel, observe)
        }
        ExecutorChoice::Slurm(so) => {
            let mut ex = SlurmExecutor::new(plan, reg, opts, so.clone())?;
            schedule(plan, reg, opts, &mut ex, cancel, observe)
        }
    }
}

/// The coordinator loop: dependency order, failures, Ctrl-C, observer, summary.
pub fn schedule(
    plan: &Plan,
    reg: &Registry,
    opts: &RunOptions,
    ex: &mut dyn Executor,
    cancel: Arc<AtomicBool>,
    observe: &mut dyn FnMut(&RunEvent),
) -> Result<Summary> {
    let t0 = Instant::now();
    let n = plan.items.len();
    let mut outcomes: Vec<Option<RunOutcome>> = vec![None; n];
    let results = plan.results_dir(&opts.results_root);
    let pipeline = plan.ex.pipeline.name.clone();

    // Cached instances are done already; make sure their published copies exist.
    for (i, it) in plan.items.iter().enumerate() {
        if it.status == PlanStatus::Cached {
            outcomes[i] = Some(RunOutcome::Cached);
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
    let bar = progress_bar(opts.progress, to_run as u64);
    let mut stop = false;
    let mut cancelled = false;
    let mut last_tick = Instant::now();
    let mut last_observed = Instant::now();
    observe(&RunEvent {
        finished: None,
        outcomes: &outcomes,
        running: &[],
    });

    loop {
        let mut ended = vec![];
        if cancel.load(Ordering::Relaxed) {
            stop = true;
            if !cancelled {
                cancelled = true;
                ended = ex.cancel();
            }
        }
        if !stop && !ready.is_empty() {
            for i in ex.start(&ready) {
                ready.remove(&i);
            }
        }
        if ended.is_empty() {
            if ex.in_flight() == 0 {
                break;
            }
            ended = ex.wait(Duration::from_millis(100));
        }
        for (i, out) in ended {
            let inst = &plan.ex.instances[i];
            if let Some(b) = &bar {
                b.inc(1);
            }
            match &out {
                RunOutcome::Ran(Status::Diverged) => tracing::warn!("{} diverged", inst.label),
                RunOutcome::Ran(_) | RunOutcome::Cached => tracing::info!("done {}", inst.label),
                RunOutcome::Failed(e) => {
                    let first = e.lines().next().unwrap_or("");
                    match &bar {
                        Some(b) => b.suspend(|| tracing::error!("{} failed: {first}", inst.label)),
                        None => tracing::error!("{} failed: {first}", inst.label),
                    }
                }
                _ => {}
            }
            let success = matches!(out, RunOutcome::Ran(_) | RunOutcome::Cached);
            let interrupted = out == RunOutcome::Interrupted;
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
                        outcomes[d] = Some(RunOutcome::Skipped);
                        ready.remove(&d);
                        stack.extend(dependents[d].iter().copied());
                    }
                }
                if matches!(outcomes[i], Some(RunOutcome::Failed(_))) && !opts.keep_going {
                    stop = true;
                }
            }
            observe(&RunEvent {
                finished: Some(i),
                outcomes: &outcomes,
                running: &ex.running(),
            });
            last_observed = Instant::now();
        }
        if last_observed.elapsed() >= TICK {
            observe(&RunEvent {
                finished: None,
                outcomes: &outcomes,
                running: &ex.running(),
            });
            last_observed = Instant::now();
        }
        if let Some(b) = &bar {
            if last_tick.elapsed() > Duration::from_millis(200) {
                last_tick = Instant::now();
                b.set_message(ex.message());
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
            RunOutcome::Interrupted
        } else {
            RunOutcome::NotStarted
        });
        match &o {
            RunOutcome::Cached => s.cached += 1,
            RunOutcome::Ran(st) => {
                s.ran += 1;
                if *st == Status::Diverged {
                    s.diverged += 1;
                }
            }
            RunOutcome::Failed(e) => {
                s.failed += 1;
                s.failures
                    .push((plan.ex.instances[i].label.clone(), e.clone()));
            }
            RunOutcome::Skipped => s.skipped += 1,
            RunOutcome::Interrupted => s.interrupted += 1,
            RunOutcome::NotStarted => s.not_started += 1,
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

/// Instances in flight: label and progress by instance id.
type Running = HashMap<usize, (String, Arc<Progress>)>;

/// Runs instances in threads of this process, within `--jobs`, the cores and one GPU slot.
pub struct LocalExecutor<'a> {
    plan: &'a Plan,
    reg: &'a Registry,
    opts: &'a RunOptions,
    cancel: Arc<AtomicBool>,
    /// `--threads`, else the cores' share.
    threads: usize,
    /// CPUs the running instances may hold together.
    capacity: usize,
    cpus_busy: usize,
    gpu_busy: bool,
    running: Arc<Mutex<Running>>,
    tx: mpsc::Sender<(usize, RunOutcome)>,
    rx: mpsc::Receiver<(usize, RunOutcome)>,
}

impl<'a> LocalExecutor<'a> {
    pub fn new(
        plan: &'a Plan,
        reg: &'a Registry,
        opts: &'a RunOptions,
        cancel: Arc<AtomicBool>,
        to_run: usize,
    ) -> Self {
        // CPU budgets: a stage's `resources.cpus`, else --threads, else a share of the
        // cores; instances start while their budgets fit the capacity (one always may start)
        let cores = cores();
        let threads = opts
            .threads
            .unwrap_or_else(|| default_threads(cores, opts.jobs.max(1), to_run))
            .max(1);
        let (tx, rx) = mpsc::channel();
        LocalExecutor {
            plan,
            reg,
            opts,
            cancel,
            threads,
            capacity: cores.max(threads * opts.jobs.max(1)),
            cpus_busy: 0,
            gpu_busy: false,
            running: Arc::default(),
            tx,
            rx,
        }
    }

    fn budget(&self, i: usize) -> usize {
        let inst = &self.plan.ex.instances[i];
        self.plan.ex.pipeline.stages[inst.stage]
            .resources
            .cpus
            .unwrap_or(self.threads)
    }

    fn gpu(&self, i: usize) -> bool {
        let inst = &self.plan.ex.instances[i];
        self.reg
            .get(&inst.kind)
            .unwrap()
            .resources(&self.plan.items[i].params, self.opts.device)
            .gpu
    }

    fn launch(&mut self, i: usize) {
        let inst = &self.plan.ex.instances[i];
        let gpu = self.gpu(i);
        self.gpu_busy |= gpu;
        let cpus = self.budget(i);
        self.cpus_busy += cpus;
        if gpu {
            tracing::debug!("{} holds the GPU slot", inst.label);
        }
        let prog = Arc::new(Progress::default());
        self.running
            .lock()
            .unwrap()
            .insert(i, (inst.label.clone(), prog.clone()));
        let task = Frozen::from_plan(self.plan, i, self.opts.device, cpus).prepare(
            self.reg,
            &self.plan.cache,
            Some(self.plan.results_dir(&self.opts.results_root)),
            self.cancel.clone(),
            prog,
        );
        let tx = self.tx.clone();
        match task {
            // a plain thread per instance: it only waits on the instance's own pool
            // (a rayon worker waiting there would run other instances nested in it)
            Ok(task) => {
                let spawned = std::thread::Builder::new()
                    .name(format!("ablate-job-{i}"))
                    .spawn({
                        let tx = tx.clone();
                        move || {
                            let out = task.execute();
                            let _ = tx.send((i, out));
                        }
                    });
                if let Err(e) = spawned {
                    let _ = tx.send((i, RunOutcome::Failed(format!("starting a thread: {e}"))));
                }
            }
            Err(e) => {
                let _ = tx.send((i, RunOutcome::Failed(format!("{e:#}"))));
            }
        }
    }

    fn ended(&mut self, i: usize) {
        self.cpus_busy -= self.budget(i);
        self.running.lock().unwrap().remove(&i);
        if self.gpu(i) {
            self.gpu_busy = false;
        }
    }
}

impl Executor for LocalExecutor<'_> {
    fn start(&mut self, ready: &BTreeSet<usize>) -> Vec<usize> {
        let mut taken = vec![];
        let mut left: Vec<usize> = ready.iter().copied().collect();
        loop {
            let n_running = self.in_flight();
            if n_running >= self.opts.jobs.max(1) {
                break;
            }
            let pick = left.iter().position(|&i| {
                !(self.gpu(i) && self.gpu_busy)
                    && (n_running == 0 || self.cpus_busy + self.budget(i) <= self.capacity)
            });
            let Some(p) = pick else { break };
            let i = left.remove(p);
            self.launch(i);
            taken.push(i);
        }
        taken
    }

    fn wait(&mut self, timeout: Duration) -> Vec<(usize, RunOutcome)> {
        let mut out = vec![];
        match self.rx.recv_timeout(timeout) {
            Ok(x) => out.push(x),
            Err(_) => return out,
        }
        out.extend(self.rx.try_iter());
        for (i, _) in &out {
            self.ended(*i);
        }
        out
    }

    fn in_flight(&self) -> usize {
        self.running.lock().unwrap().len()
    }

    fn running(&self) -> Vec<usize> {
        let mut ids: Vec<usize> = self.running.lock().unwrap().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn message(&self) -> String {
        let running = self.running.lock().unwrap();
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
}

#[cfg(test)]
mod observer_tests;
#[cfg(test)]
mod tests;
