//! Every way a pipeline can be invalid is rejected before anything runs, with exit
//! code 2 and one message naming the file, the line and column, and the offending name.

use std::path::Path;
use std::process::Command;

fn check(yaml: &str, expect_pos: &str, expect_msg: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["run", "bad.yaml"])
        .current_dir(dir.path())
        .env_remove("ABLATE_CACHE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    // an empty position: any (the message is what matters)
    let want = match expect_pos {
        "" => "error: bad.yaml:".to_string(),
        p => format!("error: bad.yaml:{p}: "),
    };
    assert!(err.starts_with(&want), "want prefix {want:?}, got: {err}");
    for m in expect_msg {
        assert!(err.contains(m), "want {m:?} in: {err}");
    }
    // Nothing ran: no cache was even created.
    assert!(
        !dir.path().join("results").exists(),
        "validation must come before any work"
    );
    assert!(!Path::new(&dir.path().join("results/cache")).exists());
}

const OK_DATA: &str = "  data:\n    kind: data\n    params: {source: gaussian_ring, count: 100}\n";

#[test]
fn malformed_yaml() {
    check(
        "name: x\nstages:\n  data: {kind: data\n",
        "4:1",
        &["malformed YAML"],
    );
}

#[test]
fn unknown_top_level_key() {
    check(
        &format!("name: x\nstagse: 1\nstages:\n{OK_DATA}"),
        "2:1",
        &["unknown top-level key `stagse`"],
    );
}

#[test]
fn unknown_stage_key() {
    check(
        &format!("name: x\nstages:\n{OK_DATA}    nedds: [data]\n"),
        "6:5",
        &["unknown key in stage `data`: `nedds`", "needs"],
    );
}

#[test]
fn unknown_kind() {
    check(
        "name: x\nstages:\n  d:\n    kind: dtaa\n",
        "4:11",
        &["unknown kind `dtaa`", "data", "tabulate"],
    );
}

#[test]
fn missing_need() {
    check(
        &format!(
            "name: x\nstages:\n{OK_DATA}  t:\n    kind: tabulate\n    needs: [data, evaluate]\n"
        ),
        "8:19",
        &["stage `t` needs `evaluate`"],
    );
}

#[test]
fn cycle_is_printed_as_a_path() {
    check(
        "name: x\nstages:\n  a: {kind: tabulate, needs: [c]}\n  b: {kind: tabulate, needs: [a]}\n  c: {kind: tabulate, needs: [b]}\n",
        "5:23",
        &["the stages form a cycle:", "c -> a -> b -> c"],
    );
}

#[test]
fn unresolved_reference() {
    check(
        &format!("name: x\nstages:\n{OK_DATA}  t:\n    kind: tabulate\n    needs: [data]\n    matrix: {{seed: [1]}}\n    params: {{rows: ['${{sed}}']}}\n"),
        "10:21",
        &["unresolved `${sed}`", "seed"],
    );
}

#[test]
fn empty_axis() {
    check(
        &format!("name: x\nstages:\n{OK_DATA}    matrix:\n      seed: []\n"),
        "7:13",
        &["matrix axis `seed` is empty"],
    );
}

#[test]
fn wrong_param_type() {
    check(
        "name: x\nstages:\n  data:\n    kind: data\n    params: {source: gaussian_ring, count: many}\n",
        "5:44",
        &["param `count`", "invalid type"],
    );
}

#[test]
fn unknown_param() {
    check(
        "name: x\nstages:\n  data:\n    kind: data\n    params:\n      source: gaussian_ring\n      count: 10\n      sead: 3\n",
        "8:7",
        &["param `sead`", "unknown field `sead`"],
    );
}

#[test]
fn param_out_of_range() {
    check(
        "name: x\nstages:\n  data:\n    kind: data\n    params:\n      source: image_folder\n      root: .\n      resolution: 2\n",
        "8:19",
        &["param `resolution`", "out of range"],
    );
}

#[test]
fn missing_data_file() {
    check(
        "name: x\nstages:\n  data:\n    kind: data\n    params: {source: mnist, root: datasets/nope}\n",
        "5:35",
        &["param `root`", "datasets/nope", "does not exist"],
    );
}

/// `{seed: ${seed}}` is not valid YAML (the `{` of `${` opens a nested mapping): the error
/// says how to write it.
#[test]
fn reference_in_flow_mapping_gets_a_quoting_hint() {
    check(
        "name: x\nstages:\n  data:\n    kind: data\n    matrix: {seed: [1, 2]}\n    params: {source: gaussian_ring, seed: ${seed}}\n",
        "",
        &["malformed YAML", "must be quoted", "'${seed}'"],
    );
}

