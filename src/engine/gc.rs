//! `ablate gc`: remove the cache entries that none of the given pipelines use.
//!
//! An entry is removed only under its instance lock (the lock [`Cache::lock`] takes
//! while computing it), taken without waiting: an instance another process holds is
//! being computed right now and is left alone, lock file included, and reported as
//! busy. Memo values ([`super::memo`]) go when an instance they derive from is not
//! kept, under their own lock in the same way. The directory goes manifest first, so a
//! crash halfway never leaves a complete-looking entry; the lock file last.

use super::cache::{disk_usage, Cache, MANIFEST};
use super::memo::lock_of;
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// What a collection removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// `<kind>/<key>` of instances and paths of memo values, with their bytes.
    pub removed: Vec<(String, u64)>,
    /// Entries left because another process holds their lock.
    pub busy: Vec<String>,
}

impl GcReport {
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|(_, b)| b).sum()
    }
}

/// Take `lock` without waiting: `None` when another process holds it.
fn try_lock(lock: &Path) -> Result<Option<File>> {
    let f = super::cache::open_lock(lock)?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Remove every instance whose `(kind, key)` is not in `keep`, and every memo value
/// derived from an instance whose key is not kept. `dry_run`: only report.
pub fn collect(cache: &Cache, keep: &HashSet<(String, String)>, dry_run: bool) -> Result<GcReport> {
    let mut report = GcReport::default();
    for (kind, key, dir) in cache.entries()? {
        if keep.contains(&(kind.clone(), key.clone())) {
            continue;
        }
        let name = format!("{kind}/{key}");
        let lock_path = dir.with_extension("lock");
        let bytes = disk_usage(&dir);
        if dry_run {
            report.removed.push((name, bytes));
            continue;
        }
        let Some(lock) = try_lock(&lock_path)? else {
            report.busy.push(name);
            continue;
        };
        remove_dir(&dir)?;
        // Unlinked while held: a process that opened it meanwhile and then takes it
        // sees that the path no longer names its file and opens it again (Cache::lock).
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        report.removed.push((name, bytes));
    }
    let kept_keys: HashSet<&str> = keep.iter().map(|(_, k)| k.as_str()).collect();
    for (path, sources) in cache.memo().entries()? {
        if sources.iter().all(|k| kept_keys.contains(k.as_str())) {
            continue;
        }
        let name = path.display().to_string();
        let bytes = disk_usage(&path);
        if dry_run {
            report.removed.push((name, bytes));
            continue;
        }
        let lock_path = lock_of(&path);
        let Some(lock) = try_lock(&lock_path)? else {
            report.busy.push(name);
            continue;
        };
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(&lock_path);
        drop(lock);
        report.removed.push((name, bytes));
    }
    Ok(report)
}

/// The entries no pipeline can use again: written by an older version of their stage
/// than `current` says (a stage's version is part of every key of its kind, so a bump
/// leaves all its old entries behind), or computed from such an entry, however far
/// upstream (their keys hold the old input keys). Entries of kinds `current` does not
/// know, of newer versions (another ablate's) or without a readable manifest are not
/// stale: only what this ablate can tell is dead.
pub fn stale(
    cache: &Cache,
    current: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<(String, String, PathBuf)>> {
    let entries = cache.entries()?;
    let mut inputs: HashMap<&str, Vec<String>> = HashMap::new();
    let mut dead: HashSet<&str> = HashSet::new();
    for (kind, key, _) in &entries {
        let Some(m) = cache.manifest(kind, key) else {
            continue;
        };
        if current(kind).is_some_and(|v| m.version < v) {
            dead.insert(key);
        }
        inputs.insert(key, m.inputs.into_iter().map(|i| i.key).collect());
    }
    // downstream of a dead entry is dead: spread until nothing changes
    loop {
        let more: Vec<&str> = inputs
            .iter()
            .filter(|(k, ins)| !dead.contains(*k) && ins.iter().any(|i| dead.contains(i.as_str())))
            .map(|(k, _)| *k)
            .collect();
        if more.is_empty() {
            break;
        }
        dead.extend(more);
    }
    let dead: HashSet<String> = dead.into_iter().map(String::from).collect();
    Ok(entries
        .into_iter()
        .filter(|(_, key, _)| dead.contains(key))
        .collect())
}

/// [`collect`] of the [`stale`] entries: every other entry is kept.
pub fn collect_stale(
    cache: &Cache,
    current: impl Fn(&str) -> Option<u32>,
    dry_run: bool,
) -> Result<GcReport> {
    let dead: HashSet<String> = stale(cache, current)?
        .into_iter()
        .map(|(_, key, _)| key)
        .collect();
    let keep = cache
        .entries()?
        .into_iter()
        .filter(|(_, key, _)| !dead.contains(key))
        .map(|(kind, key, _)| (kind, key))
        .collect();
    collect(cache, &keep, dry_run)
}

/// Remove an instance directory, manifest first.
fn remove_dir(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cache: &Cache, kind: &str, key: &str) -> PathBuf {
        let dir = cache.dir(kind, key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST), "{}").unwrap();
        std::fs::write(dir.join("out.bin"), [0u8; 100]).unwrap();
        dir
    }

    /// An entry with a manifest of `kind` at `version`, computed from `inputs`.
    fn made(cache: &Cache, kind: &str, key: &str, version: u32, inputs: &[&str]) {
        let dir = cache.dir(kind, key);
        std::fs::create_dir_all(&dir).unwrap();
        let inputs: Vec<_> = inputs
            .iter()
            .map(|k| serde_json::json!({"stage": "s", "key": k}))
            .collect();
        let m = serde_json::json!({
            "kind": kind, "version": version, "key": key, "stage": "s", "label": "s",
            "params": {}, "inputs": inputs, "outputs": {}, "status": "ok",
            "timings": {"started": 0.0, "finished": 0.0, "wall_s": 0.0},
            "device": "cpu", "crate_version": "0",
        });
        std::fs::write(dir.join(MANIFEST), m.to_string()).unwrap();
        assert!(cache.manifest(kind, key).is_some(), "a readable manifest");
    }

    /// Stale: older than this ablate's version, and what was computed from such an entry
    /// (two steps down). Not stale: the current version, a newer one, a kind this ablate
    /// does not know, an entry without a manifest, and what was computed from those.
    #[test]
    fn stale_is_older_versions_and_their_descendants_only() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let k = |c: char| c.to_string().repeat(64);
        made(&cache, "train", &k('a'), 1, &[]); // older
        made(&cache, "sample", &k('b'), 3, &[&k('a')]); // from an older one
        made(&cache, "evaluate", &k('c'), 1, &[&k('b')]); // two steps down
        made(&cache, "train", &k('d'), 2, &[]); // current
        made(&cache, "train", &k('e'), 5, &[]); // newer (another ablate's)
        made(&cache, "plugin", &k('f'), 0, &[]); // a kind this ablate lacks
        made(&cache, "sample", &k('g'), 3, &[&k('d'), &k('e'), &k('f')]);
        std::fs::create_dir_all(cache.dir("train", &k('h'))).unwrap(); // no manifest
        let current = |kind: &str| match kind {
            "train" => Some(2),
            "sample" => Some(3),
            "evaluate" => Some(1),
            _ => None,
        };
        let mut got: Vec<String> = stale(&cache, current)
            .unwrap()
            .into_iter()
            .map(|(kind, key, dir)| {
                assert_eq!(dir, cache.dir(&kind, &key));
                format!("{kind}/{}", &key[..1])
            })
            .collect();
        got.sort();
        assert_eq!(got, ["evaluate/c", "sample/b", "train/a"]);
    }

    /// What no pipeline keeps goes with its lock file; what another process is
    /// computing (its lock held) stays, lock included; kept entries stay.
    #[test]
    fn removes_unused_entries_but_never_one_whose_lock_is_held() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path());
        let (kept, unused, busy) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let kept_dir = entry(&cache, "train", &kept);
        let unused_dir = entry(&cache, "train", &unused);
        drop(cache.lock("train", &unused).unwrap()); // a lock file left by an earlier run
        let busy_dir = entry(&cache, "sample", &busy);
        let held = cache.lock("sample", &busy).unwrap(); // "another process" computes it
        let memo = cache.memo();
        let (stale, _) = memo
            .get_or_make(
                "f",
                &[unused.as_str()],
                &serde_json::json!({}),
                "bin",
                |p| crate::util::atomic_write(p, b"x"),
            )
            .unwrap();
        let (fresh, _) = memo
            .get_or_make("f", &[kept.as_str()], &serde_json::json!({}), "bin", |p| {
                crate::util::atomic_write(p, b"x")
            })
            .unwrap();
        let keep: HashSet<(String, String)> = [("train".to_string(), kept.clone())].into();

        let dry = collect(&cache, &keep, true).unwrap();
        assert_eq!(dry.removed.len(), 3, "{dry:?}");
        assert!(unused_dir.exists() && busy_dir.exists() && stale.exists());

        let r = collect(&cache, &keep, false).unwrap();
        assert_eq!(r.busy, vec![format!("sample/{busy}")]);
        let mut names: Vec<&str> = r.removed.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        assert_eq!(names.len(), 2, "{r:?}");
        assert!(names.contains(&format!("train/{unused}").as_str()));
        assert!(r.freed() >= 100);
        assert!(kept_dir.join("out.bin").exists());
        assert!(!unused_dir.exists());
        assert!(!unused_dir.with_extension("lock").exists());
        assert!(busy_dir.join(MANIFEST).exists());
        assert!(busy_dir.with_extension("lock").exists());
        assert!(!stale.exists() && fresh.exists());

        drop(held);
        let r = collect(&cache, &keep, false).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert!(r.busy.is_empty());
        assert!(!busy_dir.exists() && !busy_dir.with_extension("lock").exists());
    }
}
