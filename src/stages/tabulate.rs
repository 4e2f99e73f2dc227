//! Stage `tabulate`: gathers every upstream instance into one table.
//!
//! One row per upstream instance: `pipeline`, `stage`, `instance`, `key`, every
//! matrix value as a column (nested keys dotted: `objective.loss`; lists joined
//! with `+`), every scalar the instance reported, the scalars its ancestors reported
//! (prefixed by their stage: `train.images_per_s`), `status` (the worst along the
//! chain), `wall_s`. With `aggregate_over: [seed]`, a second table `<stage>_agg`
//! has `n` and the mean, std and 95% Student t interval of every number per group of
//! the other matrix values. With `compare`, a third table `<stage>_cmp` holds paired
//! tests of every group against a baseline group ([`crate::results::compare`]):
//!
//! ```yaml
//! compare:
//!   baseline: {objective: rpgan-r1+r2}   # matrix values of the baseline group
//!   paired_over: seed                    # runs pair up by this axis (optional: unpaired)
//!   metrics: {modes: higher, reverse_kl: lower}
//! ```
//!
//! Groups are the values of the matrix axes other than `paired_over` and
//! `aggregate_over`. A baseline value is written as in the matrix or in the short
//! form of instance labels (a map's `name`, or its values joined by `-`; lists joined
//! by `+`). Axes, values and metrics are checked against the upstream instances at
//! plan time. A tabulate stage may need several stages (a study and its reference
//! rows, e.g. real data through the same evaluate): their rows share the table, `_agg`
//! groups by `stage` too, and `_cmp` leaves out rows that have none of the baseline's
//! axes. Published to `results/<pipeline>/<stage>{,_agg,_cmp}.{parquet,csv,md}`.

use crate::engine::{
    typed_params, CheckCtx, ConfigError, DeviceChoice, InputRef, Outcome, PublishCtx, Resources,
    RunCtx, Stage, Status, Upstream,
};
use crate::pipeline::short_value;
use crate::results::compare::{compare, Direction, Run, Spec};
use crate::results::table::{aggregate, frame_from_rows, read_parquet, write_table, Cell};
use anyhow::Result;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabulateParams {
    /// Matrix axes to order rows by (they come first in the table).
    #[serde(default)]
    pub rows: Vec<String>,
    /// Matrix axes to average over in the `<stage>_agg` table (e.g. `[seed]`).
    #[serde(default)]
    pub aggregate_over: Vec<String>,
    /// Test every group against a baseline group in `<stage>_cmp`; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareParams>,
}

/// The `compare` param of a tabulate stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    /// Matrix values of the baseline group, `{axis: value}`; group axes it leaves out
    /// are strata (each group meets the baseline with its own values of those).
    pub baseline: Map<String, Value>,
    /// The matrix axis runs pair over (`seed`); absent: every test is Welch's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired_over: Option<String>,
    /// Table columns to compare, each `higher` or `lower` (which way is better).
    pub metrics: Map<String, Value>,
}

impl CompareParams {
    /// Shape checks that need nothing upstream.
    fn check(&self) -> Result<(), ConfigError> {
        if self.baseline.is_empty() {
            return Err(ConfigError::new(
                "compare.baseline",
                "name the baseline group by at least one matrix value, e.g. {objective: rpgan-r1+r2}",
            ));
        }
        if self.metrics.is_empty() {
            return Err(ConfigError::new(
                "compare.metrics",
                "name at least one metric and its direction, e.g. {modes: higher}",
            ));
        }
        self.directions()?;
        if let Some(axis) = &self.paired_over {
            if self.baseline.contains_key(axis) {
                return Err(ConfigError::new(
                    format!("compare.baseline.{axis}"),
                    format!("`{axis}` is the paired_over axis: runs pair over it, so it cannot name the baseline"),
                )
                .on_key());
            }
        }
        Ok(())
    }

    /// The metrics with their directions, in the order written.
    fn directions(&self) -> Result<Vec<(String, Direction)>, ConfigError> {
        self.metrics
            .iter()
            .map(|(m, d)| {
                serde_json::from_value::<Direction>(d.clone())
                    .map(|d| (m.clone(), d))
                    .map_err(|_| {
                        ConfigError::new(
                            format!("compare.metrics.{m}"),
                            format!(
                                "direction of `{m}` is `{}`: write `higher` or `lower` (which way is better)",
                                short_value(d)
                            ),
                        )
                    })
            })
            .collect()
    }

