//! Verdicts through the real binary: a ring study (RpGAN + R1 + R2 against NS + R1,
//! three seeds each) with a `compare` block, its `_cmp` and `_agg` tables read back
//! through `ablate query` and checked against the runs table by hand; and every
//! mistake in a `compare` block rejected at plan time with file:line:col.

mod common;

use common::ablate;
use serde_json::Value;
use std::path::Path;

fn query(dir: &Path, sql: &str) -> Vec<Value> {
    let (code, out, err) = ablate(dir, &["query", sql, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .unwrap()
        .clone()
}

const RING: &str = "name: ring-cmp
stages:
  data:
    kind: data
    params: {source: gaussian_ring, count: 2000, seed: 3}
  train:
    kind: train
    needs: [data]
    matrix:
      objective:
        - {loss: rpgan, penalties: [r1, r2]}
        - {loss: ns, penalties: [r1]}
      seed: [0, 1, 2]
    params:
      generator: {arch: mlp, width: 32}
      discriminator: {arch: mlp, width: 32}
      loss: ${objective.loss}
      penalties: ${objective.penalties}
      gamma: 0.05
      optimizer: {lr: 1.0e-3, betas: [0.5, 0.99]}
      batch: 64
      steps: 150
      ema: 0.99
      seed: ${seed}
  sample: {kind: sample, needs: [train], params: {count: 1000, seed: 1}}
  evaluate:
    kind: evaluate
    needs: [sample, data]
    params: {metrics: [modes, high_quality, reverse_kl, precision], real_count: 1000, mode_samples: 1000}
  table:
    kind: tabulate
    needs: [evaluate]
    params:
      rows: [objective, seed]
      aggregate_over: [seed]
      compare:
        baseline: {objective: rpgan-r1+r2}
        paired_over: seed
        metrics: {modes: higher, reverse_kl: lower, precision: higher}
";

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn sd(x: &[f64]) -> f64 {
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

// t_{0.975, df} (R: qt(0.975, 2), qt(0.975, 1)) for three and two pairs.
const T_975_2: f64 = 4.302653;
const T_975_1: f64 = 12.706205;

#[test]
fn ring_study_comparison_table_through_query() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), RING).unwrap();
    let (code, out, err) = ablate(d, &["run", "p.yaml"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The run prints the comparison with the other tables, verdict included.
    let printed = out
        .split("## ring-cmp/table_cmp")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    let header = printed.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        header.contains("objective") && header.contains("verdict"),
        "{out}"
    );

    let runs = query(
        d,
        "SELECT \"objective.loss\" AS loss, seed, status, modes, reverse_kl, precision \
         FROM \"table\" ORDER BY loss DESC, seed",
    );
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r["status"] == "ok"), "{runs:?}");
    // Values by seed; NaN (reverse KL over no high-quality sample) reads as null.
    let col = |loss: &str, m: &str| -> Vec<Option<f64>> {
        runs.iter()
            .filter(|r| r["loss"] == loss)
            .map(|r| r[m].as_f64())
            .collect()
    };

    let cmp = query(
        d,
        "SELECT objective, baseline, metric, direction, test, n_pairs, dropped, mean, \
         baseline_mean, diff, diff_ci95_lo, diff_ci95_hi, t, df, p, p_wilcoxon, p_holm, \
         verdict, note FROM table_cmp",
    );
    assert_eq!(cmp.len(), 3, "{cmp:?}");
    let mut ps = vec![];
    for (r, (metric, dir)) in cmp.iter().zip([
        ("modes", "higher"),
        ("reverse_kl", "lower"),
        ("precision", "higher"),
    ]) {
        eprintln!("{r}");
        assert_eq!(r["objective"], "ns-r1", "{r}");
        assert_eq!(r["baseline"], "objective=rpgan-r1+r2");
        assert_eq!(
            (r["metric"].as_str(), r["direction"].as_str()),
            (Some(metric), Some(dir))
        );
        // Paired by seed where both runs have a value; the others are dropped and named.
        let (g, b) = (col("ns", metric), col("rpgan", metric));
        let pairs: Vec<(f64, f64)> = g
            .iter()
            .zip(&b)
            .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
            .collect();
        assert_eq!(r["n_pairs"], pairs.len(), "{r}");
        assert_eq!(r["dropped"], 2 * (3 - pairs.len()), "{r}");
        for (seed, (x, y)) in g.iter().zip(&b).enumerate() {
            if x.is_none() || y.is_none() {
                let note = r["note"].as_str().unwrap();
                assert!(note.contains(&format!("seed={seed}]")), "{r}");
            }
        }
        // At most three pairs: no Wilcoxon (it needs 6).
        assert!(r["p_wilcoxon"].is_null());
        let (gs, bs): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let diffs: Vec<f64> = pairs.iter().map(|(x, y)| x - y).collect();
        let f = |k: &str| r[k].as_f64();
        if pairs.is_empty() {
            assert_eq!(r["test"], "none");
            ps.push(None);
            continue;
        }
        assert!((f("mean").unwrap() - mean(&gs)).abs() < 1e-9, "{r}");
        assert!(
            (f("baseline_mean").unwrap() - mean(&bs)).abs() < 1e-9,
            "{r}"
        );
        if pairs.len() < 2 {
            assert_eq!(r["test"], "none");
            ps.push(None);
            continue;
        }
        assert_eq!(r["test"], "paired t");
        assert!((f("diff").unwrap() - mean(&diffs)).abs() < 1e-9, "{r}");
        let se = sd(&diffs) / (diffs.len() as f64).sqrt();
        if se > 0.0 {
            assert!((f("t").unwrap() - mean(&diffs) / se).abs() < 1e-6, "{r}");
            assert_eq!(f("df"), Some(diffs.len() as f64 - 1.0));
            let q = if diffs.len() == 3 { T_975_2 } else { T_975_1 };
            let half = q * se;
            assert!(
                (f("diff_ci95_lo").unwrap() - (mean(&diffs) - half)).abs() < 1e-5,
                "{r}"
            );
            assert!(
                (f("diff_ci95_hi").unwrap() - (mean(&diffs) + half)).abs() < 1e-5,
                "{r}"
            );
            // The interval excludes 0 exactly when p < 0.05 (before correction).
            let excludes = f("diff_ci95_lo").unwrap() > 0.0 || f("diff_ci95_hi").unwrap() < 0.0;
            assert_eq!(excludes, f("p").unwrap() < 0.05, "{r}");
        }
        ps.push(f("p"));
    }
    // Holm over the table's three p-values, by hand.
    let mut order: Vec<usize> = (0..3).filter(|&i| ps[i].is_some()).collect();
    order.sort_by(|&i, &j| ps[i].unwrap().total_cmp(&ps[j].unwrap()));
    let mut running: f64 = 0.0;
    let m = order.len();
    for (k, &i) in order.iter().enumerate() {
        running = running.max(((m - k) as f64 * ps[i].unwrap()).min(1.0));
        let r = &cmp[i];
        assert!(
            (r["p_holm"].as_f64().unwrap() - running).abs() < 1e-12,
            "{r}"
        );
        let diff = r["diff"].as_f64().unwrap();
        let want = if running >= 0.05 {
            "no evidence"
        } else if (diff > 0.0) == (r["direction"] == "higher") {
            "better"
        } else {
            "worse"
        };
        assert_eq!(r["verdict"], want, "{r}");
    }

    // The aggregate table has the 95% interval of each mean, by hand.
    let agg = query(
        d,
        "SELECT \"objective.loss\" AS loss, n, modes_mean, modes_std, modes_ci95_lo, \
         modes_ci95_hi FROM table_agg ORDER BY loss",
    );
    assert_eq!(agg.len(), 2);
    for r in &agg {
        let x: Vec<f64> = col(r["loss"].as_str().unwrap(), "modes")
            .into_iter()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(r["n"], 3);
        let half = T_975_2 * sd(&x) / 3f64.sqrt();
        assert!(
            (r["modes_ci95_lo"].as_f64().unwrap() - (mean(&x) - half)).abs() < 1e-5,
            "{r}"
        );
        assert!(
            (r["modes_ci95_hi"].as_f64().unwrap() - (mean(&x) + half)).abs() < 1e-5,
            "{r}"
        );
    }

    // The files are there for people and other tools too.
    for ext in ["parquet", "csv", "md"] {
        assert!(d.join(format!("results/ring-cmp/table_cmp.{ext}")).exists());
    }
    let md = std::fs::read_to_string(d.join("results/ring-cmp/table_cmp.md")).unwrap();
    assert!(md.lines().next().unwrap().contains("| verdict |"), "{md}");
}

