//! Sections of the report page built from the plan and the tables: the stage graph
//! (SVG, with per-stage counts) and the published tables as sortable HTML.

use super::html::esc;
use super::State;
use crate::engine::Plan;
use crate::results::table::{json_value, show_value};
use polars::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// The stage graph as SVG (layered left to right) and a table of per-stage counts.
pub(super) fn stage_graph(plan: &Plan, states: &[State]) -> String {
    let ex = &plan.ex;
    let stages = &ex.pipeline.stages;
    let index: HashMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut layer = vec![0usize; stages.len()];
    for &si in &ex.stage_order {
        for need in &stages[si].needs {
            if let Some(&u) = index.get(need.as_str()) {
                layer[si] = layer[si].max(layer[u] + 1);
            }
        }
    }
    let mut row_of = vec![0usize; stages.len()];
    let mut rows_in: BTreeMap<usize, usize> = BTreeMap::new();
    for &si in &ex.stage_order {
        let r = rows_in.entry(layer[si]).or_default();
        row_of[si] = *r;
        *r += 1;
    }
    let counts: Vec<BTreeMap<&'static str, usize>> = (0..stages.len())
        .map(|si| {
            let mut c = BTreeMap::new();
            for &i in &ex.by_stage[si] {
                *c.entry(states[i].name()).or_default() += 1;
            }
            c
        })
        .collect();
    let (bw, bh, gx, gy, pad) = (200.0, 66.0, 56.0, 16.0, 12.0);
    let width = pad * 2.0 + (layer.iter().max().copied().unwrap_or(0) + 1) as f64 * (bw + gx) - gx;
    let height = pad * 2.0 + rows_in.values().max().copied().unwrap_or(1) as f64 * (bh + gy) - gy;
    let pos = |si: usize| {
        (
            pad + layer[si] as f64 * (bw + gx),
            pad + row_of[si] as f64 * (bh + gy),
        )
    };
    let mut s = format!(
        "<section id=\"stages\"><h2>Stages</h2><svg class=\"dag\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"stage graph\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#666\"/></marker></defs>"
    );
    for (si, st) in stages.iter().enumerate() {
        for need in &st.needs {
            if let Some(&u) = index.get(need.as_str()) {
                let (ux, uy) = pos(u);
                let (vx, vy) = pos(si);
                let (x1, y1, x2, y2) = (ux + bw, uy + bh / 2.0, vx, vy + bh / 2.0);
                let mx = (x1 + x2) / 2.0;
                let _ = write!(
                    s,
                    "<path d=\"M{x1},{y1} C{mx},{y1} {mx},{y2} {x2},{y2}\" fill=\"none\" stroke=\"#666\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>"
                );
            }
        }
    }
    for (si, st) in stages.iter().enumerate() {
        let (x, y) = pos(si);
        let c = &counts[si];
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        let class = if get("failed") > 0 {
            "failed"
        } else if get("diverged") > 0 {
            "diverged"
        } else if get("running") > 0 {
            "running"
        } else if get("pending") + get("skipped") + get("interrupted") == 0 {
            "done"
        } else {
            "pending"
        };
        let line = c
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(" · ");
        let _ = write!(
            s,
            "<g class=\"node n-{class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\"/>\
             <text x=\"{}\" y=\"{}\" class=\"n1\"><a href=\"#stage-{}\">{}</a></text>\
             <text x=\"{}\" y=\"{}\" class=\"n2\">{} · {} instance{}</text>\
             <text x=\"{}\" y=\"{}\" class=\"n3\">{}</text></g>",
            x + 10.0,
            y + 20.0,
            esc(&st.name),
            esc(&st.name),
            x + 10.0,
            y + 38.0,
            esc(&st.kind),
            ex.by_stage[si].len(),
            if ex.by_stage[si].len() == 1 { "" } else { "s" },
            x + 10.0,
            y + 56.0,
            esc(&line)
        );
    }
    s.push_str("</svg>");
    let cols = [
        "cached",
        "ran",
        "running",
        "pending",
        "diverged",
        "failed",
        "skipped",
        "interrupted",
    ];
    s.push_str("<table class=\"data sortable counts\" data-table=\"stage counts\"><thead><tr><th>stage</th><th>kind</th><th>needs</th><th>instances</th>");
    for c in cols {
        let _ = write!(s, "<th>{c}</th>");
    }
    s.push_str("</tr></thead><tbody>");
    for &si in &ex.stage_order {
        let st = &stages[si];
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td data-v=\"{}\" class=\"num\">{}</td>",
            esc(&st.name),
            esc(&st.kind),
            esc(&st.needs.join(", ")),
            ex.by_stage[si].len(),
            ex.by_stage[si].len()
        );
        for c in cols {
            let v = counts[si].get(c).copied().unwrap_or(0);
            let _ = write!(
                s,
                "<td data-v=\"{v}\" class=\"num {}\">{v}</td>",
                if v > 0 {
                    format!("st-{c}")
                } else {
                    "zero".into()
                }
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></section>\n");
    s
}

/// A table as sortable HTML. `<m>_mean` / `<m>_std` pairs become one `m` column
/// showing mean ± std; columns of upstream stages (`train.wall_s`), the cache key and
/// columns with one value in every row are hidden until "all columns" is ticked.
pub(super) fn table_html(name: &str, df: &DataFrame, stages: &BTreeSet<&str>) -> String {
    let cols: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let rows = df.height();
    struct Col {
        header: String,
        mean: usize,
        std: Option<usize>,
        hidden: bool,
    }
    let upstream = |c: &str| {
        c.split_once('.')
            .is_some_and(|(pre, _)| stages.contains(pre))
    };
    let constant = |i: usize| {
        rows > 1
            && df.columns()[i]
                .as_materialized_series()
                .n_unique()
                .is_ok_and(|u| u <= 1)
    };
    let mut shown: Vec<Col> = vec![];
    for (i, c) in cols.iter().enumerate() {
        if let Some(base) = c.strip_suffix("_std") {
            if cols.iter().any(|d| d.strip_suffix("_mean") == Some(base)) {
                continue;
            }
        }
        let (header, std) = match c.strip_suffix("_mean") {
            Some(base) => match cols
                .iter()
                .position(|d| d.strip_suffix("_std") == Some(base))
            {
                Some(j) => (format!("{base} (mean ± std)"), Some(j)),
                None => (c.clone(), None),
            },
            None => (c.clone(), None),
        };
        let keep = ["instance", "status"].contains(&c.as_str());
        let hidden = !keep && (c == "key" || c == "pipeline" || upstream(c) || constant(i));
        shown.push(Col {
            header,
            mean: i,
            std,
            hidden,
        });
    }
    let hidden_n = shown.iter().filter(|c| c.hidden).count();
    let mut h = format!(
        "<div class=\"tbl\"><h3 id=\"t-{0}\">{0} <span class=\"muted\">{rows} row{1}</span></h3>",
        esc(name),
        if rows == 1 { "" } else { "s" }
    );
    if hidden_n > 0 {
        let _ = write!(
            h,
            "<label class=\"toggle\"><input type=\"checkbox\" class=\"allcols\"> all columns ({hidden_n} more: upstream stages, the key, and columns with one value in every row)</label>"
        );
    }
    let _ = write!(
        h,
        "<div class=\"scroll\"><table class=\"data sortable\" data-table=\"{}\"><thead><tr>",
        esc(name)
    );
    for c in &shown {
        let _ = write!(
            h,
            "<th{} title=\"sort\">{}</th>",
            if c.hidden { " class=\"x\"" } else { "" },
            esc(&c.header)
        );
    }
    h.push_str("</tr></thead><tbody>");
    let columns = df.columns();
    for r in 0..rows {
        h.push_str("<tr>");
        for c in &shown {
            let v = columns[c.mean].get(r).unwrap_or(AnyValue::Null);
            let sort = match json_value(&v) {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => String::new(),
                other => other
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| other.to_string()),
            };
            let mut text = show_value(&v);
            if let Some(j) = c.std {
                let s = columns[j].get(r).unwrap_or(AnyValue::Null);
                let s = show_value(&s);
                if !s.is_empty() && !text.is_empty() {
                    text = format!("{text} ± {s}");
                }
            }
            let mut class = vec![];
            if matches!(
                v,
                AnyValue::Float64(_)
                    | AnyValue::Float32(_)
                    | AnyValue::Int64(_)
                    | AnyValue::Int32(_)
                    | AnyValue::UInt32(_)
                    | AnyValue::UInt64(_)
            ) {
                class.push("num".to_string());
            }
            if c.hidden {
                class.push("x".to_string());
            }
            if cols[c.mean] == "status" && text != "ok" {
                class.push(format!("st-{}", esc(&text)));
            }
            let _ = write!(
                h,
                "<td data-v=\"{}\"{}>{}</td>",
                esc(&sort),
                if class.is_empty() {
                    String::new()
                } else {
                    format!(" class=\"{}\"", class.join(" "))
                },
                esc(&text)
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div></div>");
    h
}
