//! Stage `tabulate`: gathers every upstream instance into one table.
//!
//! One row per upstream instance: `pipeline`, `stage`, `instance`, `key`, every
//! matrix value as a column (nested keys dotted: `objective.loss`; lists joined
//! with `+`), every scalar the instance reported, the scalars its ancestors reported
//! (prefixed by their stage: `train.images_per_s`), `status` (the worst along the
//! chain), `wall_s`. With `aggregate_over: [seed]`, a second table `<stage>_agg`
//! has the mean, std and count of every number per group of the other matrix values.
//! Published to `results/<pipeline>/<stage>{,_agg}.{parquet,csv,md}`.

use crate::engine::{
    typed_params, CheckCtx, InputRef, Outcome, ParamError, PublishCtx, RunCtx, Stage, Status,
};
use crate::pipeline::short_value;
use crate::results::table::{aggregate, frame_from_rows, read_parquet, write_table, Cell};
use anyhow::Result;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabulateParams {
    /// Matrix axes to order rows by (they come first in the table).
    #[serde(default)]
    pub rows: Vec<String>,
    /// Matrix axes to average over in the `<stage>_agg` table (e.g. `[seed]`).
    #[serde(default)]
    pub aggregate_over: Vec<String>,
}

/// The kind's version, part of every key: bump it with every change to the numbers
/// this kind writes, and re-bless its golden file (`ABLATE_BLESS=1 cargo test --test golden`).
/// 1: first version.
/// 2: table outputs changed (issue 12).
pub const VERSION: u32 = 2;

pub struct Tabulate;

const FIXED: &[&str] = &["pipeline", "stage", "instance", "key"];

impl Stage for Tabulate {
    fn kind(&self) -> &'static str {
        "tabulate"
    }
    fn version(&self) -> u32 {
        VERSION
    }
    fn about(&self) -> &'static str {
        "gather every upstream instance into one table (+ aggregates over seeds)"
    }
    fn gathers(&self) -> bool {
        true
    }
    fn check(&self, params: &Value, _cx: &CheckCtx) -> Result<Value, ParamError> {
        typed_params::<TabulateParams>(params, |_| Ok(()))
    }

    fn run(&self, cx: &RunCtx) -> Result<Outcome> {
        let p: TabulateParams = cx.params()?;
        let by_key: HashMap<&str, &InputRef> =
            cx.ancestors.iter().map(|a| (a.key.as_str(), a)).collect();
        let mut rows = vec![];
        for input in &cx.inputs {
            rows.push(row(cx.pipeline, input, &by_key));
        }
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
            let group: Vec<String> = matrix_cols
                .iter()
                .filter(|c| !is_axis(c, &p.aggregate_over))
                .cloned()
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
        Ok(out)
    }

    fn publish(&self, cx: &PublishCtx) -> Result<()> {
        for (file, name) in [
            ("table", cx.stage.to_string()),
            ("agg", format!("{}_agg", cx.stage)),
        ] {
            let src = cx.dir.join(format!("{file}.parquet"));
            if !src.exists() {
                continue;
            }
            let mut df = read_parquet(&src)?;
            // The cache entry may have been computed by another pipeline with the same inputs.
            let n = df.height();
            df.with_column(Column::new("pipeline".into(), vec![cx.pipeline; n]))?;
            if file == "agg" {
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

fn row(pipeline: &str, input: &InputRef, by_key: &HashMap<&str, &InputRef>) -> Vec<(String, Cell)> {
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
    // Ancestors, nearest first, each once.
    let mut seen = std::collections::HashSet::new();
    let mut queue: std::collections::VecDeque<&str> = input
        .manifest
        .inputs
        .iter()
        .map(|i| i.key.as_str())
        .collect();
    while let Some(k) = queue.pop_front() {
        if !seen.insert(k) {
            continue;
        }
        let Some(a) = by_key.get(k) else { continue };
        status = worse(status, a.manifest.status);
        for (m, v) in &a.manifest.metrics {
            r.push((format!("{}.{m}", a.stage), Cell::Float(*v)));
        }
        r.push((
            format!("{}.wall_s", a.stage),
            Cell::Float(a.manifest.timings.wall_s),
        ));
        queue.extend(a.manifest.inputs.iter().map(|i| i.key.as_str()));
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
