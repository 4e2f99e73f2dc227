//! Executing one instance: gather its inputs from the cache, take its lock, run its stage
//! in a rayon pool of its thread budget, and write its manifest last.
//!
//! An instance is first *frozen* ([`Frozen`]): everything needed to compute it, by key,
//! from the cache alone (kind, params, matrix values, the keys of its inputs and
//! ancestors). The local executor runs a frozen instance on a thread of the coordinator;
//! the Slurm executor writes it to the cache and a node runs it with `ablate exec`
//! ([`exec`]), so a node needs only the binary and the shared cache directory. Which
//! executor ran it never shows in the result: the manifest is the same.

use super::cache::{Cache, InputRecord, Manifest, Timings, MANIFEST};
use super::plan::Plan;
use super::registry::Registry;
use super::run::RunOutcome;
use super::stage::{
    DeviceChoice, InputRef, Interrupted, Progress, PublishCtx, RunCtx, Stage, Status,
};
use crate::util::atomic_write;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// An upstream instance, by key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputSpec {
    pub stage: String,
    pub kind: String,
    pub label: String,
    pub key: String,
    pub vars: Map<String, Value>,
    /// Its own ancestors, nearest first, each once: indices into [`Frozen::ancestors`].
    #[serde(default)]
    pub ancestors: Vec<usize>,
}

/// An instance, ready to compute from the cache alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Frozen {
    pub pipeline: String,
    pub stage: String,
    pub label: String,
    pub kind: String,
    pub key: String,
    /// `--force`: clear whatever an earlier run left in its directory.
    pub forced: bool,
    /// Normalised params (what the key hashes).
    pub params: Value,
    pub vars: Map<String, Value>,
    /// Direct inputs, in `needs` order.
    pub inputs: Vec<InputSpec>,
    /// Every instance upstream, each once, nearest first.
    pub ancestors: Vec<InputSpec>,
    pub device: DeviceChoice,
    /// Threads of its rayon pool.
    pub threads: usize,
}

impl Frozen {
    /// Instance `idx` of a plan, with its thread budget.
    pub fn from_plan(plan: &Plan, idx: usize, device: DeviceChoice, threads: usize) -> Frozen {
        let inst = &plan.ex.instances[idx];
        let it = &plan.items[idx];
        let up = |u: usize| plan.ex.instances[u].inputs.iter().copied();
        let ancestors_of = |start: &mut dyn Iterator<Item = usize>| -> Vec<usize> {
            let mut seen = BTreeSet::new();
            let mut queue: VecDeque<usize> = start.collect();
            let mut out = vec![];
            while let Some(u) = queue.pop_front() {
                if seen.insert(u) {
                    out.push(u);
                    queue.extend(up(u));
                }
            }
            out
        };
        // Every instance upstream, nearest first; each one's own ancestors as positions
        // in that list (a gathering stage reads every input's chain from it).
        let all = ancestors_of(&mut inst.inputs.iter().copied());
        let spec = |u: usize| {
            let inst = &plan.ex.instances[u];
            InputSpec {
                stage: inst.stage_name.clone(),
                kind: inst.kind.clone(),
                label: inst.label.clone(),
                key: plan.items[u].key.clone(),
                vars: inst.vars.clone(),
                ancestors: ancestors_of(&mut up(u))
                    .into_iter()
                    .filter_map(|a| all.iter().position(|&x| x == a))
                    .collect(),
            }
        };
        let ancestors: Vec<InputSpec> = all.iter().map(|&u| spec(u)).collect();
        Frozen {
            pipeline: plan.ex.pipeline.name.clone(),
            stage: inst.stage_name.clone(),
            label: inst.label.clone(),
            kind: inst.kind.clone(),
            key: it.key.clone(),
            forced: it.forced,
            params: it.params.clone(),
            vars: inst.vars.clone(),
            inputs: inst.inputs.iter().map(|&u| spec(u)).collect(),
            ancestors,
            device,
            threads: threads.max(1),
        }
    }

    /// Where a frozen instance is kept for `ablate exec`: `<cache>/slurm/spec/<kind>-<key>.json`.
    pub fn path(cache: &Cache, kind: &str, key: &str) -> PathBuf {
        cache
            .root
            .join("slurm")
            .join("spec")
            .join(format!("{kind}-{key}.json"))
    }

