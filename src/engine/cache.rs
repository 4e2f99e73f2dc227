//! The artifact cache: one directory per stage instance, keyed by content.
//!
//! Layout under the cache root (default `results/cache/`):
//! ```text
//! <kind>/<key>/            the instance's files
//! <kind>/<key>/manifest.json   written last, by atomic rename: the only mark of completion
//! <kind>/<key>.lock        held while a process computes the instance
//! index/<pipeline>/<hash of label>   the key an instance label had last time (for plan's "why")
//! slurm/                   the Slurm executor's frozen instances, scripts, logs and job ids
//! memo/<name>/...           values derived from finished instances, computed once (memo.rs)
//! ```

use super::stage::Status;
use crate::util::{atomic_write, canonical_json, hash_file, is_tmp_name};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "manifest.json";

/// The key of an instance: blake3 over kind, kind version, canonical params and input keys.
pub fn instance_key(kind: &str, version: u32, params: &Value, inputs: &[&str]) -> String {
    let doc = serde_json::json!({
        "kind": kind,
        "version": version,
        "params": params,
        "inputs": inputs,
    });
    blake3::hash(canonical_json(&doc).as_bytes())
        .to_hex()
        .to_string()
}

/// An output file as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub bytes: u64,
    pub blake3: String,
    /// Modification time when the manifest was written, in nanoseconds since the Unix
    /// epoch: with `bytes`, the cheap check every plan makes ([`Cache::changed_output`]).
    /// Absent in manifests written before it existed (then only the size is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
}

/// A file's modification time in nanoseconds since the Unix epoch, where the platform has one.
pub fn mtime_ns(md: &std::fs::Metadata) -> Option<u64> {
    let t = md.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

/// An input as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputRecord {
    pub stage: String,
    pub key: String,
}

/// Start, end and length of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    /// Seconds since the Unix epoch.
    pub started: f64,
    pub finished: f64,
    pub wall_s: f64,
}

/// `manifest.json`: what was computed, from what, and what came out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub kind: String,
    pub version: u32,
    pub key: String,
    /// Stage name and instance label of the pipeline that computed it.
    pub stage: String,
    pub label: String,
    pub params: Value,
    pub inputs: Vec<InputRecord>,
    pub outputs: BTreeMap<String, FileRecord>,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// JSON has no NaN: a NaN metric (reverse KL over no high-quality samples, a
    /// diverged run's loss) is written as null and read back as NaN.
    #[serde(default, deserialize_with = "metrics_null_as_nan")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub info: Map<String, Value>,
    pub timings: Timings,
    pub device: String,
    pub crate_version: String,
}

