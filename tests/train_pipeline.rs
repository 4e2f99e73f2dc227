//! Training through the real binary: determinism, kill -9 and resume against an
//! uninterrupted run, divergence as a result, and samples in the documented format.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ablate(dir: &Path, cache: &str, args: &[&str]) -> (i32, String, String) {
    let env = [
        ("ABLATE_CACHE", dir.join(cache)),
        ("ABLATE_RESULTS", dir.join(format!("{cache}-results"))),
    ];
    common::ablate_with(dir, &env, args)
}

fn pipeline(steps: u64, lr: f64) -> String {
    format!(
        "name: tiny-train
stages:
  ring:
    kind: data
    params: {{source: gaussian_ring, count: 2000, seed: 1}}
  train:
    kind: train
    needs: [ring]
    params:
      generator: {{arch: mlp, width: 32}}
      discriminator: {{arch: mlp, width: 32}}
      loss: rpgan
      penalties: [r1, r2]
      gamma: 0.05
      optimizer: {{lr: {lr}, betas: [0.5, 0.99]}}
      batch: 32
      steps: {steps}
      ema: 0.99
      seed: 5
      checkpoint_every: 20
      log_every: 1
  sample:
    kind: sample
    needs: [train]
    params: {{count: 100, seed: 3}}
  table:
    kind: tabulate
    needs: [sample]
"
    )
}

/// The only train instance's directory in a cache.
fn train_dir(cache: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("train"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    dirs[0].clone()
}

/// The log without its timing column.
fn losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.data().to_vec()))
        .collect();
    out.sort();
    out
}

#[test]
fn same_params_give_identical_losses_and_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), pipeline(60, 1e-3)).unwrap();
    for cache in ["c1", "c2"] {
        let (code, _, err) = ablate(d, cache, &["run", "p.yaml", "-q"]);
        assert_eq!(code, 0, "{err}");
    }
    let (a, b) = (train_dir(&d.join("c1")), train_dir(&d.join("c2")));
    assert_eq!(a.file_name(), b.file_name(), "same key");
    let la = losses(&a);
    assert_eq!(la.len(), 61, "header + one row per step");
    assert_eq!(la, losses(&b));
    assert_eq!(
        tensors(&a.join("checkpoint.safetensors")),
        tensors(&b.join("checkpoint.safetensors"))
    );
    // Checkpoint tensor names say what they are, and the samples follow the data format.
    let names: Vec<String> = tensors(&a.join("checkpoint.safetensors"))
        .into_iter()
        .map(|t| t.0)
        .collect();
    for want in [
        "G.layers.0.weight",
        "G_ema.layers.0.weight",
        "D.out.weight",
        "opt_G.m.layers.0.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let s = std::fs::read_dir(d.join("c1/sample"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let bytes = std::fs::read(s.join("samples.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("points").unwrap().shape(), &[100, 2]);
    // The table carries the train instance's numbers.
    let (code, out, err) = ablate(
        d,
        "c1",
        &[
            "query",
            "SELECT status, \"train.steps\" AS steps, \"train.params_g\" AS pg FROM \"table\"",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j[0]["status"], "ok");
    assert_eq!(j[0]["steps"], 60.0);
    // mlp G: 16->32->32->32->2 with biases.
    assert_eq!(
        j[0]["pg"],
        (16 * 32 + 32 + 2 * (32 * 32 + 32) + 32 * 2 + 2) as f64
    );
}

#[test]
fn killed_training_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), pipeline(400, 1e-3)).unwrap();
    let (code, _, err) = ablate(d, "whole", &["run", "p.yaml", "-q"]);
    assert_eq!(code, 0, "{err}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "p.yaml", "-q"])
        .current_dir(d)
        .env("ABLATE_CACHE", d.join("killed"))
        .env("ABLATE_RESULTS", d.join("killed-results"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint, then kill -9.
    let t = Instant::now();
    let ckpt = loop {
        let found = std::fs::read_dir(d.join("killed/train"))
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .map(|e| e.path().join("checkpoint.safetensors"))
                    .find(|p| p.exists())
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let tdir = ckpt.parent().unwrap().to_path_buf();
    assert!(
        !tdir.join("manifest.json").exists(),
        "killed before the end: no manifest"
    );

    let (code, _, err) = ablate(d, "killed", &["run", "p.yaml", "-v"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming at step"), "{err}");
    let whole = train_dir(&d.join("whole"));
    let (a, b) = (losses(&whole), losses(&tdir));
    let differ: Vec<usize> = (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} log lines differ: {:?}",
        differ.len(),
        a.len(),
        differ
            .iter()
            .take(3)
            .map(|&i| (a.get(i), b.get(i)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        tensors(&whole.join("checkpoint.safetensors")),
        tensors(&tdir.join("checkpoint.safetensors"))
    );
}

#[test]
fn divergence_is_a_result_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("p.yaml"),
        pipeline(200, 1.0)
            .replace("betas: [0.5, 0.99]", "betas: [0.0, 0.0]")
            .replace("gamma: 0.05", "gamma: 1.0e30"),
    )
    .unwrap();
    let (code, _, err) = ablate(d, "c", &["run", "p.yaml", "-q"]);
    assert_eq!(code, 0, "a diverged run still completes the sweep: {err}");
    let (_, out, err) = ablate(
        d,
        "c",
        &[
            "query",
            "SELECT status, \"train.diverged_at_step\" AS at FROM \"table\"",
            "--format",
            "json",
        ],
    );
    assert!(!out.is_empty(), "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j[0]["status"], "diverged");
    let at = j[0]["at"].as_f64().unwrap();
    assert!((1.0..200.0).contains(&at), "{at}");
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(train_dir(&d.join("c")).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["status"], "diverged");
}
