//! `--executor slurm` end to end through a real Slurm (issue 16): a one-node cluster on
//! this machine, brought up by `scripts/slurm-local.sh` (`.ci/run` starts it).
//!
//! - a small sweep goes through `sbatch` (one job array per stage) and its table equals
//!   the local run's;
//! - a job cancelled with `scancel` is reported with its Slurm state (the sweep goes on
//!   with `--keep-going`), and a re-run recomputes it;
//! - an `ablate run` killed with SIGKILL and started again re-attaches to the jobs it had
//!   submitted: no instance is submitted twice.
//!
//! Without a running Slurm these tests fail loudly under CI (`CI` set) and are skipped
//! with a message elsewhere.

mod common;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The node has few CPUs: one test's jobs at a time, so each test's timing is its own.
static NODE: Mutex<()> = Mutex::new(());

/// Whether `sinfo` answers with a node that can take jobs.
fn slurm_up() -> Result<(), String> {
    let o = Command::new("sinfo")
        .args(["-h", "-o", "%t"])
        .output()
        .map_err(|e| format!("sinfo: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let states: Vec<&str> = out.split_whitespace().collect();
    if states
        .iter()
        .any(|s| ["idle", "mix", "alloc", "comp"].contains(&s.trim_end_matches('*')))
    {
        Ok(())
    } else {
        Err(format!("no usable node (sinfo states: {states:?})"))
    }
}

/// True when Slurm is up; false (skip) when it is not and this is not CI; panics under CI.
fn need_slurm(test: &str) -> bool {
    match slurm_up() {
        Ok(()) => true,
        Err(why) => {
            let msg = format!(
                "SLURM IS NOT RUNNING ({why}): {test} needs it; start a one-node Slurm with \
                 `scripts/slurm-local.sh` (as root)"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg} (CI is set: this is a failure, not a skip)");
            }
            eprintln!("SKIPPED: {msg}");
            false
        }
    }
}

fn env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("ABLATE_CACHE", dir.join("cache")),
        ("ABLATE_RESULTS", dir.join("results")),
        ("ABLATE_SLURM_POLL", PathBuf::from("0.3")),
    ]
}

fn ablate(dir: &Path, args: &[&str]) -> (i32, String, String) {
    common::ablate_with(dir, &env(dir), args)
}

/// Every stage asks for 1 CPU and little memory, so jobs fit a 2-core CI machine.
fn sweep(name: &str, seeds: &str, steps: u64, train_extra: &str) -> String {
    format!(
        "name: {name}
stages:
  ring:
    kind: data
    params: {{source: gaussian_ring, count: 300, seed: 1}}
    resources: &small {{cpus: 1, mem: 256M, time: 10}}
  train:
    kind: train
    needs: [ring]
    matrix: {{seed: {seeds}}}
    params:
      generator: {{arch: mlp, width: 8}}
      discriminator: {{arch: mlp, width: 8}}
      loss: rpgan
      penalties: [r1]
      gamma: 0.1
      optimizer: {{lr: 1.0e-3, betas: [0.5, 0.99]}}
      batch: 16
      steps: {steps}
      checkpoint_every: 1000
      seed: ${{seed}}
    resources: {{cpus: 1, mem: 256M, time: 10{train_extra}}}
  sample:
    kind: sample
    needs: [train]
    params: {{count: 200, seed: 3}}
    resources: *small
  evaluate:
    kind: evaluate
    needs: [sample, ring]
    params: {{real_count: 200, fake_count: 200, mode_samples: 200}}
    resources: *small
  table:
    kind: tabulate
    needs: [evaluate]
    resources: *small
"
    )
}

/// Data, a train matrix and a table: the shortest chain of jobs.
fn short(name: &str, seeds: &str, steps: u64) -> String {
    let full = sweep(name, seeds, steps, "");
    let cut = full.find("  sample:").unwrap();
    format!(
        "{}  table:\n    kind: tabulate\n    needs: [train]\n    resources: *small\n",
        &full[..cut]
    )
}

