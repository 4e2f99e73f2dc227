//! The real binary on real data: MNIST from the shipped IDX files and a Gaussian
//! ring, through plan -> run -> cached re-run -> one changed param -> query -> show,
//! with the artifacts read back.

mod common;

use common::{ablate, repo};
use serde_json::Value;
use std::path::Path;

fn pipeline(count: usize) -> String {
    format!(
        "name: data-demo
stages:
  digits:
    kind: data
    matrix:
      resolution: [28, 32]
    params: {{source: mnist, root: {root}, count: {count}, resolution: '${{resolution}}'}}
  ring:
    kind: data
    params: {{source: gaussian_ring, count: 400, seed: 3}}
  table:
    kind: tabulate
    needs: [digits, ring]
    params: {{rows: [resolution]}}
",
        root = repo().join("datasets/mnist").display()
    )
}

fn safetensors_header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

#[test]
fn mnist_and_ring_through_the_whole_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("p.yaml"), pipeline(500)).unwrap();

    let (code, out, err) = ablate(d, &["plan", "p.yaml", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let labels: Vec<&str> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        vec![
            "digits[resolution=28]",
            "digits[resolution=32]",
            "ring",
            "table"
        ]
    );

    let (code, _, err) = ablate(d, &["run", "p.yaml", "-j", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ran 4, cached 0"), "{err}");

    // Artifacts: tensors with the documented names, shapes and dtypes, a card, a preview.
    let digits32 = &plan[1]["key"].as_str().unwrap();
    let art = d.join("results/cache/data").join(digits32);
    let h = safetensors_header(&art.join("data.safetensors"));
    assert_eq!(h["images"]["shape"], serde_json::json!([500, 1, 32, 32]));
    assert_eq!(h["images"]["dtype"], "F32");
    assert_eq!(h["labels"]["dtype"], "I64");
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(art.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["count"], 500);
    assert_eq!(card["value_range"]["min"], -1.0);
    let png = image::open(art.join("preview.png")).unwrap();
    assert!(png.width() > 32 && png.height() > 32);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(art.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "ok");
    assert_eq!(manifest["key"], *digits32);
    let rec = &manifest["outputs"]["data.safetensors"];
    let bytes = std::fs::read(art.join("data.safetensors")).unwrap();
    assert_eq!(rec["blake3"], blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(rec["bytes"], bytes.len());

    // The table, read back as CSV: padding 28 -> 32 adds (32^2 - 28^2) pixels at -1,
    // so the mean drops by exactly that share of (1 + mean28).
    let (code, out, err) = ablate(
        d,
        &[
            "query",
            "SELECT instance, resolution, count, mean FROM \"table\" ORDER BY instance",
            "--format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["instance"], "digits[resolution=28]");
    assert_eq!(rows[2]["instance"], "ring");
    assert!(rows[2]["resolution"].is_null());
    let m28 = rows[0]["mean"].as_f64().unwrap();
    let m32 = rows[1]["mean"].as_f64().unwrap();
    let expect = (m28 * 784.0 - (1024.0 - 784.0)) / 1024.0;
    assert!((m32 - expect).abs() < 1e-5, "{m32} vs {expect}");
    assert!(d.join("results/data-demo/table.parquet").exists());
    let md = std::fs::read_to_string(d.join("results/data-demo/table.md")).unwrap();
    assert!(
        md.starts_with("| pipeline | stage | instance | key | resolution |"),
        "{md}"
    );

    // Everything cached.
    let (code, _, err) = ablate(d, &["run", "p.yaml"]);
    assert_eq!(code, 0);
    assert!(err.contains("ran 0, cached 4"), "{err}");

    // One param changes: only those two digits instances and the table re-run.
    std::fs::write(d.join("p.yaml"), pipeline(300)).unwrap();
    let (_, out, _) = ablate(d, &["plan", "p.yaml"]);
    assert!(out.contains("(1 cached, 3 to run)"), "{out}");
    assert!(out.contains("params changed: count"), "{out}");
    let (code, _, err) = ablate(d, &["run", "p.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ran 3, cached 1"), "{err}");
    let (_, out, _) = ablate(
        d,
        &[
            "query",
            "SELECT sum(count) AS n FROM \"table\"",
            "--format",
            "csv",
        ],
    );
    assert_eq!(out, "n\n1000.0\n");

    // show prints the table; a bad query is exit code 2 with polars' message.
    let (code, out, _) = ablate(d, &["show", "p.yaml"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("digits[resolution=32]") && out.contains("(3 rows)"),
        "{out}"
    );
    let (code, _, err) = ablate(d, &["query", "SELEC nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("query failed"), "{err}");

    // The DAG, as text and as DOT.
    let (_, out, _) = ablate(d, &["dag", "p.yaml"]);
    assert!(
        out.contains("table (tabulate) x1  <- digits, ring"),
        "{out}"
    );
    let (_, out, _) = ablate(d, &["dag", "p.yaml", "--format", "dot"]);
    assert!(out.starts_with("digraph {") && out.contains("->"), "{out}");
}
