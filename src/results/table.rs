//! Tables: rows of typed cells -> polars DataFrame -> parquet, CSV and Markdown.

use crate::util::atomic_write_with;
use anyhow::{Context, Result};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One value of a row before it becomes a typed column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Cell {
    fn render(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Str(s) => s.clone(),
        }
    }
}

/// Build a DataFrame from rows of named cells. Columns appear in first-seen order;
/// a column is i64 if every value is an integer, f64 if every value is a number,
/// bool if every value is a bool, and a string otherwise; missing values are null.
pub fn frame_from_rows(rows: &[Vec<(String, Cell)>]) -> Result<DataFrame> {
    let mut order: Vec<String> = vec![];
    let mut cols: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        for (name, cell) in row {
            let col = cols.entry(name.clone()).or_insert_with(|| {
                order.push(name.clone());
                vec![Cell::Null; r]
            });
            if col.len() == r {
                col.push(cell.clone());
            } else {
                // Duplicate name within a row: the last value wins.
                *col.last_mut().unwrap() = cell.clone();
            }
        }
        for col in cols.values_mut() {
            if col.len() == r {
                col.push(Cell::Null);
            }
        }
    }
    let mut columns = Vec::with_capacity(order.len());
    for name in order {
        let cells = &cols[&name];
        let non_null = cells.iter().filter(|c| **c != Cell::Null);
        let (mut ints, mut nums, mut bools) = (true, true, true);
        for c in non_null {
            ints &= matches!(c, Cell::Int(_));
            nums &= matches!(c, Cell::Int(_) | Cell::Float(_));
            bools &= matches!(c, Cell::Bool(_));
        }
        let pname = PlSmallStr::from(name.as_str());
        let col = if ints && !bools {
            let v: Vec<Option<i64>> = cells
                .iter()
                .map(|c| if let Cell::Int(i) = c { Some(*i) } else { None })
                .collect();
            Column::new(pname, v)
        } else if nums && !bools {
            let v: Vec<Option<f64>> = cells
                .iter()
                .map(|c| match c {
                    Cell::Int(i) => Some(*i as f64),
                    Cell::Float(f) => Some(*f),
                    _ => None,
                })
                .collect();
            Column::new(pname, v)
        } else if bools {
            let v: Vec<Option<bool>> = cells
                .iter()
                .map(|c| {
                    if let Cell::Bool(b) = c {
                        Some(*b)
                    } else {
                        None
                    }
                })
                .collect();
            Column::new(pname, v)
        } else {
            let v: Vec<Option<String>> = cells
                .iter()
                .map(|c| {
                    if *c == Cell::Null {
                        None
                    } else {
                        Some(c.render())
                    }
                })
                .collect();
            Column::new(pname, v)
        };
        columns.push(col);
    }
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Write `<dir>/<name>.parquet`, `.csv` and `.md`, each atomically.
pub fn write_table(df: &mut DataFrame, dir: &Path, name: &str) -> Result<()> {
    atomic_write_with(&dir.join(format!("{name}.parquet")), |f| {
        ParquetWriter::new(f).finish(df)?;
        Ok(())
    })?;
    atomic_write_with(&dir.join(format!("{name}.csv")), |f| {
        let mut w = CsvWriter::new(f).include_header(true);
        SerWriter::finish(&mut w, df)?;
        Ok(())
    })?;
    atomic_write_with(&dir.join(format!("{name}.md")), |f| {
        use std::io::Write;
        f.write_all(to_markdown(df).as_bytes())?;
        Ok(())
    })
}

/// Read a parquet table.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(f).finish();
    anyhow::Context::with_context(df, || format!("reading {}", path.display()))
}

