//! Verdicts: every group of runs against a baseline group, metric by metric.
//!
//! The caller (the `tabulate` stage) describes each run as a [`Run`]: the values of
//! the matrix axes that make its group, whether that group is the baseline, the value
//! of the axis runs pair over (the seed), its status and its numbers. [`compare`]
//! then, for every non-baseline group and every metric, tests the difference to the
//! baseline group of the same stratum (the group axes the baseline does not name:
//! with `baseline: {objective: X}` over `dataset x objective x seed`, each objective
//! meets X on the same dataset) and returns one row per (group, metric):
//!
//! - **paired t** when the two groups hold the same pair values (seeds), each once:
//!   differences group - baseline, pair by pair, over the pairs where both runs are
//!   usable; with at least 6 pairs also the Wilcoxon signed-rank test;
//! - **welch t** when they do not pair up (different seeds, a seed twice, or no
//!   `paired_over`), on the usable runs of each group; the `note` says why;
//! - **none** when fewer than 2 pairs (or 2 runs a side) are usable.
//!
//! A run is usable for a metric when its status is `ok` and its value is finite;
//! every other run of the two groups is counted in `dropped` and named in `note`
//! (diverged, failed, no value, partner missing). The t-test p-values of the whole
//! table are corrected together by Holm's method, and `verdict` is `better` or
//! `worse` (in the direction the metric names) when the corrected p is below 0.05,
//! `no evidence` otherwise. Knows nothing of stages or pipelines.

use super::stats::{holm, one_sample_t, wilcoxon_signed_rank, TTest, LEVEL};
use anyhow::Result;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Higher,
    Lower,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Higher => "higher",
            Direction::Lower => "lower",
        }
    }
}

/// Fewest paired differences the Wilcoxon signed-rank test is reported for: below 6
/// its smallest two-sided p-value (2 / 2^n) cannot reach 0.05.
pub const WILCOXON_MIN_PAIRS: usize = 6;

/// One run as the comparison sees it.
#[derive(Debug, Clone)]
pub struct Run {
    /// Who it is, for notes (the instance label).
    pub label: String,
    /// The values (short form) of the axes that make its group, in matrix order.
    pub group: Vec<(String, String)>,
    /// Whether its group is the baseline of its stratum.
    pub is_baseline: bool,
    /// Its value of the `paired_over` axis; `None` without one.
    pub pair: Option<String>,
    /// `ok`, `diverged` or `failed`.
    pub status: String,
    pub values: BTreeMap<String, f64>,
}

/// What to compare: the group axes the baseline names (the rest are strata) and the
/// metrics with their directions, in table order.
#[derive(Debug, Clone)]
pub struct Spec {
    pub baseline_axes: Vec<String>,
    pub metrics: Vec<(String, Direction)>,
}

/// A group's axis values and its runs.
type Group<'a> = (Vec<(String, String)>, Vec<&'a Run>);

/// One row of the comparison table before Holm's correction.
struct Row {
    group: Vec<(String, String)>,
    baseline: String,
    metric: String,
    direction: Direction,
    test: &'static str,
    n_pairs: Option<i64>,
    n: i64,
    n_baseline: i64,
    dropped: i64,
    mean: Option<f64>,
    baseline_mean: Option<f64>,
    t: Option<TTest>,
    p_wilcoxon: Option<f64>,
    note: String,
}

