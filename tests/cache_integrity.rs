//! The cache serves only what its manifests vouch for (issue 12, item 6): a cached
//! output changed on disk is noticed (by size and time on every plan, by blake3 in
//! `ablate verify`) and recomputed; an unreadable manifest is a warned miss; writing a
//! default out explicitly keeps the key.

mod common;

use common::{ablate, repo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PIPELINE: &str = "name: integrity
stages:
  ring:
    kind: data
    params: {source: gaussian_ring, count: 200, seed: 4}
  fit:
    kind: train
    needs: [ring]
    params:
      generator: {arch: mlp, width: 8}
      discriminator: {arch: mlp, width: 8}
      loss: ns
      optimizer: {lr: 1.0e-3}
      batch: 16
      steps: 3
";

/// Instance label -> (key, status, reason) from `ablate plan --format json`.
fn plan(dir: &Path, file: &str) -> BTreeMap<String, (String, String, String)> {
    let (code, out, err) = ablate(dir, &["plan", file, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("instance"), (s("key"), s("status"), s("reason")))
        })
        .collect()
}

fn data_file(dir: &Path, key: &str) -> PathBuf {
    dir.join("results/cache/data")
        .join(key)
        .join("data.safetensors")
}

/// Overwrite 4 bytes in the middle of a file (the tensor payload), keeping its size.
fn overwrite_4_bytes(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() - 64;
    for x in &mut b[mid..mid + 4] {
        *x ^= 0x5a;
    }
    std::fs::write(path, &b).unwrap();
}

fn set_mtime(path: &Path, t: std::time::SystemTime) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn a_changed_output_is_recomputed_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("p.yaml"), PIPELINE).unwrap();
    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    let p = plan(d, "p.yaml");
    assert!(p.values().all(|(_, s, _)| s == "cached"), "{p:?}");
    let key = p["ring"].0.clone();
    let file = data_file(d, &key);
    let original = std::fs::read(&file).unwrap();
    let (code, out, _) = ablate(d, &["verify", "p.yaml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified 2 instances"), "{out}");

    // 1. Same size, later modification time: every plan sees it.
    overwrite_4_bytes(&file);
    set_mtime(
        &file,
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let p = plan(d, "p.yaml");
    assert_eq!(p["ring"].1, "run", "{p:?}");
    assert_eq!(
        p["ring"].2,
        "output data.safetensors changed on disk (modified after its manifest was written)"
    );
    // The train instance's key does not change: its input is recomputed to the same bytes.
    assert_eq!(p["fit"].1, "cached", "{p:?}");
    let (_, text, _) = ablate(d, &["plan", "p.yaml"]);
    assert!(
        text.contains("output data.safetensors changed on disk"),
        "{text}"
    );
    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ran 1, cached 1"), "{err}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        original,
        "recomputed, not served"
    );
    assert!(plan(d, "p.yaml").values().all(|(_, s, _)| s == "cached"));

    // 2. Same size, same modification time: only `verify` (blake3) can see it.
    let t = std::fs::metadata(&file).unwrap().modified().unwrap();
    overwrite_4_bytes(&file);
    set_mtime(&file, t);
    assert_eq!(plan(d, "p.yaml")["ring"].1, "cached");
    let (code, out, _) = ablate(d, &["verify", "p.yaml"]);
    assert_eq!(code, 1, "{out}");
    let short = &key[..12];
    assert!(
        out.contains(&format!(
            "changed: data/{short} (ring): data.safetensors: blake3 differs"
        )),
        "{out}"
    );
    assert!(out.contains("1 damaged"), "{out}");
    // The whole cache, without a pipeline: the same finding.
    let (code, out_all, _) = ablate(d, &["verify"]);
    assert_eq!(code, 1);
    assert!(
        out_all.contains(&format!("changed: data/{short}")),
        "{out_all}"
    );
    // --drop removes the damaged instance; the next run recomputes it.
    let (code, out, _) = ablate(d, &["verify", "--drop", "p.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("removed: data/{short}")), "{out}");
    assert!(!file.exists());
    assert_eq!(plan(d, "p.yaml")["ring"].1, "run");
    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), original);
    let (code, out, _) = ablate(d, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("all match their manifests"), "{out}");

    // 3. A missing output.
    std::fs::remove_file(d.join("results/cache/data").join(&key).join("preview.png")).unwrap();
    assert_eq!(plan(d, "p.yaml")["ring"].2, "output preview.png missing");
}

