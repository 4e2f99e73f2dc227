//! Golden numbers: the cache key of an instance is blake3(kind, kind version, params,
//! input keys), so a change to what a kind computes must bump its version, or a cache
//! serves the old numbers under the new code. This test runs one tiny instance of every
//! kind (`tests/golden/pipeline.yaml`) and compares its numbers (metrics without
//! timings, sums over every tensor it wrote, sums over every numeric table column) and
//! each kind's version with `tests/golden/golden.json`.
//!
//! - numbers moved, version not bumped: fails, naming the kind ("bump X's version");
//! - version bumped, golden not re-blessed: fails ("re-bless");
//! - `ABLATE_BLESS=1 cargo test --test golden` rewrites golden.json, and refuses while
//!   a kind's numbers moved without its version moving.
//!
//! A kind whose numbers moved only because an upstream instance's did (train after a
//! data change) needs no bump of its own: its keys change with its inputs' keys.

use ablate::engine::{Cache, Plan, PlanOptions};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PIPELINE: &str = "tests/golden/pipeline.yaml";
const GOLDEN: &str = "tests/golden/golden.json";
const BLESS: &str = "ABLATE_BLESS=1 cargo test --test golden";
/// Relative tolerance: room for last-bit differences between CPUs (SIMD widths in the
/// matrix products), far below what a change to a computation moves.
const REL_TOL: f64 = 1e-5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Timings and memory are not numbers of the computation.
fn is_timing(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    last.ends_with("_s") || last.contains("_s_") || last.contains("rss")
}

/// Element count, sum and sum of squares of every tensor in a safetensors file, by name.
fn tensor_sums(path: &Path) -> Value {
    use safetensors::tensor::Dtype;
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Map::new();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).unwrap();
        let d = t.data();
        let vals: Vec<f64> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            Dtype::U64 => d
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{}: tensor {name} has dtype {other:?}", path.display()),
        };
        let sum: f64 = vals.iter().sum();
        let sum_sq: f64 = vals.iter().map(|v| v * v).sum();
        out.insert(name, json!([vals.len(), sum, sum_sq]));
    }
    Value::Object(out)
}

/// Row count and the sum of every numeric, non-timing column of each table.
fn table_sums(results: &Path) -> Value {
    use polars::prelude::*;
    let mut out = Map::new();
    for (name, df) in ablate::results::query::pipeline_tables(results).unwrap() {
        let mut cols = Map::new();
        for c in df.columns() {
            let cname = c.name().to_string();
            if is_timing(&cname) || !c.dtype().is_primitive_numeric() {
                continue;
            }
            let s = c.as_materialized_series().cast(&DataType::Float64).unwrap();
            let sum: f64 = s.f64().unwrap().sum().unwrap_or(0.0);
            cols.insert(cname, json!(sum));
        }
        out.insert(name, json!({"rows": df.height(), "columns": cols}));
    }
    Value::Object(out)
}

/// Runs the golden pipeline in a fresh cache: (the golden document, each instance's
/// upstream instance labels).
fn compute() -> (Value, BTreeMap<String, Vec<String>>) {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let results = tmp.path().join("results");
    let reg = ablate::stages::registry();
    let code = ablate::cli::run_with(
        [
            "ablate",
            "-q",
            "--cache-dir",
            cache_dir.to_str().unwrap(),
            "--results-dir",
            results.to_str().unwrap(),
            "run",
            PIPELINE,
            "-j",
            "1",
        ],
        reg.clone(),
    );
    assert_eq!(code, 0, "the golden pipeline failed");
    let plan = Plan::new(
        Path::new(PIPELINE),
        &reg,
        Cache::new(&cache_dir),
        &repo(),
        &PlanOptions::default(),
    )
    .unwrap();
    let mut instances = Map::new();
    let mut upstream = BTreeMap::new();
    for (inst, it) in plan.ex.instances.iter().zip(&plan.items) {
        let m = plan.cache.manifest(&inst.kind, &it.key).unwrap();
        let metrics: Map<String, Value> = m
            .metrics
            .iter()
            .filter(|(k, _)| !is_timing(k))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut files = Map::new();
        for name in m.outputs.keys().filter(|n| n.ends_with(".safetensors")) {
            let path = plan.cache.dir(&inst.kind, &it.key).join(name);
            files.insert(name.clone(), tensor_sums(&path));
        }
        let mut entry = json!({"kind": inst.kind, "metrics": metrics, "tensors": files});
        if inst.kind == "tabulate" {
            entry["tables"] = table_sums(&results.join("golden"));
        }
        instances.insert(inst.label.clone(), entry);
        let mut ups = vec![];
        let mut stack = inst.inputs.clone();
        while let Some(u) = stack.pop() {
            ups.push(plan.ex.instances[u].label.clone());
            stack.extend(plan.ex.instances[u].inputs.iter().copied());
        }
        upstream.insert(inst.label.clone(), ups);
    }
    let versions: Map<String, Value> = reg
        .iter()
        .map(|s| (s.kind().to_string(), json!(s.version())))
        .collect();
    let doc = json!({
        "about": format!(
            "numbers of tests/golden/pipeline.yaml per kind version; after bumping a kind's \
             VERSION, regenerate with `{BLESS}`"
        ),
        "versions": versions,
        "instances": instances,
    });
    (doc, upstream)
}

/// The first number that differs beyond the tolerance, as `path: golden a, now b`.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &p),
                    (None, _) => Some(format!("{p}: new")),
                    (_, None) => Some(format!("{p}: gone")),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}[{i}]"))),
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let close = (x - y).abs() <= REL_TOL * x.abs().max(y.abs()) || x == y;
            (!close).then(|| format!("{path}: golden {x}, now {y}"))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: golden {a}, now {b}")),
    }
}