fn label(group: &[(String, String)]) -> String {
    group
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Why a run cannot be used for `metric`, if it cannot.
fn unusable(r: &Run, metric: &str) -> Option<String> {
    if r.status != "ok" {
        return Some(r.status.clone());
    }
    match r.values.get(metric) {
        Some(v) if v.is_finite() => None,
        Some(_) => Some("not finite".into()),
        None => Some("no value".into()),
    }
}

/// Pair values of a group when each run has one and none repeats.
fn pair_keys(runs: &[&Run]) -> Option<Vec<String>> {
    let mut keys = vec![];
    for r in runs {
        let k = r.pair.clone()?;
        if keys.contains(&k) {
            return None;
        }
        keys.push(k);
    }
    Some(keys)
}

fn compare_one(g: &[&Run], b: &[&Run], metric: &str, paired_over: Option<&str>) -> Row {
    let mut dropped = 0i64;
    let mut notes: Vec<String> = vec![];
    let value = |r: &Run| r.values[metric];
    let gk = pair_keys(g);
    let bk = pair_keys(b);
    let paired = match (&gk, &bk) {
        (Some(x), Some(y)) => {
            let mut x = x.clone();
            let mut y = y.clone();
            x.sort();
            y.sort();
            x == y
        }
        _ => false,
    };
    let mut row = Row {
        group: vec![],
        baseline: String::new(),
        metric: metric.to_string(),
        direction: Direction::Higher,
        test: "none",
        n_pairs: None,
        n: 0,
        n_baseline: 0,
        dropped: 0,
        mean: None,
        baseline_mean: None,
        t: None,
        p_wilcoxon: None,
        note: String::new(),
    };
    if paired {
        let axis = paired_over.unwrap_or("pair");
        let (mut xs, mut ys) = (vec![], vec![]);
        for rg in g {
            let rb = b.iter().find(|rb| rb.pair == rg.pair).expect("same keys");
            let key = rg.pair.as_deref().unwrap_or("");
            match (unusable(rg, metric), unusable(rb, metric)) {
                (None, None) => {
                    xs.push(value(rg));
                    ys.push(value(rb));
                }
                (why_g, why_b) => {
                    for (r, why) in [(rg, why_g), (rb, why_b)] {
                        dropped += 1;
                        match why {
                            Some(w) => notes.push(format!("{} {w}", r.label)),
                            None => notes.push(format!("{} unpaired ({axis}={key})", r.label)),
                        }
                    }
                }
            }
        }
        row.n_pairs = Some(xs.len() as i64);
        row.n = xs.len() as i64;
        row.n_baseline = ys.len() as i64;
        row.mean = mean(&xs);
        row.baseline_mean = mean(&ys);
        if xs.len() >= 2 {
            let d: Vec<f64> = xs.iter().zip(&ys).map(|(x, y)| x - y).collect();
            row.test = "paired t";
            row.t = one_sample_t(&d);
            if d.len() >= WILCOXON_MIN_PAIRS {
                row.p_wilcoxon = wilcoxon_signed_rank(&d).map(|w| w.p);
            }
        } else {
            notes.push(format!("{} usable pair(s): no test", xs.len()));
        }
    } else {
        notes.push(match paired_over {
            None => "no paired_over: unpaired".to_string(),
            Some(axis) => format!("{axis} values do not pair up: unpaired"),
        });
        let mut side = |runs: &[&Run]| {
            let mut xs = vec![];
            for r in runs {
                match unusable(r, metric) {
                    None => xs.push(value(r)),
                    Some(w) => {
                        dropped += 1;
                        notes.push(format!("{} {w}", r.label));
                    }
                }
            }
            xs
        };
        let xs = side(g);
        let ys = side(b);
        row.n = xs.len() as i64;
        row.n_baseline = ys.len() as i64;
        row.mean = mean(&xs);
        row.baseline_mean = mean(&ys);
        match super::stats::welch_t(&xs, &ys) {
            Some(t) => {
                row.test = "welch t";
                row.t = Some(t);
            }
            None => notes.push("fewer than 2 usable runs a side: no test".into()),
        }
    }
    row.dropped = dropped;
    row.note = notes.join("; ");
    row
}

/// The comparison table (columns in the module doc and the README). Rows: groups in
/// the order their first run appears, metrics in `spec` order within a group.
pub fn compare(runs: &[Run], spec: &Spec, paired_over: Option<&str>) -> Result<DataFrame> {
    // Groups in first-seen order.
    let mut groups: Vec<Group> = vec![];
    for r in runs {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, rs)) => rs.push(r),
            None => groups.push((r.group.clone(), vec![r])),
        }
    }
    let stratum = |g: &[(String, String)]| -> Vec<(String, String)> {
        g.iter()
            .filter(|(k, _)| !spec.baseline_axes.contains(k))
            .cloned()
            .collect()
    };
    let mut rows: Vec<Row> = vec![];
    for (g, rs) in &groups {
        if rs[0].is_baseline {
            continue;
        }
        let base = groups
            .iter()
            .find(|(bg, brs)| brs[0].is_baseline && stratum(bg) == stratum(g));
        for (metric, dir) in &spec.metrics {
            let mut row = match base {
                Some((bg, brs)) => {
                    let mut row = compare_one(rs, brs, metric, paired_over);
                    row.baseline = label(bg);
                    row
                }
                None => Row {
                    group: vec![],
                    baseline: String::new(),
                    metric: metric.clone(),
                    direction: *dir,
                    test: "none",
                    n_pairs: None,
                    n: 0,
                    n_baseline: 0,
                    dropped: 0,
                    mean: None,
                    baseline_mean: None,
                    t: None,
                    p_wilcoxon: None,
                    note: format!("no baseline run with {}", label(&stratum(g))),
                },
            };
            row.group = g.clone();
            row.direction = *dir;
            rows.push(row);
        }
    }
    let p_holm = holm(&rows.iter().map(|r| r.t.map(|t| t.p)).collect::<Vec<_>>());
    frame(&rows, &p_holm)
}

