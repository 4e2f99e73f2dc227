use super::*;
use crate::gan::nets::{discriminator, generator, z_dim, DataShape};
use crate::gan::sample::sample_net;
use crate::nn::{NamedTensor, T4};
use dfdx::prelude::*;
use serde_json::json;

fn net(arch: &str) -> Value {
    json!({"arch": arch, "width": 4})
}

/// Weights and a few outputs of G or D: equal when the two configs are the same net.
fn fingerprint(
    cfg: &NetConfig,
    generator_side: bool,
    shape: DataShape,
    classes: Option<usize>,
) -> (Vec<NamedTensor<f32>>, Vec<f32>) {
    let dev = Cpu::default();
    if generator_side {
        let g = generator::<f32, Cpu>(cfg, shape, classes, dev.clone(), 7).unwrap();
        let z = z_dim(cfg, shape);
        let s = sample_net(&g, &dev, z, shape, 3, 11);
        (g.to_named(), s.values)
    } else {
        let d = discriminator::<f32, Cpu>(cfg, shape, None, dev.clone(), 7).unwrap();
        let n: usize = d.in_shape.iter().product();
        let x: Vec<f32> = (0..2 * n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let [c, h, w] = d.in_shape;
        let x: T4<f32, Cpu> = dev.tensor_from_vec(x, (2, c, h, w));
        (d.to_named(), d.forward(x, false).as_vec())
    }
}

/// Each (net, explicit default) pair: the normalised params drop the default, and the
/// net built from the explicit params is the one built without them.
#[test]
fn explicit_defaults_share_the_key_and_the_net() {
    let ring = DataShape::Points;
    let img = DataShape::Image { c: 1, res: 16 };
    let cases: Vec<(bool, Value, Value, DataShape)> = vec![
        (
            true,
            net("mlp"),
            json!({"depth": 3, "max_width": 32, "spectral_norm": false}),
            ring,
        ),
        (
            false,
            net("mlp"),
            json!({"depth": 3, "spectral_norm": false}),
            ring,
        ),
        (
            true,
            net("dcgan"),
            json!({"batch_norm": true, "max_width": 32}),
            img,
        ),
        (false, net("dcgan"), json!({"batch_norm": false}), img),
        (
            true,
            json!({"arch": "r3gan", "variant": "E", "width": 4}),
            json!({"depth": 2, "expansion": 2.0, "group_size": 16}),
            img,
        ),
        (
            false,
            json!({"arch": "r3gan", "variant": "D", "width": 4}),
            json!({"depth": 2, "expansion": 1.0}),
            img,
        ),
        (false, net("resnet"), json!({"spectral_norm": true}), img),
        (
            true,
            net("resnet"),
            json!({"residual_scale": 1.0, "learn_residual_scale": false, "upsample": "nearest"}),
            img,
        ),
        (
            false,
            net("resnet"),
            json!({"depth": 2, "spectral_norm": true}),
            img,
        ),
        (
            true,
            net("selfmod"),
            json!({"body": "resnet", "mod_hidden": 32, "batch_norm": true}),
            img,
        ),
        (
            true,
            json!({"arch": "selfmod", "body": "dcgan", "width": 4}),
            json!({"batch_norm": true}),
            img,
        ),
        (
            true,
            net("stylegan"),
            json!({"mapping_depth": 8, "mapping_width": 512, "noise": false, "style_mixing": 0.0}),
            img,
        ),
    ];
    for (gen_side, base, extra, shape) in cases {
        let mut full = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            full[k] = v.clone();
        }
        let mut a: NetConfig = serde_json::from_value(base.clone()).unwrap();
        let mut b: NetConfig = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(
            fingerprint(&a, gen_side, shape, None),
            fingerprint(&b, gen_side, shape, None),
            "{full}: the explicit default builds another net"
        );
        normalise_net(&mut a, gen_side);
        normalise_net(&mut b, gen_side);
        assert_eq!(
            a, b,
            "{full} (generator: {gen_side}) normalises to another config"
        );
    }
    // A conditional generator's embedding defaults to z_dim when z_dim is given.
    let mut a: NetConfig =
        serde_json::from_value(json!({"arch": "mlp", "width": 4, "z_dim": 5})).unwrap();
    let mut b = a.clone();
    b.embed_dim = Some(5);
    assert_eq!(
        fingerprint(&a, true, ring, Some(3)),
        fingerprint(&b, true, ring, Some(3))
    );
    normalise_net(&mut a, true);
    normalise_net(&mut b, true);
    assert_eq!(a, b);
}

#[test]
fn non_defaults_are_kept() {
    for (gen_side, v) in [
        (
            true,
            json!({"arch": "dcgan", "width": 4, "batch_norm": false}),
        ),
        (
            false,
            json!({"arch": "dcgan", "width": 4, "batch_norm": true}),
        ),
        (
            true,
            json!({"arch": "mlp", "width": 4, "depth": 2, "max_width": 8}),
        ),
        (
            true,
            json!({"arch": "r3gan", "variant": "B", "width": 4, "expansion": 2.0}),
        ),
        (false, json!({"arch": "resnet", "width": 4, "depth": 1})),
        (true, json!({"arch": "mlp", "width": 4, "z_dim": 64})),
    ] {
        let a: NetConfig = serde_json::from_value(v.clone()).unwrap();
        let mut b = a.clone();
        normalise_net(&mut b, gen_side);
        assert_eq!(a, b, "{v}");
    }
}
