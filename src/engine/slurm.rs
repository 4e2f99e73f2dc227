//! The Slurm executor (`ablate run --executor slurm`): ablate plans and decides what is
//! ready on the machine it runs on (the coordinator); each ready instance becomes a Slurm
//! job computed on a node by the same binary (`ablate exec KIND KEY`, reading the
//! instance's frozen spec from the cache). A node needs the binary and the shared cache
//! directory, nothing else.
//!
//! What it keeps under `<cache>/slurm/`:
//! ```text
//! spec/<kind>-<key>.json      the frozen instance `ablate exec` computes
//! batch/<pipeline>-<stage>-<n>.sh   each sbatch script as submitted (resubmittable by hand)
//! logs/<job>_<task>.log       a job's stdout and stderr
//! jobs/<pipeline>.json        job id of every instance in flight (the state file)
//! ```
//!
//! - Submission: the ready instances of one stage go as one job array (`sbatch
//!   --array=0-N`), at most `--max-jobs` jobs in flight. Resources: the stage's
//!   `resources:` in YAML, else its kind's defaults ([`super::Stage::resources`]), else
//!   the cluster's.
//! - Tracking: one `squeue` call per poll for every job in flight (`-t all` also lists
//!   jobs that ended within the controller's `MinJobAge`). A job that has left the queue
//!   is judged by its instance's manifest: completion is the manifest's atomic rename,
//!   as locally, so nothing depends on `flock` across nodes. A job that ended without a
//!   manifest (OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, CANCELLED, a node that cannot start
//!   the binary) gets a `failed` manifest with its Slurm state and the tail of its log.
//! - Re-attach: job ids go to the state file as they are submitted; a coordinator
//!   started again (after a crash, or `kill -9`) re-attaches to jobs still queued or
//!   running instead of submitting them twice.
//! - Ctrl-C: `scancel` of every job this coordinator submitted or re-attached to.
//!
//! This file is the executor; `slurm/jobs.rs` parses what Slurm says (`squeue`, job
//! states) and keeps the state file and the `#SBATCH` options.

use super::cache::MANIFEST;
use super::instance::{record_failure, Frozen};
use super::plan::Plan;
use super::registry::Registry;
use super::run::{Executor, RunOptions, RunOutcome};
use super::stage::{PublishCtx, Status};
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod jobs;

use jobs::{
    log_tail, sbatch_options, sh, squeue, submitted_by_comment, JobRecord, JobState, ACTIVE,
    COMMENT, SUBMITTING,
};

/// How to use the cluster.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Jobs (array tasks) in flight at once: a cluster's submit limit.
    pub max_jobs: usize,
    /// Time between two `squeue` calls.
    pub poll: Duration,
    /// How long a job that left the queue may take to show its manifest (NFS caches
    /// directory entries for up to a minute) before it counts as failed.
    pub grace: Duration,
    /// The binary the nodes run (default: this one; it must be at the same path there).
    pub binary: PathBuf,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            max_jobs: 256,
            poll: Duration::from_secs(5),
            grace: Duration::from_secs(60),
            binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ablate")),
        }
    }
}

/// An instance in flight.
struct Flight {
    job: String,
    log: PathBuf,
    state: String,
    /// When the job was first seen gone from the queue without a manifest.
    gone_since: Option<Instant>,
}

/// Submits ready instances to Slurm and follows them (see the module doc).
pub struct SlurmExecutor<'a> {
    plan: &'a Plan,
    reg: &'a Registry,
    opts: &'a RunOptions,
    so: SlurmOptions,
    /// Absolute cache root (the nodes get this path).
    cache_root: PathBuf,
    /// Working directory of the jobs (relative paths in params resolve against it).
    workdir: PathBuf,
    state_path: PathBuf,
    state: JobState,
    /// Jobs of the state file that were queued or running when we started.
    attachable: BTreeMap<String, String>,
    flights: BTreeMap<usize, Flight>,
    done: Vec<(usize, RunOutcome)>,
    last_poll: Option<Instant>,
    batches: usize,
}