fn metrics_null_as_nan<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    let m: BTreeMap<String, Option<f64>> = Deserialize::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// The cache root and the paths inside it.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn dir(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(key)
    }

    /// Values derived from finished instances (`<root>/memo`).
    pub fn memo(&self) -> super::memo::Memo {
        super::memo::Memo::new(self.root.join("memo"))
    }

    fn lock_path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(format!("{key}.lock"))
    }

    /// The manifest of a finished instance, if there is one; an unreadable one counts as
    /// none (the plan has warned about it, see [`Cache::try_manifest`]).
    pub fn manifest(&self, kind: &str, key: &str) -> Option<Manifest> {
        self.try_manifest(kind, key).unwrap_or_else(|e| {
            tracing::debug!("{e:#}");
            None
        })
    }

    /// The manifest of an instance: `None` when there is none, an error naming the file
    /// and the cause when one exists but cannot be read or parsed.
    pub fn try_manifest(&self, kind: &str, key: &str) -> Result<Option<Manifest>> {
        let p = self.dir(kind, key).join(MANIFEST);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("unreadable manifest {}", p.display()))
            }
        };
        let m = serde_json::from_str(&text)
            .with_context(|| format!("unreadable manifest {}", p.display()))?;
        Ok(Some(m))
    }

    /// Why a finished instance's outputs can no longer be trusted, from a cheap look at
    /// each file's size and modification time against the manifest (no hashing; `ablate
    /// verify` hashes): the first output that is missing or changed, or `None`.
    pub fn changed_output(&self, m: &Manifest) -> Option<String> {
        let dir = self.dir(&m.kind, &m.key);
        for (name, rec) in &m.outputs {
            let md = match std::fs::metadata(dir.join(name)) {
                Ok(md) => md,
                Err(_) => return Some(format!("output {name} missing")),
            };
            if md.len() != rec.bytes {
                return Some(format!(
                    "output {name} changed on disk ({} bytes, manifest says {})",
                    md.len(),
                    rec.bytes
                ));
            }
            if let Some(t) = rec.mtime_ns {
                if mtime_ns(&md) != Some(t) {
                    return Some(format!(
                        "output {name} changed on disk (modified after its manifest was written)"
                    ));
                }
            }
        }
        None
    }

    /// Remove an instance (manifest first, so a crash halfway never leaves a
    /// complete-looking entry), holding its lock.
    pub fn remove_instance(&self, kind: &str, key: &str) -> Result<()> {
        let _lock = self.lock(kind, key)?;
        let dir = self.dir(kind, key);
        match std::fs::remove_file(dir.join(MANIFEST)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// Take the instance's lock, waiting for another process if it holds it.
    /// The lock is released when the returned file is dropped (or the process dies).
    /// `ablate gc` removes a lock file only while holding it; a process that opened it
    /// just before and then takes it finds that the path names another file (or none)
    /// and opens the lock again.
    pub fn lock(&self, kind: &str, key: &str) -> Result<File> {
        let p = self.lock_path(kind, key);
        loop {
            let f = open_lock(&p)?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    tracing::info!(
                        "waiting for another ablate process that is computing {kind}/{}",
                        &key[..12]
                    );
                    f.lock()?;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
            if still_at(&f, &p) {
                return Ok(f);
            }
        }
    }

    /// Hash every output file of an instance directory (all but the manifest and temporaries).
    pub fn record_outputs(dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let p = e.path();
                let name = e.file_name().to_string_lossy().to_string();
                if e.file_type()?.is_dir() {
                    stack.push(p);
                    continue;
                }
                if (d == dir && name == MANIFEST) || is_tmp_name(&name) {
                    continue;
                }
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let md = e.metadata()?;
                out.insert(
                    rel,
                    FileRecord {
                        bytes: md.len(),
                        blake3: hash_file(&p)?,
                        mtime_ns: mtime_ns(&md),
                    },
                );
            }
        }
        Ok(out)
    }

    /// Write a manifest last and atomically.
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let p = self.dir(&m.kind, &m.key).join(MANIFEST);
        atomic_write(&p, serde_json::to_string_pretty(m)?.as_bytes())
    }

    fn index_path(&self, pipeline: &str, label: &str) -> PathBuf {
        let h = blake3::hash(label.as_bytes()).to_hex();
        self.root.join("index").join(pipeline).join(&h[..24])
    }

    /// Remember which key an instance label had (for plan's reasons).
    pub fn remember(&self, pipeline: &str, label: &str, kind: &str, key: &str) -> Result<()> {
        atomic_write(
            &self.index_path(pipeline, label),
            format!("{kind}/{key}").as_bytes(),
        )
    }

    /// The (kind, key) an instance label had last time, if any.
    pub fn previous(&self, pipeline: &str, label: &str) -> Option<(String, String)> {
        let s = std::fs::read_to_string(self.index_path(pipeline, label)).ok()?;
        let (k, key) = s.trim().split_once('/')?;
        Some((k.to_string(), key.to_string()))
    }

    /// Every instance directory in the cache: (kind, key, path).
    pub fn entries(&self) -> Result<Vec<(String, String, PathBuf)>> {
        let mut out = vec![];
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for kd in rd {
            let kd = kd?;
            let kind = kd.file_name().to_string_lossy().to_string();
            // `index/`, the Slurm executor's `slurm/` and `memo/` hold no instances
            if ["index", "slurm", "memo"].contains(&kind.as_str()) || !kd.file_type()?.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(kd.path())? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    out.push((
                        kind.clone(),
                        e.file_name().to_string_lossy().to_string(),
                        e.path(),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Whether the open file `f` is still the file at `path` (not removed or replaced).
#[cfg(unix)]
fn still_at(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn still_at(_f: &File, path: &Path) -> bool {
    path.exists()
}

/// Bytes under a path (a file or a whole directory tree).
pub fn disk_usage(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| disk_usage(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Opens (creating it and its folder) the lock file at `path`, not yet locked: the one
/// way the instance locks, memo locks and `gc` open a lock.
pub(crate) fn open_lock(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_ignores_key_order_and_sees_every_part() {
        let a = instance_key("train", 1, &json!({"a": 1, "b": [1, 2]}), &["k1"]);
        let b = instance_key("train", 1, &json!({"b": [1, 2], "a": 1}), &["k1"]);
        assert_eq!(a, b);
        assert_ne!(
            a,
            instance_key("train", 2, &json!({"a": 1, "b": [1, 2]}), &["k1"])
        );
        assert_ne!(
            a,
            instance_key("train", 1, &json!({"a": 2, "b": [1, 2]}), &["k1"])
        );
        assert_ne!(
            a,
            instance_key("train", 1, &json!({"a": 1, "b": [1, 2]}), &["k2"])
        );
        assert_ne!(
            a,
            instance_key("sample", 1, &json!({"a": 1, "b": [1, 2]}), &["k1"])
        );
        // The key is blake3 of the canonical document, which a notebook can recompute.
        let doc = r#"{"inputs":["k1"],"kind":"train","params":{"a":1,"b":[1,2]},"version":1}"#;
        assert_eq!(a, blake3::hash(doc.as_bytes()).to_hex().to_string());
    }

    #[test]
    fn a_nan_metric_does_not_make_the_manifest_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        let key = "b".repeat(64);
        let m = Manifest {
            kind: "k".into(),
            version: 1,
            key: key.clone(),
            stage: "s".into(),
            label: "s".into(),
            params: json!({}),
            inputs: vec![],
            outputs: BTreeMap::new(),
            status: Status::Ok,
            error: None,
            metrics: [("nan".to_string(), f64::NAN), ("one".to_string(), 1.0)]
                .into_iter()
                .collect(),
            info: Map::new(),
            timings: Timings::default(),
            device: "cpu".into(),
            crate_version: "0".into(),
        };
        std::fs::create_dir_all(c.dir("k", &key)).unwrap();
        c.write_manifest(&m).unwrap();
        let back = c.manifest("k", &key).expect("readable");
        assert!(back.metrics["nan"].is_nan());
        assert_eq!(back.metrics["one"], 1.0);
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        let key = "a".repeat(64);
        let held = c.lock("k", &key).unwrap();
        let other = File::options()
            .write(true)
            .open(c.lock_path("k", &key))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    // A NaN metric used to be written as null and then fail to parse, so the
    // finished instance read as missing and everything downstream failed.
    #[test]
    fn nan_metric_survives_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        let key = "b".repeat(64);
        let m = Manifest {
            kind: "evaluate".into(),
            version: 1,
            key: key.clone(),
            stage: "evaluate".into(),
            label: "evaluate".into(),
            params: json!({}),
            inputs: vec![],
            outputs: BTreeMap::new(),
            status: Status::Ok,
            error: None,
            metrics: [
                ("modes".to_string(), 3.0),
                ("reverse_kl".to_string(), f64::NAN),
            ]
            .into_iter()
            .collect(),
            info: Map::new(),
            timings: Timings {
                started: 0.0,
                finished: 1.0,
                wall_s: 1.0,
            },
            device: "cpu".into(),
            crate_version: "0".into(),
        };
        std::fs::create_dir_all(c.dir("evaluate", &key)).unwrap();
        c.write_manifest(&m).unwrap();
        let back = c.manifest("evaluate", &key).expect("readable");
        assert_eq!(back.metrics["modes"], 3.0);
        assert!(back.metrics["reverse_kl"].is_nan());
    }
}
