//! Values derived from finished instances that several instances read, computed once
//! and kept in the cache (StyleGAN2-ADA's `metric_utils` keeps the real data's
//! features this way): `evaluate` stores the judge's features of a data set's reference
//! draw here, so that every sample evaluated against the same data and judge reuses
//! them instead of recomputing them.
//!
//! Layout: `memo/<name>/<source keys joined by '-'>-<params hash>.<ext>`. The file
//! name starts with the keys of the instances the value derives from (whole keys, so
//! `ablate gc` drops a value with its sources); the params hash (blake3 of their
//! canonical JSON, 16 hex digits) says what else it depends on. A value is written
//! once, by atomic rename, under a lock (`<file>.lock`) so that two processes never
//! compute it at the same time; a file that exists is complete.

use crate::util::canonical_json;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The memo area of one cache (`<cache>/memo`).
#[derive(Debug, Clone)]
pub struct Memo {
    pub root: PathBuf,
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Memo {
    pub fn new(root: impl Into<PathBuf>) -> Memo {
        Memo { root: root.into() }
    }

    /// Where the value `name` of `sources` (instance keys) and `params` lives.
    pub fn path(&self, name: &str, sources: &[&str], params: &Value, ext: &str) -> PathBuf {
        let hash = blake3::hash(canonical_json(params).as_bytes()).to_hex();
        let mut file = sources.join("-");
        file.push('-');
        file.push_str(&hash[..16]);
        file.push('.');
        file.push_str(ext);
        self.root.join(name).join(file)
    }

    /// The value's file, made by `make` (which must write it at the path it is given,
    /// atomically) when it is not there yet. The flag says whether it was there.
    pub fn get_or_make(
        &self,
        name: &str,
        sources: &[&str],
        params: &Value,
        ext: &str,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(PathBuf, bool)> {
        if let Some(bad) = sources.iter().find(|k| !is_key(k)) {
            bail!("memo {name}: `{bad}` is not an instance key");
        }
        let path = self.path(name, sources, params, ext);
        if path.exists() {
            return Ok((path, true));
        }
        let dir = path.parent().expect("a memo file has a folder");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = super::cache::open_lock(&lock_of(&path))?;
        lock.lock()?;
        // Another process may have made it while we waited.
        if path.exists() {
            return Ok((path, true));
        }
        make(&path)?;
        if !path.exists() {
            bail!("memo {name}: {} was not written", path.display());
        }
        Ok((path, false))
    }

    /// Every value file: (path, the instance keys it derives from).
    pub fn entries(&self) -> Result<Vec<(PathBuf, Vec<String>)>> {
        let mut out = vec![];
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for nd in rd {
            let nd = nd?;
            if !nd.file_type()?.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(nd.path())? {
                let e = e?;
                let name = e.file_name().to_string_lossy().to_string();
                if !e.file_type()?.is_file() || name.ends_with(".lock") || name.starts_with('.') {
                    continue;
                }
                let stem = name.split('.').next().unwrap_or("");
                let keys = stem
                    .split('-')
                    .filter(|p| is_key(p))
                    .map(str::to_string)
                    .collect();
                out.push((e.path(), keys));
            }
        }
        Ok(out)
    }
}

/// The lock file of a memo value.
pub fn lock_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn made_once_then_found_by_its_sources_and_params() {
        let d = tempfile::tempdir().unwrap();
        let m = Memo::new(d.path().join("memo"));
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let (a, b) = (a.as_str(), b.as_str());
        let made = std::cell::Cell::new(0);
        let make = |p: &Path| {
            made.set(made.get() + 1);
            crate::util::atomic_write(p, b"value")
        };
        let (p1, hit) = m
            .get_or_make("f", &[a, b], &json!({"n": 1}), "bin", make)
            .unwrap();
        assert!(!hit);
        let (p2, hit) = m
            .get_or_make("f", &[a, b], &json!({"n": 1}), "bin", make)
            .unwrap();
        assert!(hit);
        assert_eq!(p1, p2);
        assert_eq!(made.get(), 1);
        assert_eq!(std::fs::read(&p1).unwrap(), b"value");
        // other params: another value
        let (p3, hit) = m
            .get_or_make("f", &[a, b], &json!({"n": 2}), "bin", make)
            .unwrap();
        assert!(!hit && p3 != p1);
        let mut entries = m.entries().unwrap();
        entries.sort();
        assert_eq!(entries.len(), 2);
        assert!(entries.iter().all(|(_, keys)| keys == &[a, b]));
        assert!(m
            .get_or_make("f", &["nope"], &json!({}), "bin", |_| Ok(()))
            .is_err());
    }
}