fn frame(rows: &[Row], p_holm: &[Option<f64>]) -> Result<DataFrame> {
    let alpha = 1.0 - LEVEL;
    let mut axes: Vec<String> = vec![];
    for r in rows {
        for (k, _) in &r.group {
            if !axes.contains(k) {
                axes.push(k.clone());
            }
        }
    }
    let mut cols: Vec<Column> = vec![];
    for a in &axes {
        let v: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.group.iter().find(|(k, _)| k == a).map(|(_, v)| v.clone()))
            .collect();
        cols.push(Column::new(a.as_str().into(), v));
    }
    let s = |name: &str, f: &dyn Fn(&Row) -> String| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<String>>())
    };
    let i = |name: &str, f: &dyn Fn(&Row) -> Option<i64>| {
        Column::new(
            name.into(),
            rows.iter().map(f).collect::<Vec<Option<i64>>>(),
        )
    };
    let x = |name: &str, f: &dyn Fn(&Row) -> Option<f64>| {
        Column::new(
            name.into(),
            rows.iter().map(f).collect::<Vec<Option<f64>>>(),
        )
    };
    cols.push(s("baseline", &|r| r.baseline.clone()));
    cols.push(s("metric", &|r| r.metric.clone()));
    cols.push(s("direction", &|r| r.direction.as_str().to_string()));
    cols.push(s("test", &|r| r.test.to_string()));
    cols.push(i("n_pairs", &|r| r.n_pairs));
    cols.push(i("n", &|r| Some(r.n)));
    cols.push(i("n_baseline", &|r| Some(r.n_baseline)));
    cols.push(i("dropped", &|r| Some(r.dropped)));
    cols.push(x("mean", &|r| r.mean));
    cols.push(x("baseline_mean", &|r| r.baseline_mean));
    cols.push(x("diff", &|r| r.t.map(|t| t.estimate)));
    cols.push(x("diff_ci95_lo", &|r| r.t.map(|t| t.lo)));
    cols.push(x("diff_ci95_hi", &|r| r.t.map(|t| t.hi)));
    cols.push(x("t", &|r| r.t.map(|t| t.t)));
    cols.push(x("df", &|r| r.t.map(|t| t.df)));
    cols.push(x("p", &|r| r.t.map(|t| t.p)));
    cols.push(x("p_wilcoxon", &|r| r.p_wilcoxon));
    cols.push(Column::new("p_holm".into(), p_holm.to_vec()));
    let verdicts: Vec<&str> = rows
        .iter()
        .zip(p_holm)
        .map(|(r, p)| match (r.t, p) {
            (Some(t), Some(p)) if *p < alpha && t.estimate != 0.0 => {
                let up = t.estimate > 0.0;
                if up == (r.direction == Direction::Higher) {
                    "better"
                } else {
                    "worse"
                }
            }
            _ => "no evidence",
        })
        .collect();
    cols.push(Column::new("verdict".into(), verdicts));
    cols.push(s("note", &|r| r.note.clone()));
    Ok(DataFrame::new(rows.len(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::table::to_json;

    fn run(obj: &str, seed: u32, status: &str, modes: f64, kl: f64) -> Run {
        Run {
            label: format!("evaluate[objective={obj},seed={seed}]"),
            group: vec![("objective".into(), obj.into())],
            is_baseline: obj == "base",
            pair: Some(seed.to_string()),
            status: status.into(),
            values: [("modes".to_string(), modes), ("kl".to_string(), kl)]
                .into_iter()
                .collect(),
        }
    }

    fn spec() -> Spec {
        Spec {
            baseline_axes: vec!["objective".into()],
            metrics: vec![
                ("modes".into(), Direction::Higher),
                ("kl".into(), Direction::Lower),
            ],
        }
    }

    // Student's sleep data as two "objectives" over ten seeds: drug 2 against drug 1
    // paired by patient gives t = 4.0621, p = 0.002833 and Wilcoxon p = 0.009091
    // (R, see stats.rs). Two metrics, both with p = 0.002833: Holm multiplies the
    // smaller by 2 and keeps the running maximum, so both read 0.005666.
    #[test]
    fn paired_rows_carry_tests_holm_and_verdicts() {
        let d1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
        let d2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
        let mut runs = vec![];
        for s in 0..10 {
            runs.push(run("base", s, "ok", d1[s as usize], d1[s as usize]));
            runs.push(run("drug2", s, "ok", d2[s as usize], d2[s as usize]));
        }
        let df = compare(&runs, &spec(), Some("seed")).unwrap();
        let j = to_json(&df);
        assert_eq!(df.height(), 2);
        let r = &j[0];
        assert_eq!(r["objective"], "drug2");
        assert_eq!(r["baseline"], "objective=base");
        assert_eq!(r["metric"], "modes");
        assert_eq!(r["test"], "paired t");
        assert_eq!(r["n_pairs"], 10);
        assert!((r["diff"].as_f64().unwrap() - 1.58).abs() < 1e-12);
        assert!((r["t"].as_f64().unwrap() - 4.0621).abs() < 5e-5);
        assert!((r["p"].as_f64().unwrap() - 0.002833).abs() < 5e-7);
        assert!((r["p_wilcoxon"].as_f64().unwrap() - 0.009091).abs() < 5e-7);
        assert!((r["p_holm"].as_f64().unwrap() - 2.0 * r["p"].as_f64().unwrap()).abs() < 1e-15);
        assert_eq!(r["verdict"], "better");
        // Same numbers, but lower is better for `kl`: worse.
        assert_eq!(j[1]["metric"], "kl");
        assert_eq!(j[1]["verdict"], "worse");
        assert_eq!(j[1]["p_holm"], j[0]["p_holm"]);
    }

    #[test]
    fn diverged_runs_are_counted_and_named() {
        let runs = vec![
            run("base", 0, "ok", 10.0, 1.0),
            run("base", 1, "ok", 12.0, 1.0),
            run("base", 2, "ok", 11.0, 1.0),
            run("a", 0, "ok", 13.0, 1.0),
            run("a", 1, "diverged", f64::NAN, 1.0),
            run("a", 2, "ok", 15.0, 2.0),
        ];
        let j = to_json(&compare(&runs, &spec(), Some("seed")).unwrap());
        let r = &j[0];
        assert_eq!(r["test"], "paired t");
        assert_eq!(r["n_pairs"], 2);
        // The diverged run and its partner, base seed 1.
        assert_eq!(r["dropped"], 2);
        let note = r["note"].as_str().unwrap();
        assert!(
            note.contains("evaluate[objective=a,seed=1] diverged"),
            "{note}"
        );
        assert!(
            note.contains("evaluate[objective=base,seed=1] unpaired (seed=1)"),
            "{note}"
        );
        // Differences 3 and 4: mean 3.5.
        assert_eq!(r["diff"], 3.5);
        assert_eq!(r["mean"], 14.0);
        assert_eq!(r["baseline_mean"], 10.5);
        assert!(r["p_wilcoxon"].is_null());
    }

    // Different seeds cannot pair: Welch on the sleep data as two groups gives
    // t = 1.8608 on 17.78 df, p = 0.0794 (R's t.test(extra ~ group, sleep), sign
    // flipped for drug 2 - drug 1). No evidence at 0.05.
    #[test]
    fn unpaired_groups_fall_back_to_welch() {
        let d1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
        let d2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
        let mut runs = vec![];
        for s in 0..10 {
            runs.push(run("base", s, "ok", d1[s as usize], 0.0));
            runs.push(run("drug2", s + 10, "ok", d2[s as usize], 0.0));
        }
        let sp = Spec {
            metrics: vec![("modes".into(), Direction::Higher)],
            ..spec()
        };
        let j = to_json(&compare(&runs, &sp, Some("seed")).unwrap());
        let r = &j[0];
        assert_eq!(r["test"], "welch t");
        assert!(r["n_pairs"].is_null());
        assert!((r["t"].as_f64().unwrap() - 1.8608).abs() < 5e-5);
        assert!((r["df"].as_f64().unwrap() - 17.776).abs() < 5e-4);
        assert!((r["p"].as_f64().unwrap() - 0.0794).abs() < 5e-5);
        assert_eq!(r["verdict"], "no evidence");
        assert!(r["note"]
            .as_str()
            .unwrap()
            .contains("seed values do not pair up"));
    }

    #[test]
    fn strata_meet_their_own_baseline() {
        let mk = |data: &str, obj: &str, seed: u32, v: f64| Run {
            label: format!("{data}/{obj}/{seed}"),
            group: vec![
                ("data".into(), data.into()),
                ("objective".into(), obj.into()),
            ],
            is_baseline: obj == "base",
            pair: Some(seed.to_string()),
            status: "ok".into(),
            values: [("modes".to_string(), v)].into_iter().collect(),
        };
        let runs = vec![
            mk("ring", "base", 0, 1.0),
            mk("ring", "base", 1, 2.0),
            mk("grid", "base", 0, 100.0),
            mk("grid", "base", 1, 200.0),
            mk("ring", "a", 0, 2.0),
            mk("ring", "a", 1, 4.0),
            mk("grid", "a", 0, 101.0),
            mk("grid", "a", 1, 203.0),
            mk("moons", "a", 0, 1.0),
        ];
        let sp = Spec {
            metrics: vec![("modes".into(), Direction::Higher)],
            ..spec()
        };
        let j = to_json(&compare(&runs, &sp, Some("seed")).unwrap());
        assert_eq!(j.as_array().unwrap().len(), 3);
        assert_eq!(j[0]["data"], "ring");
        assert_eq!(j[0]["baseline"], "data=ring,objective=base");
        assert_eq!(j[0]["diff"], 1.5);
        assert_eq!(j[1]["baseline"], "data=grid,objective=base");
        assert_eq!(j[1]["diff"], 2.0);
        assert_eq!(j[2]["test"], "none");
        assert_eq!(j[2]["note"], "no baseline run with data=moons");
        assert_eq!(j[2]["verdict"], "no evidence");
    }
}
