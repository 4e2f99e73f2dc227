//! Small file-system and hashing helpers shared by the engine and the stages.

use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Write a file so that readers see either the old content or the whole new one:
/// write a temporary file in the same directory, flush it to disk, rename it.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// [`atomic_write`] for writers that stream into a file. The temporary file is
/// `.{name}.tmp-XXXXXX` next to `path` (unique, see [`is_tmp_name`]); it is removed when
/// `fill` or the write fails, and renamed over `path` once flushed to disk.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    let prefix = format!(".{name}.tmp-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // the permissions any new file gets (0666 less the umask), not a temporary file's
    // owner-only 0600: tables and checkpoints are for colleagues' notebooks too
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file for {}", path.display()))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

/// Is this one of [`atomic_write`]'s temporary files?
pub fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// blake3 of a file's bytes, as hex, streamed.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    h.update_reader(f)
        .with_context(|| format!("hashing {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Serialises named tensor views and string metadata as safetensors bytes, with the
/// metadata sorted by key (`sort_safetensors_metadata`): the one writer behind every
/// safetensors file ablate makes (checkpoints and data artifacts).
pub fn safetensors_bytes<'a>(
    tensors: Vec<(String, safetensors::tensor::TensorView<'a>)>,
    metadata: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut buf = safetensors::serialize(tensors, Some(metadata))?;
    sort_safetensors_metadata(&mut buf);
    Ok(buf)
}

/// Sort the `__metadata__` entries of safetensors bytes in place, so that a file's bytes
/// (and its blake3 in the manifest) do not depend on `HashMap` order: the `safetensors`
/// crate takes metadata as a `HashMap` and writes it in iteration order, which differs
/// between runs. The header keeps its length (same entries, re-padded with spaces).
fn sort_safetensors_metadata(buf: &mut [u8]) {
    let Some(n) = buf
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    else {
        return;
    };
    let Some(header) = buf.get(8..8 + n) else {
        return;
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(header) else {
        return;
    };
    let Some(Value::Object(meta)) = v.get_mut("__metadata__") else {
        return;
    };
    let mut entries: Vec<(String, Value)> = std::mem::take(meta).into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    meta.extend(entries);
    let Ok(text) = serde_json::to_string(&v) else {
        return;
    };
    if text.len() <= n {
        buf[8..8 + text.len()].copy_from_slice(text.as_bytes());
        buf[8 + text.len()..8 + n].fill(b' ');
    }
}

/// JSON with object keys sorted at every level: the form we hash, so that the
/// order of keys in a YAML file never changes a cache key.
pub fn canonical_json(v: &Value) -> String {
    let mut s = String::new();
    write_canonical(v, &mut s);
    s
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": "s"}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":"s","y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    /// An atomically written file gets the permissions `File::create` would give it
    /// (the umask's), not the temporary file's owner-only 0600.
    #[cfg(unix)]
    #[test]
    fn atomic_write_gives_a_new_files_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = d.path().join("plain.csv");
        std::fs::File::create(&plain).unwrap();
        let atomic = d.path().join("table.csv");
        atomic_write(&atomic, b"a,b\n").unwrap();
        assert_eq!(std::fs::read(&atomic).unwrap(), b"a,b\n");
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn atomic_write_temporary_is_recognised_and_removed_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("checkpoint.safetensors");
        let seen = std::cell::RefCell::new(vec![]);
        let err = atomic_write_with(&p, |_| {
            for e in std::fs::read_dir(d.path()).unwrap() {
                seen.borrow_mut()
                    .push(e.unwrap().file_name().into_string().unwrap());
            }
            anyhow::bail!("fill failed")
        });
        assert_eq!(err.unwrap_err().to_string(), "fill failed");
        let seen = seen.into_inner();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].starts_with(".checkpoint.safetensors.tmp-"));
        assert!(is_tmp_name(&seen[0]));
        assert!(!is_tmp_name("checkpoint.safetensors"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.txt");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(
            hash_file(&p).unwrap(),
            blake3::hash(b"two").to_hex().to_string()
        );
    }
}
