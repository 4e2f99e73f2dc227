//! `ablate verify`: re-hash the outputs of finished instances against their manifests,
//! as `dvc status` does.
//!
//! Every plan already makes the cheap check (size and modification time of each output,
//! [`Cache::changed_output`]); this one reads every byte, so it also finds a file changed
//! in place with its size and time kept. It only reports (and, asked to, removes the
//! damaged instances so the next run recomputes them); it never rewrites a manifest.

use super::cache::{Cache, MANIFEST};
use crate::util::hash_file;
use anyhow::Result;
use rayon::prelude::*;

/// One damaged output (or an unreadable manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: String,
    pub key: String,
    /// The instance label the manifest records (empty when the manifest is unreadable).
    pub label: String,
    /// The output's path inside the instance directory.
    pub file: String,
    /// What is wrong: `missing`, `size ...`, `blake3 differs ...`, or the parse error.
    pub what: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Finished instances looked at (those with a manifest).
    pub instances: usize,
    /// Output files hashed.
    pub files: usize,
    /// Bytes hashed.
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-hash every output of each `(kind, key)` instance that has a manifest (instances
/// without one are not finished and are skipped). Files are hashed in parallel.
pub fn verify(cache: &Cache, instances: &[(String, String)]) -> Result<Report> {
    let mut report = Report::default();
    let mut jobs = vec![];
    for (kind, key) in instances {
        match cache.try_manifest(kind, key) {
            Ok(None) => {}
            Ok(Some(m)) => {
                report.instances += 1;
                for (file, rec) in m.outputs {
                    jobs.push((kind.clone(), key.clone(), m.label.clone(), file, rec));
                }
            }
            Err(e) => {
                report.instances += 1;
                report.problems.push(Problem {
                    kind: kind.clone(),
                    key: key.clone(),
                    label: String::new(),
                    file: MANIFEST.to_string(),
                    what: format!("unreadable: {}", e.root_cause()),
                });
            }
        }
    }
    let checked: Vec<(u64, Option<Problem>)> = jobs
        .into_par_iter()
        .map(|(kind, key, label, file, rec)| {
            let path = cache.dir(&kind, &key).join(&file);
            let what = match std::fs::metadata(&path) {
                Err(_) => Some("missing".to_string()),
                Ok(md) if md.len() != rec.bytes => Some(format!(
                    "size {} bytes, manifest says {}",
                    md.len(),
                    rec.bytes
                )),
                Ok(_) => match hash_file(&path) {
                    Ok(h) if h == rec.blake3 => None,
                    Ok(h) => Some(format!(
                        "blake3 differs (now {}, manifest says {})",
                        &h[..16],
                        &rec.blake3[..16.min(rec.blake3.len())]
                    )),
                    Err(e) => Some(format!("unreadable: {e:#}")),
                },
            };
            let problem = what.map(|what| Problem {
                kind,
                key,
                label,
                file,
                what,
            });
            (rec.bytes, problem)
        })
        .collect();
    for (bytes, problem) in checked {
        report.files += 1;
        report.bytes += bytes;
        report.problems.extend(problem);
    }
    report
        .problems
        .sort_by(|a, b| (&a.kind, &a.key, &a.file).cmp(&(&b.kind, &b.key, &b.file)));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cache::{Manifest, Timings};
    use crate::engine::Status;
    use std::collections::BTreeMap;

    fn finished(cache: &Cache, key: &str, files: &[(&str, &[u8])]) {
        let dir = cache.dir("k", key);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let m = Manifest {
            kind: "k".into(),
            version: 1,
            key: key.into(),
            stage: "s".into(),
            label: format!("s@{key}"),
            params: serde_json::json!({}),
            inputs: vec![],
            outputs: Cache::record_outputs(&dir).unwrap(),
            status: Status::Ok,
            error: None,
            metrics: BTreeMap::new(),
            info: Default::default(),
            timings: Timings::default(),
            device: "cpu".into(),
            crate_version: "0".into(),
        };
        cache.write_manifest(&m).unwrap();
    }

    /// Overwrite bytes in place and put the modification time back: the plan's cheap
    /// check cannot see it, the hash can.
    fn tamper_keeping_size_and_time(path: &std::path::Path) {
        let t = std::fs::metadata(path).unwrap().modified().unwrap();
        let mut b = std::fs::read(path).unwrap();
        b[0] ^= 0xff;
        std::fs::write(path, &b).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn finds_changed_missing_and_unreadable_and_passes_intact() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        finished(&c, "aa", &[("x.bin", b"hello"), ("y.bin", b"world")]);
        finished(&c, "bb", &[("z.bin", b"intact")]);
        finished(&c, "cc", &[("w.bin", b"gone")]);
        std::fs::create_dir_all(c.dir("k", "dd")).unwrap();
        std::fs::write(c.dir("k", "dd").join(MANIFEST), b"{not json").unwrap();
        std::fs::create_dir_all(c.dir("k", "ee")).unwrap(); // unfinished: skipped

        let all: Vec<(String, String)> = ["aa", "bb", "cc", "dd", "ee"]
            .iter()
            .map(|k| ("k".to_string(), k.to_string()))
            .collect();
        // Everything intact but the unreadable manifest.
        let r = verify(&c, &all).unwrap();
        assert_eq!((r.instances, r.files, r.bytes), (4, 4, 5 + 5 + 6 + 4));
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(
            (r.problems[0].key.as_str(), r.problems[0].file.as_str()),
            ("dd", MANIFEST)
        );
        assert!(
            r.problems[0].what.starts_with("unreadable"),
            "{:?}",
            r.problems
        );
        assert!(verify(&c, &all[..3]).unwrap().ok());

        let x = c.dir("k", "aa").join("x.bin");
        tamper_keeping_size_and_time(&x);
        let m = c.manifest("k", "aa").unwrap();
        assert_eq!(
            c.changed_output(&m),
            None,
            "size and time kept: the plan cannot see it"
        );
        std::fs::remove_file(c.dir("k", "cc").join("w.bin")).unwrap();
        let r = verify(&c, &all[..3]).unwrap();
        let found: Vec<(&str, &str)> = r
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.file.as_str()))
            .collect();
        assert_eq!(found, [("aa", "x.bin"), ("cc", "w.bin")]);
        assert!(r.problems[0].what.starts_with("blake3 differs"));
        assert_eq!(r.problems[0].label, "s@aa");
        assert_eq!(r.problems[1].what, "missing");
        assert_eq!(
            c.changed_output(&c.manifest("k", "cc").unwrap()).as_deref(),
            Some("output w.bin missing")
        );

        c.remove_instance("k", "aa").unwrap();
        assert!(!c.dir("k", "aa").exists());
        assert!(verify(&c, &all[..2]).unwrap().ok());
    }

    #[test]
    fn plan_check_sees_size_and_time_and_tolerates_old_manifests() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        finished(&c, "aa", &[("x.bin", b"0123456789")]);
        let x = c.dir("k", "aa").join("x.bin");
        let mut m = c.manifest("k", "aa").unwrap();
        assert!(m.outputs["x.bin"].mtime_ns.is_some());
        assert_eq!(c.changed_output(&m), None);

        // Same size, later time.
        let f = std::fs::File::options().write(true).open(&x).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
            .unwrap();
        let why = c.changed_output(&m).unwrap();
        assert!(why.contains("x.bin changed on disk"), "{why}");

        // A manifest from before mtimes were recorded: the size alone decides.
        m.outputs.get_mut("x.bin").unwrap().mtime_ns = None;
        assert_eq!(c.changed_output(&m), None);
        std::fs::write(&x, b"short").unwrap();
        let why = c.changed_output(&m).unwrap();
        assert_eq!(
            why,
            "output x.bin changed on disk (5 bytes, manifest says 10)"
        );

        // Old manifests (no `mtime_ns` key) still parse.
        let mut v = serde_json::to_value(&m).unwrap();
        v["outputs"]["x.bin"]
            .as_object_mut()
            .unwrap()
            .remove("mtime_ns");
        let back: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(back.outputs["x.bin"].mtime_ns, None);
    }
}