impl<'a> SlurmExecutor<'a> {
    /// Load the state file and ask Slurm (one call) which of its jobs are still alive.
    pub fn new(
        plan: &'a Plan,
        reg: &'a Registry,
        opts: &'a RunOptions,
        so: SlurmOptions,
    ) -> Result<Self> {
        let which = Command::new("sbatch").arg("--version").output();
        if !which.is_ok_and(|o| o.status.success()) {
            bail!("--executor slurm: `sbatch` is not available on this machine (install Slurm's client commands, or run where they are)");
        }
        let cache_root = std::path::absolute(&plan.cache.root)
            .with_context(|| format!("resolving {}", plan.cache.root.display()))?;
        let workdir = std::env::current_dir().context("the working directory")?;
        let state_path = JobState::path(&cache_root, &plan.ex.pipeline.name);
        let mut state = JobState::load(&state_path);
        let mut attachable = BTreeMap::new();
        if state.jobs.values().any(|r| r.job.starts_with(SUBMITTING)) {
            // A coordinator killed while sbatch ran: find what it submitted by comment.
            let o = Command::new("squeue")
                .args(["-h", "-r", "-t", "all", "--me", "-o", "%i|%k"])
                .output()
                .context("running squeue")?;
            let found = submitted_by_comment(&String::from_utf8_lossy(&o.stdout));
            let logs = cache_root.join("slurm").join("logs");
            state.jobs.retain(|_, r| {
                let Some((token, task)) = r
                    .job
                    .strip_prefix(SUBMITTING)
                    .and_then(|t| t.rsplit_once('_'))
                else {
                    return true;
                };
                match found.get(token) {
                    Some(base) => {
                        r.job = format!("{base}_{task}");
                        r.log = logs.join(format!("{}.log", r.job));
                        true
                    }
                    None => false, // never submitted
                }
            });
        }
        if !state.jobs.is_empty() {
            let jobs: BTreeSet<String> = state.jobs.values().map(|r| r.job.clone()).collect();
            let states = squeue(&jobs)?;
            state.jobs.retain(|key, r| match states.get(&r.job) {
                Some(st) if ACTIVE.contains(&st.as_str()) => {
                    attachable.insert(key.clone(), st.clone());
                    true
                }
                // Ended (or forgotten by the controller): the manifest says how, and the
                // plan has read it already.
                _ => false,
            });
            state.save(&state_path)?;
        }
        Ok(SlurmExecutor {
            plan,
            reg,
            opts,
            so,
            cache_root,
            workdir,
            state_path,
            state,
            attachable,
            flights: BTreeMap::new(),
            done: vec![],
            last_poll: None,
            batches: 0,
        })
    }

    fn cache(&self) -> super::Cache {
        super::Cache::new(&self.cache_root)
    }

    fn key(&self, i: usize) -> &str {
        &self.plan.items[i].key
    }

    /// The sbatch options of instance `i` and its CPUs.
    fn sbatch_options(&self, i: usize) -> (Vec<String>, usize) {
        let inst = &self.plan.ex.instances[i];
        let kind = self
            .reg
            .get(&inst.kind)
            .unwrap()
            .resources(&self.plan.items[i].params, self.opts.device);
        sbatch_options(&self.plan.ex.pipeline.stages[inst.stage].resources, &kind)
    }

