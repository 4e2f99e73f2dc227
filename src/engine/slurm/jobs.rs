//! Talking to Slurm: which job states are still active, the state file of jobs in
//! flight, `squeue` output, the `#SBATCH` options of a stage, shell quoting. The
//! executor that uses them is in `slurm.rs`.

use crate::engine::stage::Resources;
use crate::pipeline::StageResources;
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Slurm job states in which a job may still compute (or will).
pub(super) const ACTIVE: &[&str] = &[
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
];

/// The job id of a state file record whose `sbatch` had not answered yet:
/// `?<batch token>_<task>`.
pub(super) const SUBMITTING: &str = "?";

/// Every array ablate submits carries `--comment=ablate:<batch token>`.
pub(super) const COMMENT: &str = "ablate:";

/// `squeue -o '%i|%k'` lines: the array job id of each batch token in a comment.
pub(super) fn submitted_by_comment(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (id, comment) = l.trim().split_once('|')?;
            let token = comment.strip_prefix(COMMENT)?;
            Some((token.to_string(), base_id(id).to_string()))
        })
        .collect()
}

/// One job in the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// `<array job id>_<task>`.
    pub job: String,
    pub kind: String,
    pub label: String,
    pub log: PathBuf,
}

/// `jobs/<pipeline>.json`: the job of every instance key in flight.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobState {
    pub jobs: BTreeMap<String, JobRecord>,
}

impl JobState {
    pub fn path(cache_root: &Path, pipeline: &str) -> PathBuf {
        cache_root
            .join("slurm")
            .join("jobs")
            .join(format!("{pipeline}.json"))
    }

    pub fn load(path: &Path) -> JobState {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable {}: {e}", path.display());
                JobState::default()
            }),
            Err(_) => JobState::default(),
        }
    }

    pub(super) fn save(&self, path: &Path) -> Result<()> {
        atomic_write(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// The array job id of `123_4` (or of a plain `123`).
fn base_id(job: &str) -> &str {
    job.split('_').next().unwrap_or(job)
}

/// `squeue` for these jobs: state by job id (`123_4`), including ended jobs the
/// controller still remembers. One call, whatever the number of jobs.
pub fn squeue(jobs: &BTreeSet<String>) -> Result<BTreeMap<String, String>> {
    if jobs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids: BTreeSet<&str> = jobs.iter().map(|j| base_id(j)).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let o = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-o", "%i|%T", "-j", &ids.join(",")])
        .output()
        .context("running squeue (is Slurm installed here?)")?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        // Every id unknown to the controller (ended long ago): nothing to report.
        if stderr.contains("Invalid job id") {
            return Ok(BTreeMap::new());
        }
        bail!("squeue failed: {}", stderr.trim());
    }
    Ok(parse_squeue(&String::from_utf8_lossy(&o.stdout), jobs))
}

/// `squeue -r -o '%i|%T'` lines as the state of each of `jobs`. An array whose tasks
/// never started is one record for all of them: `57` (e.g. cancelled while pending) or
/// `57_[3-9%2]`, which stands for every task not listed on its own.
fn parse_squeue(text: &str, jobs: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut exact = BTreeMap::new();
    let mut whole: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some((id, state)) = line.trim().split_once('|') {
            // `CANCELLED by 0` -> `CANCELLED`
            let state = state.split_whitespace().next().unwrap_or("").to_string();
            match id.split_once('_') {
                Some((base, task)) if task.starts_with('[') => {
                    whole.insert(base.to_string(), state);
                }
                Some(_) => {
                    exact.insert(id.to_string(), state);
                }
                None => {
                    whole.insert(id.to_string(), state);
                }
            }
        }
    }
    jobs.iter()
        .filter_map(|j| {
            let st = exact.get(j).or_else(|| whole.get(base_id(j)))?;
            Some((j.clone(), st.clone()))
        })
        .collect()
}

