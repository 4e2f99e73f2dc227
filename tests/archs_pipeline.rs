//! Every generator and discriminator architecture trains a few steps through the
//! binary and samples images of the right shape (one pipeline, a matrix over archs).

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
        - {{name: stylegan, g: {{arch: stylegan, width: 4, mapping_depth: 2, mapping_width: 16}}, d: {{arch: dcgan, width: 4}}}}
        - {{name: r3gan-B, g: {{arch: r3gan, variant: B, width: 4}}, d: {{arch: r3gan, variant: B, width: 4}}}}
        - {{name: r3gan-D, g: {{arch: r3gan, variant: D, width: 4}}, d: {{arch: r3gan, variant: D, width: 4}}}}
        - {{name: r3gan-E, g: {{arch: r3gan, variant: E, width: 8, group_size: 4}}, d: {{arch: r3gan, variant: E, width: 8, group_size: 4}}}}
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
        &["query", "SELECT \"net.name\" AS net, status, \"train.steps\" AS steps, \"train.params_g\" AS pg FROM \"table\"", "--format", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 7);
    for r in &rows {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["steps"], 2.0, "{r}");
        assert!(r["pg"].as_f64().unwrap() > 100.0, "{r}");
    }
    // Every sample file holds 5 images of 1 x 16 x 16.
    for e in std::fs::read_dir(d.join("results/cache/sample")).unwrap() {
        let p = e.unwrap().path();
        if !p.is_dir() {
            continue;
        }
        let bytes = std::fs::read(p.join("samples.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("images").unwrap().shape(), &[5, 1, 16, 16]);
    }
}