    /// Submit instances of one stage as one job array; their job ids.
    fn submit(&mut self, ids: &[usize]) -> Result<Vec<String>> {
        let cache = self.cache();
        let inst = &self.plan.ex.instances[ids[0]];
        let pipeline = &self.plan.ex.pipeline.name;
        let (options, cpus) = self.sbatch_options(ids[0]);
        let mut keys = vec![];
        for &i in ids {
            let f = Frozen::from_plan(self.plan, i, self.opts.device, cpus);
            // The manifest left by an earlier attempt (failed, forced, or with changed
            // outputs) must not pass for this job's result: the job's own manifest, or
            // the failed one written when it ends without one, replaces it.
            let old = cache.dir(&f.kind, &f.key).join(MANIFEST);
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", old.display())),
            }
            f.save(&cache)?;
            keys.push(self.key(i).to_string());
        }
        let dir = self.cache_root.join("slurm");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        self.batches += 1;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let token = format!("{pipeline}-{}-{stamp}-{}", inst.stage_name, self.batches);
        let script = dir.join("batch").join(format!("{token}.sh"));
        let mut text = String::from("#!/bin/bash\n");
        text.push_str(&format!(
            "# ablate: {} instance(s) of stage `{}` of pipeline `{pipeline}`\n",
            ids.len(),
            inst.stage_name
        ));
        text.push_str(&format!(
            "#SBATCH --job-name=ablate-{pipeline}-{}\n",
            inst.stage_name
        ));
        text.push_str(&format!("#SBATCH --array=0-{}\n", ids.len() - 1));
        text.push_str(&format!("#SBATCH --comment={COMMENT}{token}\n"));
        text.push_str(&format!(
            "#SBATCH --output={}\n",
            logs.join("%A_%a.log").display()
        ));
        text.push_str(&format!("#SBATCH --chdir={}\n", self.workdir.display()));
        for o in &options {
            text.push_str(&format!("#SBATCH {o}\n"));
        }
        text.push_str(&format!("KEYS=({})\n", keys.join(" ")));
        text.push_str(&format!(
            "exec {} --cache-dir {} exec {} \"${{KEYS[$SLURM_ARRAY_TASK_ID]}}\"\n",
            sh(&self.so.binary.to_string_lossy()),
            sh(&self.cache_root.to_string_lossy()),
            inst.kind
        ));
        atomic_write(&script, text.as_bytes())?;
        // Recorded before sbatch runs: a coordinator killed between the two finds the
        // array by its comment on restart instead of submitting it again.
        for (t, &i) in ids.iter().enumerate() {
            let inst = &self.plan.ex.instances[i];
            self.state.jobs.insert(
                self.plan.items[i].key.clone(),
                JobRecord {
                    job: format!("{SUBMITTING}{token}_{t}"),
                    kind: inst.kind.clone(),
                    label: inst.label.clone(),
                    log: PathBuf::new(),
                },
            );
        }
        self.state.save(&self.state_path)?;
        let o = Command::new("sbatch")
            .arg("--parsable")
            .arg(&script)
            .output()
            .context("running sbatch")?;
        if !o.status.success() {
            for &i in ids {
                self.state.jobs.remove(&self.plan.items[i].key);
            }
            self.state.save(&self.state_path)?;
            bail!(
                "sbatch {} failed: {}",
                script.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        // `--parsable`: `<job id>` or `<job id>;<cluster>`
        let out = String::from_utf8_lossy(&o.stdout);
        let base = out.trim().split(';').next().unwrap_or("").to_string();
        if base.is_empty() || !base.chars().all(|c| c.is_ascii_digit()) {
            bail!("sbatch printed no job id: {out:?}");
        }
        let jobs: Vec<String> = (0..ids.len()).map(|t| format!("{base}_{t}")).collect();
        for (&i, job) in ids.iter().zip(&jobs) {
            let log = logs.join(format!("{job}.log"));
            let inst = &self.plan.ex.instances[i];
            self.state.jobs.insert(
                self.plan.items[i].key.clone(),
                JobRecord {
                    job: job.clone(),
                    kind: inst.kind.clone(),
                    label: inst.label.clone(),
                    log: log.clone(),
                },
            );
            self.flights.insert(
                i,
                Flight {
                    job: job.clone(),
                    log,
                    state: "PENDING".into(),
                    gone_since: None,
                },
            );
        }
        self.state.save(&self.state_path)?;
        tracing::info!(
            "submitted {} instance(s) of {} as job {base} ({})",
            ids.len(),
            inst.stage_name,
            options.join(" ")
        );
        Ok(jobs)
    }

    /// A finished instance's outcome from its manifest; `None` when there is none (yet).
    fn judge(&self, i: usize, f: &Flight) -> Option<RunOutcome> {
        let inst = &self.plan.ex.instances[i];
        let m = self.plan.cache.manifest(&inst.kind, self.key(i))?;
        Some(match m.status {
            Status::Failed => RunOutcome::Failed(format!(
                "{}\n(slurm job {} {}; log {})",
                m.error.as_deref().unwrap_or("failed"),
                f.job,
                f.state,
                f.log.display()
            )),
            st => {
                if let Err(e) = self.publish(i) {
                    return Some(RunOutcome::Failed(format!("publishing: {e:#}")));
                }
                RunOutcome::Ran(st)
            }
        })
    }

    fn publish(&self, i: usize) -> Result<()> {
        let inst = &self.plan.ex.instances[i];
        self.reg.get(&inst.kind).unwrap().publish(&PublishCtx {
            pipeline: &self.plan.ex.pipeline.name,
            stage: &inst.stage_name,
            dir: &self.plan.cache.dir(&inst.kind, self.key(i)),
            results: &self.plan.results_dir(&self.opts.results_root),
        })
    }

    /// A job that ended without a manifest: record why as a `failed` manifest.
    fn failed_without_manifest(&self, i: usize, f: &Flight) -> RunOutcome {
        let state = if f.state.is_empty() || ACTIVE.contains(&f.state.as_str()) {
            "ENDED (state no longer known to squeue)"
        } else {
            f.state.as_str()
        };
        let tail = log_tail(&f.log, 15);
        let mut msg = format!(
            "slurm job {} {state} without a result (log {})",
            f.job,
            f.log.display()
        );
        if !tail.is_empty() {
            msg.push_str(&format!("\nlast lines of its log:\n{tail}"));
        }
        let spec = Frozen::from_plan(self.plan, i, self.opts.device, 1);
        if let Err(e) = record_failure(&self.plan.cache, self.reg, &spec, &msg, "slurm") {
            tracing::warn!("{}: writing its failed manifest: {e:#}", spec.label);
        }
        RunOutcome::Failed(msg)
    }

    fn forget(&mut self, ended: &[(usize, RunOutcome)]) {
        if ended.is_empty() {
            return;
        }
        for (i, _) in ended {
            self.flights.remove(i);
            let key = self.plan.items[*i].key.clone();
            self.state.jobs.remove(&key);
        }
        if let Err(e) = self.state.save(&self.state_path) {
            tracing::warn!("{}: {e:#}", self.state_path.display());
        }
    }

    /// One `squeue` for every job in flight; the instances that ended.
    fn poll(&mut self) -> Vec<(usize, RunOutcome)> {
        let jobs: BTreeSet<String> = self.flights.values().map(|f| f.job.clone()).collect();
        let states = match squeue(&jobs) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("{e:#} (retrying)");
                return vec![];
            }
        };
        let mut ended = vec![];
        let ids: Vec<usize> = self.flights.keys().copied().collect();
        for i in ids {
            let f = self.flights.get_mut(&i).unwrap();
            let now_state = states.get(&f.job).cloned();
            let active = now_state.as_deref().is_some_and(|s| ACTIVE.contains(&s));
            if let Some(s) = now_state {
                f.state = s;
            }
            if active {
                continue;
            }
            let f = &self.flights[&i];
            if let Some(o) = self.judge(i, f) {
                ended.push((i, o));
                continue;
            }
            // No manifest. A job that completed has written one that NFS may not show
            // yet: give it a grace period. Any other end is final.
            let completed = f.state == "COMPLETED" || !states.contains_key(&f.job);
            let f = self.flights.get_mut(&i).unwrap();
            let since = *f.gone_since.get_or_insert_with(Instant::now);
            if completed && since.elapsed() < self.so.grace {
                continue;
            }
            let f = &self.flights[&i];
            ended.push((i, self.failed_without_manifest(i, f)));
        }
        for (i, o) in &ended {
            if let RunOutcome::Failed(_) = o {
                let f = &self.flights[i];
                tracing::debug!("{} ended as {}", self.plan.ex.instances[*i].label, f.state);
            }
        }
        self.forget(&ended);
        ended
    }
}

