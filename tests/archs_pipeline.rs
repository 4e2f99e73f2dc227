//! Every generator and discriminator architecture trains a few steps through the
//! binary, unconditionally and class-conditionally, and samples images of the right
//! shape (one pipeline, a matrix over archs x conditional); conditional samples carry
//! their balanced labels.

mod common;

use common::{ablate, repo};
use serde_json::Value;

#[test]
fn every_arch_trains_and_samples_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let yaml = format!(
        "name: archs
stages:
  digits:
    kind: data
    params: {{source: mnist, root: {root}, count: 64, resolution: 16}}
  train:
    kind: train
    needs: [digits]
    matrix:
      net:
        - {{name: dcgan, g: {{arch: dcgan, width: 4}}, d: {{arch: dcgan, width: 4}}}}
        - {{name: resnet, g: {{arch: resnet, width: 4}}, d: {{arch: resnet, width: 4, spectral_norm: true}}}}
        - {{name: selfmod, g: {{arch: selfmod, width: 4}}, d: {{arch: dcgan, width: 4}}}}
        - {{name: stylegan, g: {{arch: stylegan, width: 4, mapping_depth: 2, mapping_width: 16, noise: true, style_mixing: 0.5}}, d: {{arch: dcgan, width: 4}}}}
        - {{name: r3gan-B, g: {{arch: r3gan, variant: B, width: 4}}, d: {{arch: r3gan, variant: B, width: 4}}}}
        - {{name: r3gan-D, g: {{arch: r3gan, variant: D, width: 4}}, d: {{arch: r3gan, variant: D, width: 4}}}}
        - {{name: r3gan-E, g: {{arch: r3gan, variant: E, width: 8, group_size: 4}}, d: {{arch: r3gan, variant: E, width: 8, group_size: 4}}}}
      conditional: [false, true]
    params:
      generator: ${{net.g}}
      discriminator: ${{net.d}}
      loss: rpgan
      penalties: [r1, r2]
      gamma: 0.1
      optimizer: {{lr: 2.0e-4}}
      batch: 4
      steps: 2
      seed: 0
      conditional: ${{conditional}}
  sample:
    kind: sample
    needs: [train]
    params: {{count: 5}}
  table:
    kind: tabulate
    needs: [sample]
",
        root = repo().join("datasets/mnist").display()
    );
    std::fs::write(d.join("p.yaml"), yaml).unwrap();
    let (code, _, err) = ablate(d, &["run", "p.yaml", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ablate(
        d,
        &["query", "SELECT \"net.name\" AS net, conditional, status, \"train.steps\" AS steps, \"train.params_g\" AS pg FROM \"table\"", "--format", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 14);
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["steps"], 2.0, "{r}");
        assert!(r["pg"].as_f64().unwrap() > 100.0, "{r}");
    }
    // conditioning adds parameters to every pair
    for net in rows.iter().map(|r| r["net"].clone()) {
        let pg = |c: bool| {
            rows.iter()
                .find(|r| r["net"] == net && r["conditional"] == c)
                .unwrap()["pg"]
                .as_f64()
                .unwrap()
        };
        assert!(pg(true) > pg(false), "{net}");
    }
    // Every sample file holds 5 images of 1 x 16 x 16; a conditional one the labels
    // 0..5 (balanced over MNIST's 10 classes) and `classes` = 10 in its metadata.
    let mut labelled = 0;
    for e in std::fs::read_dir(d.join("results/cache/sample")).unwrap() {
        let p = e.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let bytes = std::fs::read(p.join("samples.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("images").unwrap().shape(), &[5, 1, 16, 16]);
        let manifest: Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("manifest.json")).unwrap())
                .unwrap();
        let train_key = manifest["inputs"][0]["key"].as_str().unwrap();
        let train: Value = serde_json::from_str(
            &std::fs::read_to_string(
                d.join("results/cache/train")
                    .join(train_key)
                    .join("manifest.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let cond = train["params"]["conditional"] == true;
        match st.tensor("labels") {
            Ok(l) => {
                assert!(cond, "{}", p.display());
                assert_eq!(l.dtype(), safetensors::Dtype::I64);
                let v: Vec<i64> = l
                    .data()
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                assert_eq!(v, [0, 1, 2, 3, 4]);
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                assert_eq!(meta.metadata().as_ref().unwrap()["classes"], "10");
                assert_eq!(train["info"]["classes"], 10);
                labelled += 1;
            }
            Err(_) => assert!(!cond, "{}", p.display()),
        }
    }
    assert_eq!(labelled, 7);
}
