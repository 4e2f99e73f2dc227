//! The report's summary plots: for every gathered metric, its mean against each
//! matrix axis (one line per combination of the other axes, error bars over the
//! averaged axes).

use crate::results::plots::{LineChart, Series, XAxis};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One gathered instance: its matrix values (as short labels) and metrics.
#[derive(Debug, Clone)]
pub struct Obs {
    pub vars: Vec<(String, String)>,
    pub metrics: BTreeMap<String, f64>,
}

/// Mean and sample standard deviation (n - 1; NaN for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        f64::NAN
    };
    (mean, std)
}

/// For every metric and every matrix axis with two or more values (not averaged
/// over): the metric's mean against the axis's values, one line per combination of
/// the other axes, error bars (± std) over the `over` axes.
pub fn axis_charts(obs: &[Obs], over: &[String]) -> Vec<LineChart> {
    let mut axes: Vec<String> = vec![];
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for o in obs {
        for (k, v) in &o.vars {
            if over.contains(k) {
                continue;
            }
            if !axes.contains(k) {
                axes.push(k.clone());
            }
            let vs = values.entry(k.clone()).or_default();
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    let metrics: BTreeSet<&String> = obs.iter().flat_map(|o| o.metrics.keys()).collect();
    // Timings (`eval_s`, `samples_per_s`) after the results.
    let mut metrics: Vec<&String> = metrics.into_iter().collect();
    metrics.sort_by_key(|m| (m.ends_with("_s"), m.as_str()));
    let get = |o: &Obs, axis: &str| {
        o.vars
            .iter()
            .find(|(k, _)| k == axis)
            .map(|(_, v)| v.clone())
    };
    let mut out = vec![];
    for m in metrics {
        for axis in axes.iter().filter(|a| values[*a].len() >= 2) {
            let cats = &values[axis];
            let others: Vec<&String> = axes.iter().filter(|a| *a != axis).collect();
            // Lines: combinations of the other axes, in order of first appearance.
            let mut lines: Vec<Vec<Option<String>>> = vec![];
            let mut cells: HashMap<(Vec<Option<String>>, usize), Vec<f64>> = HashMap::new();
            for o in obs {
                let Some(v) = o.metrics.get(m).copied().filter(|v| v.is_finite()) else {
                    continue;
                };
                let Some(x) = get(o, axis).and_then(|c| cats.iter().position(|d| *d == c)) else {
                    continue;
                };
                let line: Vec<Option<String>> = others.iter().map(|a| get(o, a)).collect();
                if !lines.contains(&line) {
                    lines.push(line.clone());
                }
                cells.entry((line, x)).or_default().push(v);
            }
            if lines.is_empty() {
                continue;
            }
            let series = lines
                .iter()
                .map(|line| {
                    let mut points = vec![];
                    let mut err = vec![];
                    for x in 0..cats.len() {
                        if let Some(v) = cells.get(&(line.clone(), x)) {
                            let (mean, std) = mean_std(v);
                            points.push((x as f64, mean));
                            err.push(if std.is_finite() { std } else { 0.0 });
                        }
                    }
                    let name = others
                        .iter()
                        .zip(line)
                        .filter_map(|(a, v)| v.as_ref().map(|v| format!("{a}={v}")))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let name = if name.is_empty() {
                        if over.is_empty() {
                            m.clone()
                        } else {
                            format!("mean ± std over {}", over.join(", "))
                        }
                    } else {
                        name
                    };
                    Series { name, points, err }
                })
                .collect();
            out.push(LineChart {
                title: format!("{m} by {axis}"),
                x_label: axis.clone(),
                y_label: m.clone(),
                x: XAxis::Categories(cats.clone()),
                series,
                markers: true,
            });
        }
    }
    out
}