impl Executor for SlurmExecutor<'_> {
    fn start(&mut self, ready: &BTreeSet<usize>) -> Vec<usize> {
        let mut room = self.so.max_jobs.max(1).saturating_sub(self.flights.len());
        let mut taken = vec![];
        // one array per stage (and per set of sbatch options, which may differ by params)
        let mut by_stage: BTreeMap<(usize, Vec<String>), Vec<usize>> = BTreeMap::new();
        for &i in ready {
            if room == 0 {
                break;
            }
            room -= 1;
            taken.push(i);
            let key = self.key(i).to_string();
            if let Some(st) = self.attachable.remove(&key) {
                let r = &self.state.jobs[&key];
                tracing::info!("re-attached {} to slurm job {} ({st})", r.label, r.job);
                self.flights.insert(
                    i,
                    Flight {
                        job: r.job.clone(),
                        log: r.log.clone(),
                        state: st,
                        gone_since: None,
                    },
                );
                continue;
            }
            by_stage
                .entry((self.plan.ex.instances[i].stage, self.sbatch_options(i).0))
                .or_default()
                .push(i);
        }
        for ids in by_stage.into_values() {
            if let Err(e) = self.submit(&ids) {
                for i in ids {
                    self.done.push((i, RunOutcome::Failed(format!("{e:#}"))));
                }
            }
        }
        taken
    }

    fn wait(&mut self, timeout: Duration) -> Vec<(usize, RunOutcome)> {
        if !self.done.is_empty() {
            return std::mem::take(&mut self.done);
        }
        let due = match self.last_poll {
            None => Duration::ZERO,
            Some(t) => self.so.poll.saturating_sub(t.elapsed()),
        };
        if due > timeout {
            std::thread::sleep(timeout);
            return vec![];
        }
        std::thread::sleep(due);
        self.last_poll = Some(Instant::now());
        self.poll()
    }

    fn in_flight(&self) -> usize {
        self.flights.len() + self.done.len()
    }

    fn running(&self) -> Vec<usize> {
        self.flights
            .iter()
            .filter(|(_, f)| f.state == "RUNNING")
            .map(|(&i, _)| i)
            .collect()
    }

    fn message(&self) -> String {
        let running = self.running().len();
        format!(
            "slurm: {running} running, {} queued",
            self.flights.len() - running
        )
    }

    fn cancel(&mut self) -> Vec<(usize, RunOutcome)> {
        let mut out = std::mem::take(&mut self.done);
        if self.flights.is_empty() {
            return out;
        }
        let jobs: Vec<String> = self.flights.values().map(|f| f.job.clone()).collect();
        match Command::new("scancel").args(&jobs).output() {
            Ok(o) if o.status.success() => {
                eprintln!("cancelled {} slurm job(s): {}", jobs.len(), jobs.join(" "))
            }
            Ok(o) => tracing::warn!(
                "scancel {}: {}",
                jobs.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::warn!("scancel: {e}"),
        }
        let ids: Vec<usize> = self.flights.keys().copied().collect();
        let mut ended = vec![];
        for i in ids {
            // One may have finished just before: its manifest says so.
            let f = &self.flights[&i];
            let o = match self.judge(i, f) {
                Some(o @ RunOutcome::Ran(_)) => o,
                _ => RunOutcome::Interrupted,
            };
            ended.push((i, o));
        }
        self.forget(&ended);
        out.extend(ended);
        out
    }
}