/// Split one CSV line (fields may be quoted, with commas inside).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// A published table without its timing columns (seconds, rates, memory): column ->
/// values, row order kept.
fn table_without_timings(path: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = csv_fields(lines.next().unwrap());
    let rows: Vec<Vec<String>> = lines.map(csv_fields).collect();
    let timing = |c: &str| c.ends_with("_s") || c.contains("per_s") || c.contains("peak_rss");
    header
        .iter()
        .enumerate()
        .filter(|(_, c)| !timing(c))
        .map(|(j, c)| (c.clone(), rows.iter().map(|r| r[j].clone()).collect()))
        .collect()
}

/// The state file's jobs: instance label -> job id (`123_4`); records of an `sbatch`
/// that has not answered yet (`?<batch>_<task>`) are left out.
fn state_jobs(dir: &Path, pipeline: &str) -> BTreeMap<String, String> {
    let p = dir.join(format!("cache/slurm/jobs/{pipeline}.json"));
    let Ok(text) = std::fs::read_to_string(p) else {
        return BTreeMap::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    v["jobs"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| {
            (
                r["label"].as_str().unwrap().to_string(),
                r["job"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(_, job)| !job.starts_with('?'))
        .collect()
}

/// A job's state as squeue reports it (`None`: unknown to the controller).
fn job_state(job: &str) -> Option<String> {
    let o = Command::new("squeue")
        .args([
            "-h",
            "-r",
            "-t",
            "all",
            "-o",
            "%i %T",
            "-j",
            job.split('_').next().unwrap(),
        ])
        .output()
        .unwrap();
    // an array cancelled before its tasks started is one record: `57 CANCELLED`
    let base = job.split('_').next().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let find = |id: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{id} ")).map(|s| s.to_string()))
    };
    find(job).or_else(|| find(base))
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Job logs under the cache that say they ran `label` (each job logs "running LABEL").
fn logs_running(dir: &Path, label: &str) -> usize {
    let needle = format!("running {label} (");
    std::fs::read_dir(dir.join("cache/slurm/logs"))
        .unwrap()
        .filter(|e| {
            std::fs::read_to_string(e.as_ref().unwrap().path())
                .unwrap()
                .contains(&needle)
        })
        .count()
}

/// Instance label -> (status, reason) from `ablate plan --format json`.
fn plan(dir: &Path) -> BTreeMap<String, (String, String)> {
    let (code, out, err) = ablate(dir, &["plan", "p.yaml", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("instance"), (s("status"), s("reason")))
        })
        .collect()
}

#[test]
fn sweep_through_sbatch_equals_the_local_run() {
    if !need_slurm("sweep_through_sbatch_equals_the_local_run") {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let yaml = sweep("slurm-sweep", "[0, 1, 2]", 40, "");
    let local = tempfile::tempdir().unwrap();
    let cluster = tempfile::tempdir().unwrap();
    for d in [local.path(), cluster.path()] {
        std::fs::write(d.join("p.yaml"), &yaml).unwrap();
    }
    let (code, _, err) = ablate(local.path(), &["run", "p.yaml", "-q"]);
    assert_eq!(code, 0, "local run: {err}");
    let (code, _, err) = common::ablate_with(
        cluster.path(),
        &[
            env(cluster.path()),
            vec![("ABLATE_EXECUTOR", "slurm".into())],
        ]
        .concat(),
        &["run", "p.yaml"],
    );
    assert_eq!(code, 0, "slurm run: {err}");
    assert!(err.contains("ran 11, cached 0, failed 0"), "{err}");

    // The same numbers, instance for instance (the key column included: resources and
    // the executor stay out of the key).
    let a = table_without_timings(&local.path().join("results/slurm-sweep/table.csv"));
    let b = table_without_timings(&cluster.path().join("results/slurm-sweep/table.csv"));
    assert!(
        a.contains_key("fid_judge") && a.contains_key("train.g_loss"),
        "{a:?}"
    );
    assert_eq!(a["instance"].len(), 3);
    assert_eq!(a, b);

    // Every instance was a Slurm job: the three train instances as one array of three,
    // with the stage's resources; each job's log says it ran its instance.
    let c = cluster.path();
    let scripts: Vec<PathBuf> = std::fs::read_dir(c.join("cache/slurm/batch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("slurm-sweep-train-"))
        .collect();
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    let script = std::fs::read_to_string(&scripts[0]).unwrap();
    for line in [
        "#SBATCH --array=0-2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=256M",
        "#SBATCH --time=10",
    ] {
        assert!(script.contains(line), "{line} not in\n{script}");
    }
    for label in [
        "ring",
        "train[seed=0]",
        "train[seed=1]",
        "train[seed=2]",
        "table",
    ] {
        assert_eq!(logs_running(c, label), 1, "{label}");
    }
    assert!(
        state_jobs(c, "slurm-sweep").is_empty(),
        "nothing left in flight"
    );
    // The local run left no Slurm state.
    assert!(!local.path().join("cache/slurm").exists());
}

#[test]
fn a_cancelled_job_is_reported_and_a_rerun_recovers_it() {
    if !need_slurm("a_cancelled_job_is_reported_and_a_rerun_recovers_it") {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // ~2 s of training per seed at 1 CPU: long enough to cancel seed 0 while it runs.
    std::fs::write(d.join("p.yaml"), short("slurm-cancel", "[0, 1]", 15000)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "p.yaml", "--executor", "slurm", "--keep-going"])
        .current_dir(d)
        .envs(env(d))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = wait_for(
        "train[seed=0] to be submitted",
        Duration::from_secs(60),
        || state_jobs(d, "slurm-cancel").get("train[seed=0]").cloned(),
    );
    wait_for("its job to run", Duration::from_secs(60), || {
        (job_state(&job).as_deref() == Some("RUNNING")).then_some(())
    });
    let o = Command::new("scancel").arg(&job).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // On the screen: which instance, the Slurm state, and that the rest went on.
    assert!(
        err.contains("failed: train[seed=0]")
            && err.contains(&format!("slurm job {job} CANCELLED")),
        "{err}"
    );
    assert!(
        err.contains("ran 2, cached 0, failed 1, skipped 1"),
        "{err}"
    );
    // In the manifest: a failed instance whose error names the job and its state.
    let p = plan(d);
    let (status, reason) = &p["train[seed=0]"];
    assert_eq!(status, "run");
    assert!(
        reason.contains(&format!("last attempt failed: slurm job {job} CANCELLED")),
        "{reason}"
    );
    assert_eq!(p["train[seed=1]"].0, "cached");

    // A re-run computes it and what it skipped.
    let (code, _, err) = ablate(d, &["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ran 2, cached 2, failed 0"), "{err}");
    assert!(plan(d).values().all(|(s, _)| s == "cached"));
    let t = table_without_timings(&d.join("results/slurm-cancel/table.csv"));
    assert_eq!(t["status"], ["ok", "ok"]);
}

#[test]
fn a_killed_run_reattaches_to_its_jobs_without_submitting_twice() {
    if !need_slurm("a_killed_run_reattaches_to_its_jobs_without_submitting_twice") {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Three ~2 s trainings at 1 CPU each: with 2 CPUs on the node, one waits in the queue.
    std::fs::write(d.join("p.yaml"), short("slurm-attach", "[0, 1, 2]", 15000)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "p.yaml", "--executor", "slurm"])
        .current_dir(d)
        .envs(env(d))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let jobs = wait_for("the train array", Duration::from_secs(60), || {
        let j = state_jobs(d, "slurm-attach");
        (j.keys().filter(|l| l.starts_with("train")).count() == 3).then_some(j)
    });
    child.kill().unwrap(); // SIGKILL: no Ctrl-C handler, no scancel
    child.wait().unwrap();
    let alive = jobs
        .values()
        .filter(|j| matches!(job_state(j).as_deref(), Some("PENDING" | "RUNNING")))
        .count();
    assert!(alive >= 1, "the jobs outlive their coordinator: {jobs:?}");

    let (code, _, err) = ablate(d, &["run", "p.yaml", "--executor", "slurm"]);
    assert_eq!(code, 0, "{err}");
    let reattached = err.matches("re-attached train[seed=").count();
    assert!(reattached >= 1, "{err}");
    for (label, job) in jobs.iter().filter(|(l, _)| l.starts_with("train")) {
        // one job ever ran each instance, and it is the one the first run submitted
        assert_eq!(logs_running(d, label), 1, "{label}\n{err}");
        let log = std::fs::read_to_string(d.join(format!("cache/slurm/logs/{job}.log"))).unwrap();
        assert!(
            log.contains(&format!("running {label} (")),
            "{label}: {log}"
        );
    }
    let train_arrays = std::fs::read_dir(d.join("cache/slurm/batch"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("slurm-attach-train-")
        })
        .count();
    assert_eq!(train_arrays, 1, "train was submitted once\n{err}");
    assert!(plan(d).values().all(|(s, _)| s == "cached"));
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs() {
    if !need_slurm("ctrl_c_cancels_the_submitted_jobs") {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // long trainings: they are still queued or running when Ctrl-C comes
    std::fs::write(
        d.join("p.yaml"),
        short("slurm-ctrlc", "[0, 1, 2]", 2_000_000),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "p.yaml", "--executor", "slurm"])
        .current_dir(d)
        .envs(env(d))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let jobs = wait_for("the train array", Duration::from_secs(60), || {
        let j = state_jobs(d, "slurm-ctrlc");
        (j.keys().filter(|l| l.starts_with("train")).count() == 3).then_some(j)
    });
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled 3 slurm job(s)"), "{err}");
    assert!(
        err.contains("interrupted 4"),
        "3 trainings and the table: {err}"
    );
    for job in jobs.values() {
        let s = wait_for("the job to end", Duration::from_secs(30), || {
            job_state(job).filter(|s| s != "PENDING" && s != "RUNNING" && s != "COMPLETING")
        });
        assert_eq!(s, "CANCELLED", "{job}");
    }
    assert!(state_jobs(d, "slurm-ctrlc").is_empty());
    // nothing half-done is taken for done: the trainings are still to run
    let p = plan(d);
    assert!(
        p["train[seed=0]"].0 == "run" && p["table"].0 == "run",
        "{p:?}"
    );
}

#[test]
fn a_job_that_dies_without_a_result_leaves_its_state_and_log_in_a_failed_manifest() {
    if !need_slurm("a_job_that_dies_without_a_result_leaves_its_state_and_log_in_a_failed_manifest")
    {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("p.yaml"), short("slurm-dead", "[0]", 10)).unwrap();
    // the nodes cannot run the binary: the job fails before ablate starts
    let missing = d.join("no-such-ablate");
    let (code, _, err) = ablate(
        d,
        &[
            "run",
            "p.yaml",
            "--executor",
            "slurm",
            "--slurm-binary",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ran 0, cached 0, failed 1, skipped 2"),
        "{err}"
    );
    let m: Value = {
        let dir = std::fs::read_dir(d.join("cache/data"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir())
            .unwrap();
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
    };
    assert_eq!(m["status"], "failed");
    let error = m["error"].as_str().unwrap();
    // its Slurm state and the tail of its log (bash saying what it could not run)
    assert!(error.contains("_0 FAILED without a result"), "{error}");
    assert!(
        error.contains("no-such-ablate: No such file or directory"),
        "{error}"
    );
    assert!(
        err.contains("no-such-ablate: No such file or directory"),
        "{err}"
    );
    let p = plan(d);
    assert!(
        p["ring"].1.starts_with("last attempt failed: slurm job "),
        "{p:?}"
    );
}

#[test]
fn max_jobs_caps_the_jobs_in_flight() {
    if !need_slurm("max_jobs_caps_the_jobs_in_flight") {
        return;
    }
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("p.yaml"), short("slurm-cap", "[0, 1, 2]", 10)).unwrap();
    let (code, _, err) = ablate(
        d,
        &["run", "p.yaml", "--executor", "slurm", "--max-jobs", "2"],
    );
    assert_eq!(code, 0, "{err}");
    // three ready trainings under a cap of 2: an array of 2, then one of 1
    let mut arrays: Vec<String> = std::fs::read_dir(d.join("cache/slurm/batch"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("slurm-cap-train-"))
        .map(|p| {
            let s = std::fs::read_to_string(p).unwrap();
            s.lines()
                .find(|l| l.starts_with("#SBATCH --array="))
                .unwrap()
                .to_string()
        })
        .collect();
    arrays.sort();
    assert_eq!(
        arrays,
        ["#SBATCH --array=0-0", "#SBATCH --array=0-1"],
        "{err}"
    );
}
