use super::*;
use crate::engine::{typed_params, CheckCtx, ConfigError, PlanOptions, Stage};
use crate::engine::{Cache, RunCtx};
use serde_json::Value;

/// Reports its id; fails when its id is `fail_on`.
struct Toy;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ToyParams {
    id: i64,
    fail_on: i64,
}

impl Stage for Toy {
    fn kind(&self) -> &'static str {
        "toy"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test kind"
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<ToyParams>(params, |_| Ok(()))
    }
    fn run(&self, cx: &RunCtx) -> Result<super::super::stage::Outcome> {
        let p: ToyParams = cx.params()?;
        anyhow::ensure!(p.id != p.fail_on, "asked to fail");
        Ok(super::super::stage::Outcome::ok().metric("id", p.id as f64))
    }
}

#[test]
fn observer_hears_the_start_and_every_instance_once() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.yaml");
    // a: 4 instances, id 3 fails; b fans out with a (the failed one's b is skipped).
    std::fs::write(
        &f,
        "name: obs\nstages:\n  a:\n    kind: toy\n    matrix: {id: [0, 1, 2, 3]}\n    \
         params: {id: '${id}', fail_on: 3}\n  b: {kind: toy, needs: [a], params: {id: 9, fail_on: -1}}\n",
    )
    .unwrap();
    let mut reg = Registry::new();
    reg.register(Toy);
    let cache = Cache::new(d.path().join("cache"));
    let plan = Plan::new(&f, &reg, cache, d.path(), &PlanOptions::default()).unwrap();
    assert_eq!(plan.items.len(), 8);
    let opts = RunOptions {
        jobs: 2,
        keep_going: true,
        device: DeviceChoice::Cpu,
        results_root: d.path().join("results"),
        progress: false,
        threads: None,
        executor: Default::default(),
    };
    let mut heard: Vec<Option<usize>> = vec![];
    let s = run_observed(
        &plan,
        &reg,
        &opts,
        Arc::new(AtomicBool::new(false)),
        &mut |ev| {
            if let Some(i) = ev.finished {
                // The outcome is recorded before the observer hears of it.
                assert!(ev.outcomes[i].is_some());
                assert!(!ev.running.contains(&i));
            }
            if ev.finished.is_some() || heard.is_empty() {
                heard.push(ev.finished);
            }
        },
    )
    .unwrap();
    assert_eq!(heard[0], None, "the start comes first");
    let mut done: Vec<usize> = heard[1..].iter().map(|i| i.unwrap()).collect();
    done.sort_unstable();
    // Each of the 7 instances that ran (6) or failed (1) is heard once; the skipped one is not.
    let expected: Vec<usize> = (0..8)
        .filter(|&i| !matches!(s.outcomes[i], RunOutcome::Skipped))
        .collect();
    assert_eq!(expected.len(), 7, "{}", s.line());
    assert_eq!(done, expected);
    assert_eq!((s.ran, s.failed, s.skipped), (6, 1, 1), "{}", s.line());
}

/// An executor that computes nothing: it takes what the scheduler offers, at most
/// `cap` at a time, and ends instances in the order taken, failing `fail`.
struct Fake {
    cap: usize,
    fail: Option<usize>,
    flight: Vec<usize>,
    /// instances in the order taken
    taken: Vec<usize>,
    cancelled: bool,
}

impl Executor for Fake {
    fn start(&mut self, ready: &BTreeSet<usize>) -> Vec<usize> {
        let room = self.cap - self.flight.len();
        let t: Vec<usize> = ready.iter().copied().take(room).collect();
        self.flight.extend(&t);
        self.taken.extend(&t);
        t
    }
    fn wait(&mut self, _: Duration) -> Vec<(usize, RunOutcome)> {
        if self.flight.is_empty() {
            return vec![];
        }
        let i = self.flight.remove(0);
        let o = if Some(i) == self.fail {
            RunOutcome::Failed("fake failure".into())
        } else {
            RunOutcome::Ran(Status::Ok)
        };
        vec![(i, o)]
    }
    fn in_flight(&self) -> usize {
        self.flight.len()
    }
    fn running(&self) -> Vec<usize> {
        self.flight.clone()
    }
    fn cancel(&mut self) -> Vec<(usize, RunOutcome)> {
        self.cancelled = true;
        self.flight
            .drain(..)
            .map(|i| (i, RunOutcome::Interrupted))
            .collect()
    }
}

#[test]
fn the_schedule_is_the_same_whatever_computes_it() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.yaml");
    std::fs::write(
        &f,
        "name: fake\nstages:\n  a:\n    kind: toy\n    matrix: {id: [0, 1, 2]}\n    \
         params: {id: '${id}', fail_on: -1}\n  b: {kind: toy, needs: [a], params: {id: 9, fail_on: -1}}\n",
    )
    .unwrap();
    let mut reg = Registry::new();
    reg.register(Toy);
    let plan = Plan::new(
        &f,
        &reg,
        Cache::new(d.path().join("cache")),
        d.path(),
        &PlanOptions::default(),
    )
    .unwrap();
    let a: Vec<usize> = plan.ex.by_stage[0].clone();
    let b: Vec<usize> = plan.ex.by_stage[1].clone();
    let opts = RunOptions {
        jobs: 1,
        keep_going: true,
        device: DeviceChoice::Cpu,
        results_root: d.path().join("results"),
        progress: false,
        threads: None,
        executor: Default::default(),
    };
    let run_fake = |cap: usize, fail: Option<usize>, keep_going: bool, cancel: bool| {
        let mut ex = Fake {
            cap,
            fail,
            flight: vec![],
            taken: vec![],
            cancelled: false,
        };
        let opts = RunOptions {
            keep_going,
            ..opts.clone()
        };
        let s = schedule(
            &plan,
            &reg,
            &opts,
            &mut ex,
            Arc::new(AtomicBool::new(cancel)),
            &mut |_| {},
        )
        .unwrap();
        (s, ex)
    };
    // Each b instance is taken only after its own a ended (cap 1: strictly in turn).
    let (s, ex) = run_fake(1, None, true, false);
    assert_eq!((s.ran, s.failed), (6, 0), "{}", s.line());
    for (&ai, &bi) in a.iter().zip(&b) {
        let pos = |i| ex.taken.iter().position(|&x| x == i).unwrap();
        assert!(pos(ai) < pos(bi), "{:?}", ex.taken);
    }
    // A failure skips its own descendant; --keep-going finishes the rest.
    let (s, ex) = run_fake(3, Some(a[1]), true, false);
    assert_eq!((s.ran, s.failed, s.skipped), (4, 1, 1), "{}", s.line());
    assert_eq!(s.outcomes[b[1]], RunOutcome::Skipped);
    assert!(!ex.taken.contains(&b[1]));
    // Without it nothing new is taken after the failure (a[0] ended first, so its b
    // was taken before a[1] failed).
    let (s, ex) = run_fake(3, Some(a[1]), false, false);
    assert_eq!(ex.taken, [a[0], a[1], a[2], b[0]], "{}", s.line());
    assert_eq!(s.not_started, 1, "{}", s.line());
    // Ctrl-C before anything: the executor is told once, nothing is taken.
    let (s, ex) = run_fake(3, None, true, true);
    assert!(ex.cancelled && ex.taken.is_empty());
    assert_eq!(s.interrupted, 6, "{}", s.line());
}