    /// Write it (atomically) where [`Frozen::load`] finds it.
    pub fn save(&self, cache: &Cache) -> Result<PathBuf> {
        let p = Frozen::path(cache, &self.kind, &self.key);
        atomic_write(&p, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(p)
    }

    pub fn load(cache: &Cache, kind: &str, key: &str) -> Result<Frozen> {
        let p = Frozen::path(cache, kind, key);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "no frozen instance {} (is the cache directory shared with this node?)",
                p.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("unreadable {}", p.display()))
    }

    fn input_ref(cache: &Cache, s: &InputSpec) -> Result<InputRef> {
        let dir = cache.dir(&s.kind, &s.key);
        let manifest = cache
            .manifest(&s.kind, &s.key)
            .with_context(|| format!("input {} has no manifest in {}", s.label, dir.display()))?;
        Ok(InputRef {
            stage: s.stage.clone(),
            kind: s.kind.clone(),
            label: s.label.clone(),
            key: s.key.clone(),
            dir,
            vars: s.vars.clone(),
            manifest,
            ancestors: s.ancestors.clone(),
        })
    }

    /// Resolve inputs and ancestors against the cache (their manifests must exist).
    pub fn prepare(
        self,
        reg: &Registry,
        cache: &Cache,
        results: Option<PathBuf>,
        cancel: Arc<AtomicBool>,
        progress: Arc<Progress>,
    ) -> Result<Task> {
        let stage = reg
            .get(&self.kind)
            .with_context(|| format!("this build has no stage kind `{}`", self.kind))?
            .clone();
        let inputs = self
            .inputs
            .iter()
            .map(|s| Frozen::input_ref(cache, s))
            .collect::<Result<Vec<_>>>()?;
        let ancestors = self
            .ancestors
            .iter()
            .map(|s| Frozen::input_ref(cache, s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Task {
            spec: self,
            stage,
            cache: cache.clone(),
            inputs,
            ancestors,
            results,
            shared_fs: false,
            cancel,
            progress,
        })
    }
}

/// A frozen instance with its inputs resolved: owned, so it can move to a worker thread.
pub struct Task {
    spec: Frozen,
    stage: Arc<dyn Stage>,
    cache: Cache,
    inputs: Vec<InputRef>,
    ancestors: Vec<InputRef>,
    /// `results/<pipeline>/` to publish into after a run (`None`: the coordinator publishes).
    results: Option<PathBuf>,
    /// On a cluster node: the instance lock is only a courtesy (`flock` over NFS may be
    /// refused), never needed for correctness.
    shared_fs: bool,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Task {
    /// Compute it; every error becomes [`RunOutcome::Failed`].
    pub fn execute(self) -> RunOutcome {
        match self.try_execute() {
            Ok(o) => o,
            Err(e) => RunOutcome::Failed(format!("{e:#}")),
        }
    }

    fn lock(&self) -> Result<Option<std::fs::File>> {
        match self.cache.lock(&self.spec.kind, &self.spec.key) {
            Ok(f) => Ok(Some(f)),
            Err(e) if self.shared_fs => {
                tracing::warn!("{}: no lock ({e:#}); going on", self.spec.label);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn try_execute(&self) -> Result<RunOutcome> {
        let s = &self.spec;
        let dir = self.cache.dir(&s.kind, &s.key);
        let _lock = self.lock()?;
        let mut clear = s.forced;
        if let Some(m) = self.cache.manifest(&s.kind, &s.key) {
            let changed = self.cache.changed_output(&m);
            if m.status != Status::Failed && !s.forced && changed.is_none() {
                // Another process finished it while we waited for the lock.
                self.publish(&dir)?;
                return Ok(RunOutcome::Cached);
            }
            if let Some(why) = changed.filter(|_| m.status != Status::Failed) {
                // Nothing of a changed instance is reused (no resuming from its files).
                tracing::warn!("{}: {why}: recomputing it", s.label);
                clear = true;
            }
        }
        let _ = std::fs::remove_file(dir.join(MANIFEST));
        if clear && dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        tracing::info!("running {} ({})", s.label, &s.key[..12]);
        let started = now();
        let t = Instant::now();
        let memo = self.cache.memo();
        let cx = RunCtx {
            pipeline: &s.pipeline,
            stage: &s.stage,
            label: &s.label,
            key: &s.key,
            params: &s.params,
            vars: &s.vars,
            inputs: self.inputs.clone(),
            ancestors: self.ancestors.clone(),
            dir: &dir,
            memo: &memo,
            device: s.device,
            cancel: &self.cancel,
            progress: self.progress.clone(),
        };
        // the instance's own pool: rayon-parallel work inside the stage uses its budget
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(s.threads)
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
        let timings = Timings {
            started,
            finished: now(),
            wall_s: t.elapsed().as_secs_f64(),
        };
        let (status, error, metrics, info) = match result {
            Ok(o) => (o.status, None, o.metrics, o.info),
            Err(e)
                if e.downcast_ref::<Interrupted>().is_some()
                    || self.cancel.load(Ordering::Relaxed) =>
            {
                return Ok(RunOutcome::Interrupted)
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
            kind: s.kind.clone(),
            version: self.stage.version(),
            key: s.key.clone(),
            stage: s.stage.clone(),
            label: s.label.clone(),
            params: s.params.clone(),
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
            .remember(&s.pipeline, &s.label, &s.kind, &s.key)?;
        if let Some(e) = error {
            return Ok(RunOutcome::Failed(e));
        }
        self.publish(&dir)?;
        Ok(RunOutcome::Ran(status))
    }

    fn publish(&self, dir: &Path) -> Result<()> {
        let Some(results) = &self.results else {
            return Ok(());
        };
        self.stage.publish(&PublishCtx {
            pipeline: &self.spec.pipeline,
            stage: &self.spec.stage,
            dir,
            results,
        })
    }
}

/// Write a `failed` manifest for an instance that ended without one (a cluster job
/// killed for memory or time, a node that died): the next plan runs it again, and the
/// table and report say why it is missing. Its files stay (a train instance resumes
/// from its last checkpoint).
pub fn record_failure(
    cache: &Cache,
    reg: &Registry,
    spec: &Frozen,
    error: &str,
    device: &str,
) -> Result<()> {
    let version = reg.get(&spec.kind).map(|s| s.version()).unwrap_or(0);
    std::fs::create_dir_all(cache.dir(&spec.kind, &spec.key))?;
    let t = now();
    cache.write_manifest(&Manifest {
        kind: spec.kind.clone(),
        version,
        key: spec.key.clone(),
        stage: spec.stage.clone(),
        label: spec.label.clone(),
        params: spec.params.clone(),
        inputs: spec
            .inputs
            .iter()
            .map(|i| InputRecord {
                stage: i.stage.clone(),
                key: i.key.clone(),
            })
            .collect(),
        outputs: Default::default(),
        status: Status::Failed,
        error: Some(error.to_string()),
        metrics: Default::default(),
        info: Map::new(),
        timings: Timings {
            started: t,
            finished: t,
            wall_s: 0.0,
        },
        device: device.to_string(),
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
    })?;
    cache.remember(&spec.pipeline, &spec.label, &spec.kind, &spec.key)
}

/// `ablate exec KIND KEY`: compute a frozen instance on this machine (a cluster node),
/// from the cache alone. Its thread budget is the job's CPUs (`SLURM_CPUS_PER_TASK`)
/// when Slurm set it. Publishing is left to the coordinator.
pub fn exec(
    reg: &Registry,
    cache: &Cache,
    kind: &str,
    key: &str,
    cancel: Arc<AtomicBool>,
) -> RunOutcome {
    let spec = match Frozen::load(cache, kind, key) {
        Ok(s) => s,
        Err(e) => return RunOutcome::Failed(format!("{e:#}")),
    };
    let mut spec = spec;
    if let Some(n) = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        spec.threads = n;
    }
    let label = spec.label.clone();
    match spec.prepare(reg, cache, None, cancel, Arc::default()) {
        Ok(mut task) => {
            task.shared_fs = true;
            let out = task.execute();
            tracing::info!("{label}: {}", out.word());
            out
        }
        Err(e) => RunOutcome::Failed(format!("{e:#}")),
    }
}