    /// Whether an instance's matrix values name the baseline group.
    fn is_baseline(&self, vars: &Map<String, Value>) -> bool {
        self.baseline
            .iter()
            .all(|(axis, want)| vars.get(axis).is_some_and(|v| value_matches(v, want)))
    }
}

/// A matrix value against a value written in `baseline`: equal, or its short form.
fn value_matches(v: &Value, want: &Value) -> bool {
    v == want || want.as_str().is_some_and(|w| w == short_value(v))
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: `_agg` gained 95% intervals and `n`; `compare` writes `_cmp`.
/// 3: several upstream stages: `_agg` groups by stage, `_cmp` leaves out rows without the baseline axes.
pub const VERSION: u32 = 3;

pub struct Tabulate;

const FIXED: &[&str] = &["pipeline", "stage", "instance", "key"];

impl Stage for Tabulate {
    fn kind(&self) -> &'static str {
        "tabulate"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    /// On a cluster: reads manifests and writes tables.
    fn resources(&self, _params: &Value, _device: DeviceChoice) -> Resources {
        Resources::cluster(1, 2048, 30)
    }
    fn about(&self) -> &'static str {
        "gather every upstream instance into one table (+ aggregates over seeds, paired comparisons)"
    }
    fn gathers(&self) -> bool {
        true
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ConfigError> {
        typed_params::<TabulateParams>(params, |p| match &p.compare {
            Some(c) => c.check(),
            None => Ok(()),
        })
    }
    fn check_upstream(&self, params: &Value, up: &Upstream) -> Result<(), ConfigError> {
        let p: TabulateParams = serde_json::from_value(params.clone())
            .map_err(|e| ConfigError::new("", e.to_string()))?;
        match &p.compare {
            Some(c) => check_compare(c, &p.aggregate_over, up),
            None => Ok(()),
        }
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: TabulateParams = cx.params()?;
        let rows: Vec<_> = cx
            .inputs
            .iter()
            .map(|input| row(cx.pipeline, input, cx.ancestors_of(input)))
            .collect();
        let mut df = frame_from_rows(&rows)?;
        // Matrix columns: everything flattened from vars.
        let mut matrix_cols: Vec<String> = vec![];
        for input in &cx.inputs {
            for (k, v) in &input.vars {
                let mut cells = vec![];
                flatten(k, v, &mut cells);
                for (name, _) in cells {
                    if !matrix_cols.contains(&name) {
                        matrix_cols.push(name);
                    }
                }
            }
        }
        let is_axis = |col: &str, axes: &[String]| {
            axes.iter()
                .any(|a| col == a || col.starts_with(&format!("{a}.")))
        };
        if !p.rows.is_empty() {
            let mut first: Vec<String> = FIXED.iter().map(|s| s.to_string()).collect();
            let sort: Vec<String> = matrix_cols
                .iter()
                .filter(|c| is_axis(c, &p.rows))
                .cloned()
                .collect();
            first.extend(sort.iter().cloned());
            let rest: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|s| s.to_string())
                .filter(|c| !first.contains(c))
                .collect();
            first.extend(rest);
            df = df.select(first)?;
            if !sort.is_empty() {
                df = df.sort(
                    sort,
                    SortMultipleOptions::default().with_maintain_order(true),
                )?;
            }
        }
        write_table(&mut df, cx.dir, "table")?;
        let mut out = Outcome::ok().metric("rows", df.height() as f64);
        if !p.aggregate_over.is_empty() {
            // Rows of several stages (a study and its reference rows) never share a group.
            let several_stages = cx.inputs.iter().any(|i| i.stage != cx.inputs[0].stage);
            let group: Vec<String> = several_stages
                .then(|| "stage".to_string())
                .into_iter()
                .chain(
                    matrix_cols
                        .iter()
                        .filter(|c| !is_axis(c, &p.aggregate_over))
                        .cloned(),
                )
                .collect();
            let skip: Vec<String> = matrix_cols
                .iter()
                .filter(|c| is_axis(c, &p.aggregate_over))
                .cloned()
                .collect();
            let mut agg = aggregate(&df, &group, &skip)?;
            write_table(&mut agg, cx.dir, "agg")?;
            out = out.metric("groups", agg.height() as f64);
        }
        if let Some(c) = &p.compare {
            // Rows without any of the baseline's axes (reference rows of another stage,
            // such as real data) are context in the tables, not arms of the comparison.
            let runs: Vec<Run> = cx
                .inputs
                .iter()
                .zip(&rows)
                .filter(|(input, _)| c.baseline.keys().any(|a| input.vars.contains_key(a)))
                .map(|(input, row)| compare_run(c, &p.aggregate_over, input, row))
                .collect();
            let spec = Spec {
                baseline_axes: c.baseline.keys().cloned().collect(),
                metrics: c.directions().map_err(|e| anyhow::anyhow!(e.message))?,
            };
            let mut cmp = compare(&runs, &spec, c.paired_over.as_deref())?;
            write_table(&mut cmp, cx.dir, "cmp")?;
            out = out.metric("comparisons", cmp.height() as f64);
        }
        Ok(out)
    }

    fn publish(&self, cx: &PublishCtx) -> Result<()> {
        for (file, name) in [
            ("table", cx.stage.to_string()),
            ("agg", format!("{}_agg", cx.stage)),
            ("cmp", format!("{}_cmp", cx.stage)),
        ] {
            let src = cx.dir.join(format!("{file}.parquet"));
            if !src.exists() {
                continue;
            }
            let mut df = read_parquet(&src)?;
            // The cache entry may have been computed by another pipeline with the same inputs.
            let n = df.height();
            df.with_column(Column::new("pipeline".into(), vec![cx.pipeline; n]))?;
            if file != "table" {
                let mut cols = vec!["pipeline".to_string()];
                cols.extend(
                    df.get_column_names()
                        .iter()
                        .map(|s| s.to_string())
                        .filter(|c| c != "pipeline"),
                );
                df = df.select(cols)?;
            }
            write_table(&mut df, cx.results, &name)?;
        }
        Ok(())
    }
}