/// What is wrong between the committed golden document and this build: (errors that
/// block blessing, errors that only ask for re-blessing).
fn judge(
    golden: &Value,
    now: &Value,
    upstream: &BTreeMap<String, Vec<String>>,
) -> (Vec<String>, Vec<String>) {
    let empty = Map::new();
    let old = golden["instances"].as_object().unwrap_or(&empty);
    let new = now["instances"].as_object().unwrap();
    let moved: BTreeMap<&String, String> = new
        .iter()
        .filter_map(|(label, v)| {
            let diff = match old.get(label) {
                Some(o) => first_difference(o, v, label)?,
                None => format!("{label}: not in golden.json"),
            };
            Some((label, diff))
        })
        .collect();
    let (mut blocking, mut rebless) = (vec![], vec![]);
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (label, diff) in &moved {
        let kind = new[label.as_str()]["kind"].as_str().unwrap().to_string();
        let moved_up: Vec<&String> = upstream[label.as_str()]
            .iter()
            .filter(|u| moved.contains_key(u))
            .collect();
        if moved_up.is_empty() {
            by_kind.entry(kind).or_default().push(diff.clone());
        } else {
            rebless.push(format!(
                "{label} ({kind}) moved with its upstream ({}): {diff}",
                moved_up
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for (kind, diffs) in by_kind {
        let v_old = &golden["versions"][&kind];
        let v_new = &now["versions"][&kind];
        if v_old == v_new {
            blocking.push(format!(
                "the numbers of kind {kind} moved; if intended, bump {kind}'s version \
                 (VERSION in src/stages/{kind}.rs, now {v_new}) and re-bless: {BLESS}\n    {}",
                diffs.join("\n    ")
            ));
        } else {
            rebless.push(format!(
                "kind {kind} moved from version {v_old} to {v_new}: {}",
                diffs.join("; ")
            ));
        }
    }
    for (kind, v) in now["versions"].as_object().unwrap() {
        if golden["versions"][kind] != *v {
            rebless.push(format!(
                "kind {kind} is at version {v}, golden.json has {}: re-bless: {BLESS}",
                golden["versions"][kind]
            ));
        }
    }
    for label in old.keys().filter(|l| !new.contains_key(*l)) {
        rebless.push(format!(
            "{label}: in golden.json, no longer in the pipeline"
        ));
    }
    (blocking, rebless)
}

#[test]
fn golden_numbers_of_every_kind() {
    let t = std::time::Instant::now();
    let (now, upstream) = compute();
    eprintln!("golden pipeline: {:.1} s", t.elapsed().as_secs_f64());
    let path = repo().join(GOLDEN);
    let golden: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let (blocking, rebless) = judge(&golden, &now, &upstream);
    if std::env::var_os("ABLATE_BLESS").is_some() {
        assert!(
            blocking.is_empty(),
            "refusing to bless:\n{}",
            blocking.join("\n")
        );
        let text = serde_json::to_string_pretty(&now).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        eprintln!("blessed {}", path.display());
        return;
    }
    let mut all = blocking;
    all.extend(rebless);
    assert!(
        all.is_empty(),
        "golden numbers ({GOLDEN}):\n{}",
        all.join("\n")
    );
}

/// The judgement itself, on hand-made documents: each rule fires where it should.
#[test]
fn golden_rules() {
    let doc = |v_data: u32, v_train: u32, ring: f64, train: f64| {
        json!({
            "versions": {"data": v_data, "train": v_train},
            "instances": {
                "ring": {"kind": "data", "metrics": {"mean": ring}},
                "fit": {"kind": "train", "metrics": {"loss": train}},
            }
        })
    };
    let up: BTreeMap<String, Vec<String>> = [
        ("ring".to_string(), vec![]),
        ("fit".to_string(), vec!["ring".to_string()]),
    ]
    .into();
    let base = doc(1, 1, 0.5, 2.0);
    // Same numbers within the tolerance: nothing to say.
    let (b, r) = judge(&base, &doc(1, 1, 0.5 * (1.0 + 1e-7), 2.0), &up);
    assert!(b.is_empty() && r.is_empty(), "{b:?} {r:?}");
    // train moved alone, same version: blocks, names train.
    let (b, r) = judge(&base, &doc(1, 1, 0.5, 2.1), &up);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(
        b[0].starts_with("the numbers of kind train moved; if intended, bump train's version"),
        "{}",
        b[0]
    );
    assert!(
        b[0].contains("fit.metrics.loss: golden 2, now 2.1"),
        "{}",
        b[0]
    );
    assert!(r.is_empty());
    // ... bumped: only a re-bless.
    let (b, r) = judge(&base, &doc(1, 2, 0.5, 2.1), &up);
    assert!(b.is_empty(), "{b:?}");
    assert!(
        r.iter().any(|m| m.contains("train is at version 2")),
        "{r:?}"
    );
    // data moved (train with it): blocks on data only, train just needs re-blessing.
    let (b, r) = judge(&base, &doc(1, 1, 0.6, 2.1), &up);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].contains("kind data moved"), "{b:?}");
    assert!(
        r[0].starts_with("fit (train) moved with its upstream (ring)"),
        "{r:?}"
    );
    // A bump with the same numbers still asks for a re-bless.
    let (b, r) = judge(&base, &doc(2, 1, 0.5, 2.0), &up);
    assert!(b.is_empty() && r.len() == 1, "{b:?} {r:?}");
}