/// A value for people: floats with 4 significant digits, strings bare.
pub fn show_value(v: &AnyValue) -> String {
    match v {
        AnyValue::Null => String::new(),
        AnyValue::Float64(f) => fmt_float(*f),
        AnyValue::Float32(f) => fmt_float(*f as f64),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

fn fmt_float(f: f64) -> String {
    if f.is_nan() || f.is_infinite() {
        return f.to_string();
    }
    if f == 0.0 {
        return "0".into();
    }
    let a = f.abs();
    if (1e-3..1e6).contains(&a) {
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{f:.digits$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{f:.3e}")
    }
}

/// A value for machines: JSON, keeping numbers numbers.
pub fn json_value(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AnyValue::Null => J::Null,
        AnyValue::Boolean(b) => J::Bool(*b),
        AnyValue::Float64(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        AnyValue::Float32(f) => serde_json::Number::from_f64(*f as f64)
            .map(J::Number)
            .unwrap_or(J::Null),
        AnyValue::Int64(i) => J::from(*i),
        AnyValue::Int32(i) => J::from(*i),
        AnyValue::UInt32(i) => J::from(*i),
        AnyValue::UInt64(i) => J::from(*i),
        AnyValue::String(s) => J::String(s.to_string()),
        AnyValue::StringOwned(s) => J::String(s.to_string()),
        other => J::String(other.to_string()),
    }
}

/// Rows of a frame as strings (for Markdown and plain tables).
pub fn string_rows(df: &DataFrame) -> Vec<Vec<String>> {
    let cols = df.columns();
    (0..df.height())
        .map(|r| {
            cols.iter()
                .map(|c| c.get(r).map(|v| show_value(&v)).unwrap_or_default())
                .collect()
        })
        .collect()
}

/// A GitHub-flavoured Markdown table.
pub fn to_markdown(df: &DataFrame) -> String {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut out = format!("| {} |\n", names.join(" | "));
    out.push_str(&format!("|{}\n", " --- |".repeat(names.len())));
    for row in string_rows(df) {
        let row: Vec<String> = row.into_iter().map(|s| s.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// Rows as JSON objects.
pub fn to_json(df: &DataFrame) -> serde_json::Value {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cols = df.columns();
    let rows = (0..df.height())
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (n, c) in names.iter().zip(cols) {
                m.insert(
                    n.clone(),
                    c.get(r)
                        .map(|v| json_value(&v))
                        .unwrap_or(serde_json::Value::Null),
                );
            }
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// CSV text of a frame.
pub fn to_csv(df: &mut DataFrame) -> Result<String> {
    let mut buf = Vec::new();
    let mut w = CsvWriter::new(&mut buf).include_header(true);
    SerWriter::finish(&mut w, df)?;
    Ok(String::from_utf8(buf)?)
}

/// A plain aligned text table for terminals.
pub fn to_text(df: &DataFrame) -> String {
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows = string_rows(df);
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&names);
    out.push('\n');
    out.push_str(&line(
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    ));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out.push_str(&format!("({} rows)\n", rows.len()));
    out
}

/// Leave out the columns that hold one value in every row (nulls included), except
/// `keep`; returns the narrower frame and the names left out. With one row nothing is
/// left out.
pub fn drop_constant_columns(df: &DataFrame, keep: &[&str]) -> Result<(DataFrame, Vec<String>)> {
    if df.height() < 2 {
        return Ok((df.clone(), vec![]));
    }
    let mut kept = vec![];
    let mut dropped = vec![];
    for c in df.columns() {
        let name = c.name().to_string();
        let first = c.get(0)?.to_string();
        let constant =
            (1..df.height()).all(|r| c.get(r).map(|v| v.to_string() == first).unwrap_or(false));
        if constant && !keep.contains(&name.as_str()) {
            dropped.push(name);
        } else {
            kept.push(name);
        }
    }
    Ok((df.select(kept)?, dropped))
}

/// Count, mean, standard deviation (n-1) and 95% Student t interval of the mean
/// (n-1 degrees of freedom, n the column's non-null values in the group) of every
/// numeric column not in `group` or `skip`, grouped by the `group` columns in
/// first-seen order. Columns: the group columns, `n` (rows), then per column
/// `<c>_mean`, `<c>_std`, `<c>_ci95_lo`, `<c>_ci95_hi` (std and interval null for
/// one value).
///
/// ```
/// use ablate::results::{frame_from_rows, table::aggregate, Cell};
/// let row = |loss: &str, seed: i64, fid: f64| {
///     vec![
///         ("loss".to_string(), Cell::Str(loss.into())),
///         ("seed".to_string(), Cell::Int(seed)),
///         ("fid".to_string(), Cell::Float(fid)),
///     ]
/// };
/// let df = frame_from_rows(&[row("ns", 0, 2.0), row("ns", 1, 4.0), row("rpgan", 0, 1.0)])
///     .unwrap();
/// let agg = aggregate(&df, &["loss".to_string()], &["seed".to_string()]).unwrap();
/// let col = |c: &str| agg.column(c).unwrap().f64().unwrap().get(0);
/// assert_eq!(agg.height(), 2);
/// assert_eq!(col("fid_mean"), Some(3.0));
/// let std = col("fid_std").unwrap(); // the sample std of 2 and 4 is sqrt(2)
/// assert!((std - 2f64.sqrt()).abs() < 1e-12, "{std}");
/// // one run: no spread, no interval
/// assert_eq!(agg.column("fid_std").unwrap().f64().unwrap().get(1), None);
/// ```
pub fn aggregate(df: &DataFrame, group: &[String], skip: &[String]) -> Result<DataFrame> {
    let schema = df.schema();
    let mut aggs = vec![len().alias("n")];
    let mut numbers = vec![];
    for (name, dt) in schema.iter() {
        let n = name.to_string();
        if group.contains(&n) || skip.contains(&n) || !dt.is_primitive_numeric() {
            continue;
        }
        let x = col(name.clone()).cast(DataType::Float64);
        aggs.push(x.clone().mean().alias(format!("{n}_mean")));
        aggs.push(x.clone().std(1).alias(format!("{n}_std")));
        // Non-null values per group, under a name no real column has (dropped below).
        aggs.push(
            x.count()
                .cast(DataType::Int64)
                .alias(format!("{n}\u{0}count")),
        );
        numbers.push(n);
    }
    let keys: Vec<Expr> = group.iter().map(|g| col(g.as_str())).collect();
    let mut out = if keys.is_empty() {
        df.clone().lazy().select(aggs).collect()?
    } else {
        df.clone()
            .lazy()
            .group_by_stable(keys.clone())
            .agg(aggs)
            .collect()?
    };
    let mut order: Vec<String> = group.to_vec();
    order.push("n".into());
    for n in &numbers {
        let count = out.column(&format!("{n}\u{0}count"))?.i64()?.clone();
        let mean = out.column(&format!("{n}_mean"))?.f64()?.clone();
        let std = out.column(&format!("{n}_std"))?.f64()?.clone();
        let (mut lo, mut hi) = (vec![], vec![]);
        for ((c, m), s) in count.iter().zip(mean.iter()).zip(std.iter()) {
            let half = match (c, m, s) {
                (Some(c), Some(_), Some(s)) if c >= 2 => {
                    Some(super::stats::t_critical((c - 1) as f64) * s / (c as f64).sqrt())
                }
                _ => None,
            };
            lo.push(half.map(|h| m.unwrap() - h));
            hi.push(half.map(|h| m.unwrap() + h));
        }
        out.with_column(Column::new(format!("{n}_ci95_lo").into(), lo))?;
        out.with_column(Column::new(format!("{n}_ci95_hi").into(), hi))?;
        for suffix in ["mean", "std", "ci95_lo", "ci95_hi"] {
            order.push(format!("{n}_{suffix}"));
        }
    }
    Ok(out.select(order)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Vec<(String, Cell)>> {
        let r = |g: &str, s: i64, x: f64| {
            vec![
                ("group".to_string(), Cell::Str(g.into())),
                ("seed".to_string(), Cell::Int(s)),
                ("x".to_string(), Cell::Float(x)),
            ]
        };
        vec![r("a", 0, 1.0), r("a", 1, 3.0), r("b", 0, 10.0)]
    }

    #[test]
    fn columns_get_types_and_nulls() {
        let mut rs = rows();
        rs[1].push(("extra".into(), Cell::Bool(true)));
        let df = frame_from_rows(&rs).unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.column("seed").unwrap().dtype(), &DataType::Int64);
        assert_eq!(df.column("x").unwrap().dtype(), &DataType::Float64);
        assert_eq!(df.column("extra").unwrap().null_count(), 2);
    }

    #[test]
    fn aggregate_matches_hand_computed_mean_and_std() {
        let df = frame_from_rows(&rows()).unwrap();
        let agg = aggregate(&df, &["group".to_string()], &["seed".to_string()]).unwrap();
        let j = to_json(&agg);
        // group a: x = 1, 3 -> mean 2, sample std sqrt(2); group b: one value, std null.
        assert_eq!(j[0]["group"], "a");
        assert_eq!(j[0]["n"], 2);
        assert_eq!(j[0]["x_mean"], 2.0);
        assert!((j[0]["x_std"].as_f64().unwrap() - 2f64.sqrt()).abs() < 1e-12);
        // 95% interval: 2 +- t_{0.975, 1} sqrt(2) / sqrt(2) = 2 +- 12.706205 (R: qt(0.975, 1)).
        assert!((j[0]["x_ci95_lo"].as_f64().unwrap() - (2.0 - 12.706205)).abs() < 5e-6);
        assert!((j[0]["x_ci95_hi"].as_f64().unwrap() - (2.0 + 12.706205)).abs() < 5e-6);
        assert_eq!(j[1]["n"], 1);
        assert!(j[1]["x_std"].is_null());
        assert!(j[1]["x_ci95_lo"].is_null());
        let names: Vec<String> = agg
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            names,
            ["group", "n", "x_mean", "x_std", "x_ci95_lo", "x_ci95_hi"]
        );
    }

    #[test]
    fn constant_columns_are_left_out_for_people() {
        let mut rs = rows();
        for r in &mut rs {
            r.push(("same".into(), Cell::Float(1.5)));
        }
        let df = frame_from_rows(&rs).unwrap();
        let (narrow, dropped) = drop_constant_columns(&df, &["seed"]).unwrap();
        assert_eq!(dropped, vec!["same".to_string()]);
        assert_eq!(narrow.get_column_names().len(), 3);
    }

    #[test]
    fn files_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut df = frame_from_rows(&rows()).unwrap();
        write_table(&mut df, d.path(), "t").unwrap();
        let back = read_parquet(&d.path().join("t.parquet")).unwrap();
        assert!(back.equals(&df));
        let csv = std::fs::read_to_string(d.path().join("t.csv")).unwrap();
        assert_eq!(csv.lines().next().unwrap(), "group,seed,x");
        assert_eq!(csv.lines().nth(2).unwrap(), "a,1,3.0");
        let md = std::fs::read_to_string(d.path().join("t.md")).unwrap();
        assert_eq!(md.lines().nth(2).unwrap(), "| a | 0 | 1 |");
    }
}