/// The last `n` lines of a log (empty when it cannot be read).
pub(super) fn log_tail(path: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The sbatch options of a stage's instances, and their CPUs: the stage's YAML
/// `resources:` over its kind's defaults; what neither sets is left to the cluster
/// (CPUs: 1).
pub fn sbatch_options(yaml: &StageResources, kind: &Resources) -> (Vec<String>, usize) {
    let mut o = vec![];
    let cpus = yaml.cpus.or(kind.cpus).unwrap_or(1);
    o.push(format!("--cpus-per-task={cpus}"));
    if let Some(mb) = yaml.mem_mb.or(kind.mem_mb) {
        o.push(format!("--mem={mb}M"));
    }
    if let Some(min) = yaml.time_min.or(kind.time_min) {
        o.push(format!("--time={min}"));
    }
    let gpus = yaml.gpus.unwrap_or(u32::from(kind.gpu));
    if gpus > 0 {
        o.push(format!("--gres=gpu:{gpus}"));
    }
    if let Some(p) = &yaml.partition {
        o.push(format!("--partition={p}"));
    }
    o.extend(yaml.extra.iter().cloned());
    (o, cpus)
}

/// Quote for a POSIX shell.
pub(super) fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_ids_and_quoting() {
        assert_eq!(base_id("123_4"), "123");
        assert_eq!(base_id("77"), "77");
        assert_eq!(sh("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn squeue_lines_give_each_task_its_state() {
        let jobs: BTreeSet<String> = ["5_0", "5_1", "5_2", "7_0", "7_1", "9_0", "11_4", "12_0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let text = "5_0|RUNNING\n5_1|COMPLETED\n5_[2-3%1]|PENDING\n7|CANCELLED by 0\n\
                    11_4|OUT_OF_MEMORY\n12_0|NODE_FAIL\n";
        let got = parse_squeue(text, &jobs);
        let want: BTreeMap<String, String> = [
            ("5_0", "RUNNING"),
            ("5_1", "COMPLETED"),
            ("5_2", "PENDING"),
            ("7_0", "CANCELLED"),
            ("7_1", "CANCELLED"),
            ("11_4", "OUT_OF_MEMORY"),
            ("12_0", "NODE_FAIL"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        // 9_0: unknown to the controller, so absent
        assert_eq!(got, want);
    }

    #[test]
    fn yaml_resources_override_kind_defaults() {
        let train = Resources {
            gpu: true,
            ..Resources::cluster(4, 8192, 1440)
        };
        let none = StageResources::default();
        let (o, cpus) = sbatch_options(&none, &train);
        assert_eq!(
            o,
            [
                "--cpus-per-task=4",
                "--mem=8192M",
                "--time=1440",
                "--gres=gpu:1"
            ]
        );
        assert_eq!(cpus, 4);
        let yaml = StageResources {
            cpus: Some(2),
            gpus: Some(0),
            mem_mb: Some(500),
            time_min: None,
            partition: Some("short".into()),
            extra: vec!["--qos=low".into()],
        };
        let (o, cpus) = sbatch_options(&yaml, &train);
        assert_eq!(
            o,
            [
                "--cpus-per-task=2",
                "--mem=500M",
                "--time=1440",
                "--partition=short",
                "--qos=low"
            ]
        );
        assert_eq!(cpus, 2);
        // a kind without defaults: the cluster's, one CPU
        let (o, cpus) = sbatch_options(&none, &Resources::default());
        assert_eq!((o, cpus), (vec!["--cpus-per-task=1".to_string()], 1));
    }

    #[test]
    fn arrays_are_found_by_their_comment() {
        let text = "41_0|ablate:p-train-17-1\n41_[1-2]|ablate:p-train-17-1\n42|(null)\n\
                    43_0|someone else\n44|ablate:p-table-18-2\n";
        let found = submitted_by_comment(text);
        assert_eq!(found.len(), 2);
        assert_eq!(found["p-train-17-1"], "41");
        assert_eq!(found["p-table-18-2"], "44");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        std::fs::write(&p, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&p, 2), "3\n4");
        assert_eq!(log_tail(&p, 10), "1\n2\n3\n4");
        assert_eq!(log_tail(&d.path().join("none"), 3), "");
    }

    #[test]
    fn state_file_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let p = JobState::path(d.path(), "pipe");
        assert_eq!(JobState::load(&p), JobState::default());
        let mut s = JobState::default();
        s.jobs.insert(
            "k".repeat(64),
            JobRecord {
                job: "12_3".into(),
                kind: "train".into(),
                label: "train[seed=1]".into(),
                log: d.path().join("12_3.log"),
            },
        );
        s.save(&p).unwrap();
        assert_eq!(JobState::load(&p), s);
        std::fs::write(&p, "{not json").unwrap();
        assert_eq!(JobState::load(&p), JobState::default());
    }
}