/// One upstream instance as the comparison sees it: its group (matrix values other
/// than `paired_over` and `aggregate_over`, short form), its pair value, status and
/// every number of its row.
fn compare_run(
    c: &CompareParams,
    over: &[String],
    input: &InputRef,
    row: &[(String, Cell)],
) -> Run {
    let group = input
        .vars
        .iter()
        .filter(|(k, _)| Some(*k) != c.paired_over.as_ref() && !over.contains(k))
        .map(|(k, v)| (k.clone(), short_value(v)))
        .collect();
    let mut values = std::collections::BTreeMap::new();
    let mut status = String::new();
    for (k, cell) in row {
        match cell {
            Cell::Float(x) => {
                values.insert(k.clone(), *x);
            }
            Cell::Int(i) => {
                values.insert(k.clone(), *i as f64);
            }
            Cell::Str(s) if k == "status" => status = s.clone(),
            _ => {}
        }
    }
    Run {
        label: input.label.clone(),
        group,
        is_baseline: c.is_baseline(&input.vars),
        pair: c
            .paired_over
            .as_ref()
            .and_then(|a| input.vars.get(a))
            .map(short_value),
        status,
        values,
    }
}

/// `compare` against what planning knows upstream: the axes and values it names
/// exist, and the metrics are columns the table will have (where the upstream kinds
/// can tell).
fn check_compare(c: &CompareParams, over: &[String], up: &Upstream) -> Result<(), ConfigError> {
    let mut axes: Vec<&str> = vec![];
    for i in &up.inputs {
        for k in i.vars.keys() {
            if !axes.contains(&k.as_str()) {
                axes.push(k);
            }
        }
    }
    let listed = |xs: &[&str]| {
        if xs.is_empty() {
            "none: the upstream stage has no matrix".to_string()
        } else {
            xs.join(", ")
        }
    };
    if let Some(a) = &c.paired_over {
        if !axes.contains(&a.as_str()) {
            return Err(ConfigError::new(
                "compare.paired_over",
                format!("no matrix axis `{a}` upstream (axes: {})", listed(&axes)),
            ));
        }
    }
    for (axis, want) in &c.baseline {
        let at = format!("compare.baseline.{axis}");
        if !axes.contains(&axis.as_str()) {
            return Err(ConfigError::new(
                at,
                format!("no matrix axis `{axis}` upstream (axes: {})", listed(&axes)),
            )
            .on_key());
        }
        if over.contains(axis) {
            return Err(ConfigError::new(
                at,
                format!("`{axis}` is averaged over (aggregate_over), so it cannot name the baseline group"),
            )
            .on_key());
        }
        if !up
            .inputs
            .iter()
            .any(|i| i.vars.get(axis).is_some_and(|v| value_matches(v, want)))
        {
            let mut values: Vec<String> = vec![];
            for v in up.inputs.iter().filter_map(|i| i.vars.get(axis)) {
                let s = short_value(v);
                if !values.contains(&s) {
                    values.push(s);
                }
            }
            return Err(ConfigError::new(
                at,
                format!(
                    "no upstream instance has {axis} = {} (values: {})",
                    short_value(want),
                    values.join(", ")
                ),
            ));
        }
    }
    if !up.inputs.iter().any(|i| c.is_baseline(&i.vars)) {
        return Err(ConfigError::new(
            "compare.baseline",
            "no upstream instance has all of these values together",
        ));
    }
    // Columns: the inputs' own metrics, `wall_s`, and each ancestor's prefixed.
    let mut known: Vec<String> = vec!["wall_s".into()];
    let mut own_unknown = false;
    for i in &up.inputs {
        match &i.reports {
            Some(r) => known.extend(r.iter().cloned()),
            None => own_unknown = true,
        }
    }
    let mut open_prefixes: Vec<String> = vec![];
    for a in &up.ancestors {
        known.push(format!("{}.wall_s", a.stage));
        match &a.reports {
            Some(r) => known.extend(r.iter().map(|m| format!("{}.{m}", a.stage))),
            None => open_prefixes.push(format!("{}.", a.stage)),
        }
    }
    for m in c.metrics.keys() {
        let prefixed = up
            .ancestors
            .iter()
            .any(|a| m.starts_with(&format!("{}.", a.stage)));
        let ok = known.contains(m)
            || open_prefixes.iter().any(|p| m.starts_with(p.as_str()))
            || (own_unknown && !prefixed);
        if !ok {
            let mut own: Vec<String> = vec![];
            for i in &up.inputs {
                for r in i.reports.iter().flatten() {
                    if !own.contains(r) {
                        own.push(r.clone());
                    }
                }
            }
            return Err(ConfigError::new(
                format!("compare.metrics.{m}"),
                format!(
                    "`{m}` is not a column of this table: the upstream instances report {} (and upstream stages' numbers prefixed by stage, e.g. `train.images_per_s`)",
                    own.join(", ")
                ),
            )
            .on_key());
        }
    }
    Ok(())
}