#[test]
fn an_unreadable_manifest_is_a_warned_miss() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("p.yaml"), PIPELINE).unwrap();
    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    let key = plan(d, "p.yaml")["ring"].0.clone();
    let manifest = d
        .join("results/cache/data")
        .join(&key)
        .join("manifest.json");
    std::fs::write(&manifest, "{\"kind\": \"data\", trunc").unwrap();

    let (code, out, err) = ablate(d, &["plan", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WARN"), "{err}");
    assert!(
        err.contains(&format!(
            "unreadable manifest {}",
            Path::new("results/cache/data")
                .join(&key)
                .join("manifest.json")
                .display()
        )),
        "{err}"
    );
    assert!(
        err.contains("key must be a string"),
        "the parse error: {err}"
    );
    let line = out.lines().find(|l| l.contains("ring")).unwrap();
    assert!(
        line.contains(" run ") && line.contains("manifest unreadable (key must be a string"),
        "{out}"
    );

    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WARN"), "{err}");
    assert!(err.contains("ran 1, cached 1"), "{err}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["key"], key.as_str());
    // The new manifest records each output's time beside its size and hash.
    assert!(
        m["outputs"]["data.safetensors"]["mtime_ns"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// For every kind, params with every default written out plan to the keys of the
/// minimal params; a non-default value does not.
#[test]
fn writing_defaults_out_keeps_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mnist = repo().join("datasets/mnist");
    let mnist = mnist.to_str().unwrap();
    let minimal = format!(
        "name: defaults
stages:
  ring:
    kind: data
    params: {{source: gaussian_ring, count: 100}}
  grid:
    kind: data
    params: {{source: gaussian_grid, count: 100}}
  digits:
    kind: data
    params: {{source: mnist, root: {mnist}}}
  judge:
    kind: judge
    needs: [digits]
  fit:
    kind: train
    needs: [ring]
    params:
      generator: {{arch: mlp, width: 8}}
      discriminator: {{arch: mlp, width: 8}}
      loss: ns
      optimizer: {{lr: 1.0e-3}}
      batch: 16
      steps: 3
  fit_img:
    kind: train
    needs: [digits]
    params:
      generator: {{arch: r3gan, variant: E, width: 8}}
      discriminator: {{arch: dcgan, width: 8}}
      loss: rpgan
      optimizer: {{lr: 1.0e-3}}
      batch: 16
      steps: 3
  draw:
    kind: sample
    needs: [fit]
  score:
    kind: evaluate
    needs: [draw, ring]
  score_some:
    kind: evaluate
    needs: [draw, ring]
    params: {{metrics: [modes, fid_judge], real_count: 500}}
  table:
    kind: tabulate
    needs: [score]
"
    );
    let explicit = format!(
        "name: defaults
stages:
  ring:
    kind: data
    params: {{source: gaussian_ring, count: 100, seed: 0, radius: 2.0, std: 0.02, split: t10k, recursive: false}}
  grid:
    kind: data
    params: {{source: gaussian_grid, count: 100, std: 0.05}}
  digits:
    kind: data
    params: {{source: mnist, root: {mnist}/./, resolution: 28, split: t10k, seed: 0}}
  judge:
    kind: judge
    needs: [digits]
    params: {{epochs: 4, batch: 32, lr: 1.5e-3, width: 8, features: 128, seed: 0, holdout: 0.2}}
  fit:
    kind: train
    needs: [ring]
    params:
      generator: {{arch: mlp, width: 8, depth: 3, max_width: 64, spectral_norm: false}}
      discriminator: {{arch: mlp, width: 8, depth: 3, max_width: 64, spectral_norm: false}}
      loss: ns
      penalties: []
      gamma: 0.0
      lazy_interval: 1
      optimizer: {{lr: 1.0e-3, betas: [0.0, 0.99], eps: 1.0e-8}}
      optimizer_g: {{lr: 1.0e-3}}
      optimizer_d: {{lr: 1.0e-3, betas: [0.0, 0.99]}}
      d_steps: 1
      batch: 16
      steps: 3
      schedules: {{}}
      conditional: false
      seed: 0
      checkpoint_every: 0
      log_every: 0
      hvp_delta: 1.0e-3
  fit_img:
    kind: train
    needs: [digits]
    params:
      generator: {{arch: r3gan, variant: E, width: 8, depth: 2, expansion: 2.0, group_size: 16}}
      discriminator: {{arch: dcgan, width: 8, batch_norm: false}}
      loss: rpgan
      optimizer: {{lr: 1.0e-3}}
      batch: 16
      steps: 3
  draw:
    kind: sample
    needs: [fit]
    params: {{count: 10000, seed: 0, ema: true}}
  score:
    kind: evaluate
    needs: [draw, ring]
    params: {{real_count: 10000, fake_count: 10000, mode_samples: 26000, seed: 0, save_features: false}}
  score_some:
    kind: evaluate
    needs: [draw, ring]
    params: {{metrics: [fid_judge, modes], real_count: 500, fake_count: 500}}
  table:
    kind: tabulate
    needs: [score]
    params: {{rows: [], aggregate_over: []}}
"
    );
    std::fs::write(d.join("minimal.yaml"), &minimal).unwrap();
    std::fs::write(d.join("explicit.yaml"), &explicit).unwrap();
    let a = plan(d, "minimal.yaml");
    let b = plan(d, "explicit.yaml");
    assert_eq!(a.len(), 10);
    for (label, (key, _, _)) in &a {
        assert_eq!(
            &b[label].0, key,
            "{label}: explicit defaults changed the key"
        );
    }
    // Control: a value that is not the default does change the key (and those below it).
    for (from, to, changed) in [
        ("radius: 2.0", "radius: 2.5", "ring"),
        (
            "depth: 2, expansion: 2.0",
            "depth: 2, expansion: 0.5",
            "fit_img",
        ),
        ("batch_norm: false", "batch_norm: true", "fit_img"),
        ("fake_count: 500", "fake_count: 400", "score_some"),
        ("lazy_interval: 1", "lazy_interval: 2", "fit"),
    ] {
        assert!(explicit.contains(from), "{from}");
        std::fs::write(d.join("other.yaml"), explicit.replacen(from, to, 1)).unwrap();
        let c = plan(d, "other.yaml");
        assert_ne!(c[changed].0, a[changed].0, "{to} kept the key of {changed}");
    }
}
