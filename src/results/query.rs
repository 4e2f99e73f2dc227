//! `ablate query` and `ablate show`: the published tables, through polars SQL.
//!
//! Tables are the parquet files under `results/<pipeline>/`, named by file stem
//! (`table`, `table_agg`, ...). Across pipelines, tables of one name are stacked
//! (columns unioned, missing values null); every table has a `pipeline` column.

use super::table::read_parquet;
use anyhow::Result;
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parquet tables of one pipeline's results folder, by name.
pub fn pipeline_tables(dir: &Path) -> Result<BTreeMap<String, DataFrame>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        out.insert(name, read_parquet(&f)?);
    }
    Ok(out)
}

/// Every pipeline's tables under the results root, stacked by name.
pub fn all_tables(results_root: &Path) -> Result<BTreeMap<String, DataFrame>> {
    let mut parts: BTreeMap<String, Vec<DataFrame>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(results_root) else {
        return Ok(BTreeMap::new());
    };
    let mut dirs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "cache"))
        .collect();
    dirs.sort();
    for d in dirs {
        for (name, df) in pipeline_tables(&d)? {
            parts.entry(name).or_default().push(df);
        }
    }
    let mut out = BTreeMap::new();
    for (name, dfs) in parts {
        let df = if dfs.len() == 1 {
            dfs.into_iter().next().unwrap()
        } else {
            polars::functions::concat_df_diagonal(&dfs)?
        };
        out.insert(name, df);
    }
    Ok(out)
}

/// Run SQL over named tables. Errors carry polars' message.
///
/// ```
/// use ablate::results::{frame_from_rows, query::run_sql, Cell};
/// use std::collections::BTreeMap;
/// let row = |loss: &str, seed: i64, fid: f64| {
///     vec![
///         ("loss".to_string(), Cell::Str(loss.into())),
///         ("seed".to_string(), Cell::Int(seed)),
///         ("fid".to_string(), Cell::Float(fid)),
///     ]
/// };
/// let df = frame_from_rows(&[row("ns", 0, 2.0), row("ns", 1, 4.0), row("rpgan", 0, 1.0)])
///     .unwrap();
/// let tables = BTreeMap::from([("runs".to_string(), df)]);
/// let out = run_sql(&tables, "SELECT loss, avg(fid) AS fid FROM runs GROUP BY loss ORDER BY loss")
///     .unwrap();
/// let fid = out.column("fid").unwrap().f64().unwrap();
/// assert_eq!((fid.get(0), fid.get(1), fid.len()), (Some(3.0), Some(1.0), 2));
/// ```
pub fn run_sql(tables: &BTreeMap<String, DataFrame>, sql: &str) -> PolarsResult<DataFrame> {
    let mut cx = polars::sql::SQLContext::new();
    for (name, df) in tables {
        cx.register(name, df.clone().lazy());
    }
    cx.execute(sql)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::table::{frame_from_rows, write_table, Cell};

    #[test]
    fn tables_stack_across_pipelines_and_answer_sql() {
        let d = tempfile::tempdir().unwrap();
        for (p, x) in [("p1", 1.0), ("p2", 5.0)] {
            let mut df = frame_from_rows(&[vec![
                ("pipeline".into(), Cell::Str(p.into())),
                ("x".into(), Cell::Float(x)),
            ]])
            .unwrap();
            write_table(&mut df, &d.path().join(p), "table").unwrap();
        }
        let t = all_tables(d.path()).unwrap();
        let out = run_sql(
            &t,
            "SELECT pipeline, x * 2 AS y FROM \"table\" ORDER BY y DESC",
        )
        .unwrap();
        let j = crate::results::table::to_json(&out);
        assert_eq!(
            j,
            serde_json::json!([{"pipeline": "p2", "y": 10.0}, {"pipeline": "p1", "y": 2.0}])
        );
        let err = run_sql(&t, "SELECT nope FROM \"table\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