fn worse(a: Status, b: Status) -> Status {
    let rank = |s: Status| match s {
        Status::Ok => 0,
        Status::Diverged => 1,
        Status::Failed => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// One upstream instance's row: its matrix values and scalars, then those of its
/// `ancestors` (nearest first, as the engine lists them) prefixed by their stage.
fn row<'a>(
    pipeline: &str,
    input: &InputRef,
    ancestors: impl Iterator<Item = &'a InputRef>,
) -> Vec<(String, Cell)> {
    let mut r = vec![
        ("pipeline".to_string(), Cell::Str(pipeline.to_string())),
        ("stage".to_string(), Cell::Str(input.stage.clone())),
        ("instance".to_string(), Cell::Str(input.label.clone())),
        ("key".to_string(), Cell::Str(input.key[..12].to_string())),
    ];
    for (k, v) in &input.vars {
        flatten(k, v, &mut r);
    }
    for (k, v) in &input.manifest.metrics {
        r.push((k.clone(), Cell::Float(*v)));
    }
    let mut status = input.manifest.status;
    for a in ancestors {
        status = worse(status, a.manifest.status);
        for (m, v) in &a.manifest.metrics {
            r.push((format!("{}.{m}", a.stage), Cell::Float(*v)));
        }
        r.push((
            format!("{}.wall_s", a.stage),
            Cell::Float(a.manifest.timings.wall_s),
        ));
    }
    r.push(("status".to_string(), Cell::Str(status.as_str().to_string())));
    r.push((
        "wall_s".to_string(),
        Cell::Float(input.manifest.timings.wall_s),
    ));
    r.push((
        "device".to_string(),
        Cell::Str(input.manifest.device.clone()),
    ));
    r
}

/// A matrix value as cells: maps become dotted columns, lists one `a+b` string.
fn flatten(name: &str, v: &Value, out: &mut Vec<(String, Cell)>) {
    match v {
        Value::Object(m) => flatten_map(name, m, out),
        Value::Null => out.push((name.to_string(), Cell::Null)),
        Value::Bool(b) => out.push((name.to_string(), Cell::Bool(*b))),
        Value::Number(n) => out.push((
            name.to_string(),
            n.as_i64()
                .map(Cell::Int)
                .unwrap_or_else(|| Cell::Float(n.as_f64().unwrap_or(f64::NAN))),
        )),
        Value::String(s) => out.push((name.to_string(), Cell::Str(s.clone()))),
        Value::Array(_) => out.push((name.to_string(), Cell::Str(short_value(v)))),
    }
}

fn flatten_map(prefix: &str, m: &Map<String, Value>, out: &mut Vec<(String, Cell)>) {
    for (k, v) in m {
        flatten(&format!("{prefix}.{k}"), v, out);
    }
}
