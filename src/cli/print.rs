//! What the commands print: a pipeline's tables (`ablate show`, the end of `ablate
//! run`), a plan (`ablate plan`), a query's frame in each output format, and sizes.

use std::path::Path;

use anyhow::Result;

use super::{Exit, OutFormat};
use crate::engine::{Plan, PlanStatus};
use crate::pipeline::Pipeline;
use crate::results::{query, table};

/// Print a pipeline's published tables; for people, columns with one value in every row
/// are left out unless `all`. False when there are none.
pub(super) fn print_tables(
    p: &Pipeline,
    dir: &Path,
    format: OutFormat,
    all: bool,
) -> Result<bool, Exit> {
    let pipeline = &p.name;
    let tables = current_tables(p, dir)?;
    let human = matches!(format, OutFormat::Table | OutFormat::Markdown);
    for (name, df) in &tables {
        let (mut df, constant) = if all || !human {
            (df.clone(), vec![])
        } else {
            // Upstream stages' columns (`train.images_per_s`) stay in the files and in
            // `ablate query`; on screen, the instance's own numbers.
            let own: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|c| c.to_string())
                .filter(|c| {
                    c.split_once('.')
                        .is_none_or(|(pre, _)| p.stage(pre).is_none())
                })
                .filter(|c| c != "key")
                .collect();
            let df = df.select(own).map_err(anyhow::Error::from)?;
            let mut keep = vec!["instance", "status"];
            if name.ends_with("_cmp") {
                // Who is compared with whom and the outcome, even when one value.
                let names = df.get_column_names();
                let axes = names.iter().take_while(|c| c.as_str() != "baseline");
                keep.extend(axes.map(|c| c.as_str()).filter(|c| *c != "pipeline"));
                keep.extend(["baseline", "metric", "p_holm", "verdict"]);
            }
            table::drop_constant_columns(&df, &keep)?
        };
        if human {
            println!("## {pipeline}/{name}\n");
        }
        print_frame(&mut df, format)?;
        if !constant.is_empty() {
            println!(
                "(same in every row, --all shows them: {})",
                constant.join(", ")
            );
        }
        println!();
    }
    Ok(!tables.is_empty())
}

/// The tables under `dir` that belong to the pipeline's current stages (a renamed or
/// removed tabulate stage leaves its old files behind; they are not this pipeline's now).
pub(super) fn current_tables(
    p: &Pipeline,
    dir: &Path,
) -> Result<std::collections::BTreeMap<String, polars::prelude::DataFrame>> {
    let mut tables = query::pipeline_tables(dir)?;
    tables.retain(|name, _| {
        p.stage(name).is_some()
            || ["_agg", "_cmp"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|s| p.stage(s).is_some())
            })
    });
    Ok(tables)
}

pub(super) fn print_plan(plan: &Plan) {
    let (cached, to_run) = plan.counts();
    println!(
        "{}: {} instances ({cached} cached, {to_run} to run)",
        plan.ex.pipeline.name,
        plan.items.len()
    );
    let width = plan
        .ex
        .instances
        .iter()
        .map(|i| i.label.len())
        .max()
        .unwrap_or(0);
    for (inst, it) in plan.ex.instances.iter().zip(&plan.items) {
        let st = match it.status {
            PlanStatus::Cached => "cached",
            PlanStatus::Run => "run",
        };
        println!(
            "  {:<width$}  {}  {st:<6}  {}",
            inst.label,
            &it.key[..12],
            it.reason
        );
    }
}

pub(super) fn print_frame(
    df: &mut polars::prelude::DataFrame,
    format: OutFormat,
) -> Result<(), Exit> {
    match format {
        OutFormat::Table => print!("{}", table::to_text(df)),
        OutFormat::Markdown => print!("{}", table::to_markdown(df)),
        OutFormat::Csv => print!("{}", table::to_csv(df)?),
        OutFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&table::to_json(df)).map_err(anyhow::Error::from)?
        ),
    }
    Ok(())
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
