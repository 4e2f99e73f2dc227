//! The engine end to end with stage kinds registered through the library API
//! (a slow, countable kind), run in child processes so that they can be killed.
//!
//! The child is this test binary itself, re-run on the ignored `child_entry` test
//! with the command line in `ABLATE_CHILD_ARGS`.

use ablate::engine::{typed_params, CheckCtx, ConfigError, Outcome, RunCtx, Stage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowParams {
    id: i64,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fail: bool,
}

/// Sleeps `ms`, checking for Ctrl-C; records every start and finish in `$ABLATE_TEST_LOG`.
struct Slow;

fn log_line(line: &str) {
    use std::io::Write;
    let p = std::env::var("ABLATE_TEST_LOG").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

impl Stage for Slow {
    fn kind(&self) -> &'static str {
        "slow"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test kind"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<SlowParams>(params, |p| {
            if p.id < 0 {
                Err(ConfigError::new("id", "must be >= 0"))
            } else {
                Ok(())
            }
        })
    }
    fn run(&self, cx: &RunCtx) -> anyhow::Result<Outcome> {
        let p: SlowParams = cx.params()?;
        log_line(&format!("start {}", cx.label));
        // Sum of the inputs' values: proves inputs are read from their artifacts.
        let mut sum = p.id;
        for i in &cx.inputs {
            sum += std::fs::read_to_string(i.dir.join("value.txt"))?
                .trim()
                .parse::<i64>()?;
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(p.ms) {
            cx.check_cancel()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        if p.fail {
            anyhow::bail!("asked to fail");
        }
        std::fs::write(cx.dir.join("value.txt"), sum.to_string())?;
        log_line(&format!("done {}", cx.label));
        Ok(Outcome::ok().metric("value", sum as f64))
    }
}

fn registry() -> ablate::engine::Registry {
    let mut r = ablate::stages::registry();
    r.register(Slow);
    r
}

#[test]
#[ignore = "entry point for child processes of the other tests"]
fn child_entry() {
    let Ok(args) = std::env::var("ABLATE_CHILD_ARGS") else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    let code = ablate::cli::run_with(
        std::iter::once("ablate".to_string()).chain(args),
        registry(),
    );
    std::process::exit(code);
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ABLATE_CHILD_ARGS", serde_json::to_string(args).unwrap())
            .env("ABLATE_TEST_LOG", self.path().join("log.txt"))
            .env("RUST_LOG", "ablate=info")
            .env_remove("ABLATE_CACHE")
            .current_dir(self.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.spawn(args).wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            // The child is a libtest binary: drop its own chatter from stdout.
            String::from_utf8_lossy(&out.stdout)
                .replacen("\nrunning 1 test\n", "", 1)
                .replacen("running 1 test\n", "", 1)
                .replacen("test child_entry ... ", "", 1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("log.txt"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.path().join("log.txt"));
    }
}

const CHAIN: &str = "
name: chain
stages:
  a:
    kind: slow
    matrix: {x: [1, 2, 3]}
    params: {id: '${x}', ms: MS}
  b:
    kind: slow
    needs: [a]
    params: {id: 100, ms: MS}
  t:
    kind: tabulate
    needs: [b]
    params: {aggregate_over: [x]}
";

fn chain(ms: u64) -> String {
    CHAIN.replace("MS", &ms.to_string())
}

fn plan_json(env: &Env, file: &str) -> Vec<Value> {
    let (code, out, err) = env.run(&["plan", file, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn whole_values_keep_their_type_and_inputs_flow() {
    let env = Env::new();
    env.write("p.yaml", &chain(0));
    let (code, _, err) = env.run(&["run", "p.yaml", "-j", "2"]);
    assert_eq!(code, 0, "{err}");
    // b = 100 + a, a = x: the table holds 101, 102, 103 and a's values as `a.value`.
    let (code, out, err) = env.run(&[
        "query",
        "SELECT x, value, \"a.value\" FROM t ORDER BY x",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        j,
        serde_json::json!([
            {"x": 1, "value": 101.0, "a.value": 1.0},
            {"x": 2, "value": 102.0, "a.value": 2.0},
            {"x": 3, "value": 103.0, "a.value": 3.0}
        ])
    );
    // Aggregated over x: one group, mean 102, sample std 1, n 3.
    let (_, out, _) = env.run(&[
        "query",
        "SELECT n, value_mean, value_std FROM t_agg",
        "--format",
        "csv",
    ]);
    assert_eq!(out.lines().nth(1).unwrap(), "3,102.0,1.0");
}

#[test]
fn cached_rerun_and_one_changed_param() {
    let env = Env::new();
    env.write("p.yaml", &chain(0));
    let (code, _, err) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        env.log().iter().filter(|l| l.starts_with("done")).count(),
        6
    );
    env.clear_log();
    let plan = plan_json(&env, "p.yaml");
    assert!(plan.iter().all(|r| r["status"] == "cached"), "{plan:?}");
    let (code, _, err) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert!(env.log().is_empty(), "nothing recomputed: {:?}", env.log());
    assert!(err.contains("ran 0, cached 7"), "{err}");

    // Change one value of the x axis: only that a, its b and the table re-run.
    env.write("p.yaml", &chain(0).replace("[1, 2, 3]", "[1, 2, 4]"));
    let plan = plan_json(&env, "p.yaml");
    let run: Vec<(&str, &str)> = plan
        .iter()
        .filter(|r| r["status"] == "run")
        .map(|r| {
            (
                r["instance"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        run,
        vec![
            ("a[x=4]", "new"),
            ("b[x=4]", "new"),
            ("t", "an input changed: b")
        ]
    );
    // Change b's params: all three b re-run with the reason, no a does.
    env.write("p.yaml", &chain(0).replace("id: 100", "id: 200"));
    let plan = plan_json(&env, "p.yaml");
    let reasons: Vec<&str> = plan
        .iter()
        .filter(|r| r["status"] == "run")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        vec!["params changed: id"; 3]
            .into_iter()
            .chain(["an input changed: b"])
            .collect::<Vec<_>>()
    );
    let (code, _, _) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0);
    let started: Vec<String> = env
        .log()
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(started.len(), 3, "{started:?}");
    assert!(started.iter().all(|l| l.starts_with("start b[")));

    // --force a re-runs a and everything downstream.
    env.clear_log();
    let (code, _, err) = env.run(&["run", "p.yaml", "--force", "a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        env.log().iter().filter(|l| l.starts_with("done")).count(),
        6
    );
}

#[test]
fn failure_skips_descendants_and_keep_going_finishes_the_rest() {
    let env = Env::new();
    let text = chain(0)
        .replace(
            "params: {id: '${x}', ms: 0}",
            "params: {id: '${x}', ms: 0, fail: '${bad}'}",
        )
        .replace(
            "matrix: {x: [1, 2, 3]}",
            "matrix:\n      x: [1, 2, 3]\n      bad: [false]\n      include: [{x: 2, bad: true}]",
        );
    // include with an existing x and a new value for an axis: x=2 gets bad=true? No:
    // `bad` is an axis, so the entry is a new combination.
    env.write("p.yaml", &text);
    let (code, _, err) = env.run(&["run", "p.yaml", "-j", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed: a[x=2,bad=true]"), "{err}");
    assert!(err.contains("asked to fail"), "{err}");
    env.clear_log();
    let (code, _, err) = env.run(&["run", "p.yaml", "-j", "1", "--keep-going"]);
    assert_eq!(code, 1);
    // 3 good a's and their b's ran or were cached, the bad b and the table were skipped.
    assert!(err.contains("failed 1, skipped 2"), "{err}");
    let plan = plan_json(&env, "p.yaml");
    let failed: Vec<&str> = plan
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .unwrap()
                .starts_with("last attempt failed")
        })
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["a[x=2,bad=true]"]);
}

fn wait_for_log(env: &Env, pred: impl Fn(&[String]) -> bool) {
    let t = Instant::now();
    while !pred(&env.log()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out; log: {:?}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_nine_leaves_no_manifest_and_the_next_run_resumes() {
    let env = Env::new();
    // a[x=1] is quick; a[x=2] and a[x=3] are slow: kill while they run.
    let text = chain(0).replace("params: {id: '${x}', ms: 0}", "params: {id: '${x}', ms: '${ms}'}").replace(
        "matrix: {x: [1, 2, 3]}",
        "matrix:\n      x: [1, 2, 3]\n      include: [{x: 1, ms: 0}, {x: 2, ms: 30000}, {x: 3, ms: 30000}]",
    );
    env.write("p.yaml", &text);
    let mut child = env.spawn(&["run", "p.yaml", "-j", "3"]);
    wait_for_log(&env, |l| {
        l.iter().any(|x| x == "done b[x=1,ms=0]")
            && l.iter().filter(|x| x.starts_with("start a")).count() == 3
    });
    // the stage logs "done" before the engine publishes its manifest: kill only once
    // b[x=1] is in the cache (on a busy machine the two can be far apart)
    let t = Instant::now();
    while !plan_json(&env, "p.yaml")
        .iter()
        .any(|r| r["instance"] == "b[x=1,ms=0]" && r["status"] == "cached")
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "b[x=1] never published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let plan = plan_json(&env, "p.yaml");
    let status: Vec<(&str, &str)> = plan
        .iter()
        .map(|r| {
            (
                r["instance"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        status,
        vec![
            ("a[x=1,ms=0]", "cached"),
            ("a[x=2,ms=30000]", "run"),
            ("a[x=3,ms=30000]", "run"),
            ("b[x=1,ms=0]", "cached"),
            ("b[x=2,ms=30000]", "run"),
            ("b[x=3,ms=30000]", "run"),
            ("t", "run")
        ]
    );
    // Resume with short sleeps for the two killed ones: only they and their
    // descendants run.
    env.write("p.yaml", &text.replace("ms: 30000", "ms: 0"));
    env.clear_log();
    let (code, _, err) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ran 5, cached 2"), "{err}");
}

#[test]
fn ctrl_c_stops_cleanly_and_resumes() {
    let env = Env::new();
    env.write("p.yaml", &chain(30000));
    let child = env.spawn(&["run", "p.yaml", "-j", "3"]);
    wait_for_log(&env, |l| {
        l.iter().filter(|x| x.starts_with("start a")).count() == 3
    });
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted 7"), "{err}");
    // Nothing was recorded as done.
    let manifests = walk(&env.path().join("results/cache"))
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count();
    assert_eq!(manifests, 0);
    env.write("p.yaml", &chain(0));
    let (code, _, err) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn gc_removes_only_unreferenced_entries_and_reports_bytes() {
    let env = Env::new();
    env.write("p.yaml", &chain(0));
    assert_eq!(env.run(&["run", "p.yaml"]).0, 0);
    env.write(
        "q.yaml",
        &chain(0)
            .replace("name: chain", "name: other")
            .replace("[1, 2, 3]", "[1, 9]"),
    );
    assert_eq!(env.run(&["run", "q.yaml"]).0, 0);
    // q shares a[x=1] and b[x=1] with p; its own: a[x=9], b[x=9], t.
    let (code, out, err) = env.run(&["gc", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed 3 cache entries, freed "), "{out}");
    let plan = plan_json(&env, "p.yaml");
    assert!(plan.iter().all(|r| r["status"] == "cached"));
    let plan = plan_json(&env, "q.yaml");
    let run: Vec<&str> = plan
        .iter()
        .filter(|r| r["status"] == "run")
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(run, vec!["a[x=9]", "b[x=9]", "t"]);
}

/// An entry an older version of its stage wrote (simulated: its manifest says version
/// 0) is dead for every pipeline, and so is everything computed from it: `ablate run`
/// says so with their size, and `ablate gc --stale` removes exactly those, no pipeline
/// named.
#[test]
fn gc_stale_removes_older_versions_and_what_was_computed_from_them() {
    let env = Env::new();
    env.write("p.yaml", &chain(0));
    assert_eq!(env.run(&["run", "p.yaml"]).0, 0);
    let plan = plan_json(&env, "p.yaml");
    let a1 = plan.iter().find(|r| r["instance"] == "a[x=1]").unwrap();
    let manifest = env
        .path()
        .join("results/cache/slow")
        .join(a1["key"].as_str().unwrap())
        .join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    m["version"] = 0.into();
    std::fs::write(&manifest, m.to_string()).unwrap();

    // a run that computes something mentions them: a[x=1], b[x=1] and t (b's gather)
    let (code, _, err) = env.run(&["run", "p.yaml", "--force", "t"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("cache: 3 entries (") && err.contains("`ablate gc --stale` removes them"),
        "{err}"
    );
    let (code, out, err) = env.run(&["gc", "--stale", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("would remove 3 cache entries"), "{out}");
    let (code, out, err) = env.run(&["gc", "--stale"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed 3 cache entries, freed "), "{out}");
    let mut run: Vec<String> = plan_json(&env, "p.yaml")
        .iter()
        .filter(|r| r["status"] == "run")
        .map(|r| r["instance"].as_str().unwrap().to_string())
        .collect();
    run.sort();
    assert_eq!(run, vec!["a[x=1]", "b[x=1]", "t"]);
    // nothing stale is left, and a run that recomputes them says nothing more
    let (code, _, err) = env.run(&["run", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("ablate gc --stale"), "{err}");
    // `gc` needs pipelines or --stale, not both
    assert_eq!(env.run(&["gc"]).0, 2);
    assert_eq!(env.run(&["gc", "--stale", "p.yaml"]).0, 2);
}

#[test]
fn two_processes_never_compute_one_instance_twice() {
    let env = Env::new();
    env.write("p.yaml", &chain(300));
    let c1 = env.spawn(&["run", "p.yaml", "-j", "3"]);
    let c2 = env.spawn(&["run", "p.yaml", "-j", "3"]);
    let o1 = c1.wait_with_output().unwrap();
    let o2 = c2.wait_with_output().unwrap();
    assert!(o1.status.success() && o2.status.success());
    let done = env.log().iter().filter(|l| l.starts_with("done")).count();
    assert_eq!(done, 6, "{:?}", env.log());
}