const TRAIN_HEAD: &str = "  train:\n    kind: train\n    needs: [data]\n    params:\n      generator: {arch: dcgan, width: 8}\n      discriminator: {arch: dcgan, width: 8, batch_norm: BN}\n      loss: rpgan\n      optimizer: {lr: 1.0e-3}\n      batch: 8\n      steps: 2\n";

/// Penalties without a weight would train as if there were none.
#[test]
fn penalties_without_gamma_are_refused() {
    check(
        &format!(
            "name: x\nstages:\n{OK_DATA}{}      penalties: [r1, r2]\n",
            TRAIN_HEAD.replace(", batch_norm: BN", "")
        ),
        "",
        &["gamma", "do nothing"],
    );
}

/// Batch norm in D mixes the samples that R1 / R2 take one by one.
#[test]
fn batch_norm_in_d_with_penalties_is_refused() {
    check(
        &format!(
            "name: x\nstages:\n{OK_DATA}{}      penalties: [r1]\n      gamma: 0.1\n",
            TRAIN_HEAD.replace("BN", "true")
        ),
        "",
        &["discriminator.batch_norm", "penalties"],
    );
}

/// A range error of the train config points at the key it names: the key travels as
/// data from `TrainConfig::validate` (no message is parsed to find it).
#[test]
fn train_range_error_points_at_its_key() {
    check(
        &format!(
            "name: x\nstages:\n{OK_DATA}{}",
            TRAIN_HEAD
                .replace(", batch_norm: BN", "")
                .replace("{arch: dcgan, width: 8}", "{arch: dcgan, width: 0}")
        ),
        "10:39",
        &[
            "param `generator.width`",
            "generator.width must be in 1..=4096, got 0",
        ],
    );
}

/// `device` is read by one parser (`DeviceChoice`), which names the choices.
#[test]
fn unknown_device_is_refused_at_its_value() {
    check(
        &format!(
            "name: x\nstages:\n{OK_DATA}{}      device: gpu\n",
            TRAIN_HEAD.replace(", batch_norm: BN", "")
        ),
        "16:15",
        &["param `device`", "unknown variant `gpu`", "`cuda`"],
    );
}

#[test]
fn min_confidence_out_of_range() {
    check(
        &format!(
            "name: t\nstages:\n{OK_DATA}  sample: {{kind: sample, needs: [data]}}\n  \
             ev:\n    kind: evaluate\n    needs: [sample, data]\n    params: {{min_confidence: 1.5}}\n"
        ),
        "10:30",
        &["min_confidence", "[0, 1)"],
    );
}

/// `ablate plan FILE | head -1`: the closed pipe ends ablate quietly, without a panic.
#[cfg(unix)]
#[test]
fn closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<String> = (0..400).map(|s| s.to_string()).collect();
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "name: t\nstages:\n{OK_DATA}    matrix: {{seed: [{}]}}\n",
            seeds.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' plan p.yaml | head -1",
            env!("CARGO_BIN_EXE_ablate")
        ))
        .current_dir(dir.path())
        .env_remove("ABLATE_CACHE")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.starts_with("t: 400 instances"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Every shipped pipeline validates and plans (from a copy of the repository's
/// `pipelines/` and `datasets/`; MNIST's train split, which is not shipped, stands in
/// as empty files: planning checks that the files are there, not what they hold).
#[test]
fn shipped_pipelines_plan() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("pipelines")).unwrap();
    std::fs::create_dir_all(d.join("datasets/mnist")).unwrap();
    for e in std::fs::read_dir(repo.join("datasets/mnist")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("t10k") {
            std::fs::copy(&p, d.join("datasets/mnist").join(&name)).unwrap();
        }
    }
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        let p = d.join("datasets/mnist").join(f);
        if !p.exists() {
            std::fs::write(p, b"").unwrap();
        }
    }
    let mut n = 0;
    for e in std::fs::read_dir(repo.join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            std::fs::copy(&p, d.join("pipelines").join(&name)).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_ablate"))
                .args(["plan", &format!("pipelines/{name}")])
                .current_dir(d)
                .env_remove("ABLATE_CACHE")
                .env_remove("ABLATE_RESULTS")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let plan = String::from_utf8_lossy(&out.stdout);
            assert!(plan.contains(" to run)"), "{name}: {plan}");
            n += 1;
        }
    }
    assert!(n >= 5, "{n} pipelines");
}

/// `show` before the pipeline ran: nothing failed, so the usage code 2, and a message
/// that says what to do.
#[test]
fn show_without_tables_is_usage_not_failure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        format!("name: t\nstages:\n{OK_DATA}"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ablate"))
        .args(["show", "p.yaml"])
        .current_dir(dir.path())
        .env_remove("ABLATE_CACHE")
        .env_remove("ABLATE_RESULTS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has no tables yet") && err.contains("run it first"),
        "{err}"
    );
}