/// `ablate plan` on the ring study with `from` replaced by `to`: exit 2 and an
/// error at `pos` containing every one of `msgs`.
fn rejected(from: &str, to: &str, pos: &str, msgs: &[&str]) {
    assert!(RING.contains(from), "{from}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), RING.replace(from, to)).unwrap();
    let (code, _, err) = ablate(dir.path(), &["plan", "bad.yaml"]);
    assert_eq!(code, 2, "{err}");
    let want = format!("error: bad.yaml:{pos}: ");
    assert!(err.starts_with(&want), "want prefix {want:?}, got: {err}");
    for m in msgs {
        assert!(err.contains(m), "want {m:?} in: {err}");
    }
}

#[test]
fn compare_mistakes_are_rejected_at_plan_time() {
    // Unknown key inside compare.
    rejected(
        "        paired_over: seed\n",
        "        paired_over: seed\n        level: 0.9\n",
        "39:9",
        &["unknown field `level`", "compare.level"],
    );
    // A baseline matching no group: the value is pointed at, the values listed.
    rejected(
        "{objective: rpgan-r1+r2}",
        "{objective: rpgan-r2}",
        "37:31",
        &[
            "compare.baseline.objective",
            "no upstream instance has objective = rpgan-r2",
            "rpgan-r1+r2, ns-r1",
        ],
    );
    // A baseline axis that is not a matrix axis: the key is pointed at.
    rejected(
        "{objective: rpgan-r1+r2}",
        "{objectiv: rpgan-r1+r2}",
        "37:20",
        &["no matrix axis `objectiv`", "axes: objective, seed"],
    );
    // A metric the evaluate stage does not report.
    rejected(
        "precision: higher}",
        "fid_judge: higher}",
        "39:53",
        &[
            "`fid_judge` is not a column",
            "modes",
            "high_quality",
            "reverse_kl",
            "precision",
        ],
    );
    // A direction other than higher/lower.
    rejected(
        "modes: higher",
        "modes: more",
        "39:26",
        &[
            "compare.metrics.modes",
            "direction of `modes` is `more`",
            "`higher` or `lower`",
        ],
    );
    // paired_over naming no axis.
    rejected(
        "paired_over: seed",
        "paired_over: sed",
        "38:22",
        &["compare.paired_over", "no matrix axis `sed`"],
    );
}

#[test]
fn baseline_in_full_form_and_upstream_columns_plan() {
    // The baseline written as the matrix value itself, and an upstream stage's
    // column (`train.images_per_s`) as a metric: both accepted.
    let yaml = RING
        .replace(
            "{objective: rpgan-r1+r2}",
            "{objective: {loss: rpgan, penalties: [r1, r2]}}",
        )
        .replace(
            "precision: higher}",
            "precision: higher, train.images_per_s: higher}",
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let (code, out, err) = ablate(dir.path(), &["plan", "p.yaml"]);
    assert_eq!(code, 0, "{out}\n{err}");
}
