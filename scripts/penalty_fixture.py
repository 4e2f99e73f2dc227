"""Expected R1/R2 parameter gradients by PyTorch double backward, for ablate's penalty test.

The Rust test `gan::penalty_tests::penalty_matches_pytorch_double_backward` compares ablate's exact
Hessian-vector product (a tangent pass, see src/gan/losses.rs) with what PyTorch computes by
double backward on identical weights and inputs. This script makes the expected values, so
CI needs no PyTorch:

  # 1. the inputs: every test discriminator's layers (JSON), weights and inputs (float64)
  ABLATE_WRITE_FIXTURE=1 cargo test --locked --lib write_penalty_fixture_inputs -- --ignored
  # 2. the expected values, by this script (any PyTorch; a venv outside the repository)
  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors numpy
  /tmp/torchvenv/bin/python scripts/penalty_fixture.py tests/fixtures/penalty

It reads `cases.json` (per case: ablate's layer list, parameter names, which weights are
spectrally normalised, classes) and `inputs.safetensors` (per case `<case>/x`,
`<case>/labels`, and the net's checkpoint tensors `<case>/<param>`, `<case>/<weight>_u|_v`)
there and writes `expected.safetensors`: for every case `<case>/R` = mean_i ||grad_x
D(x_i)||^2 (labels held fixed) and `<case>/grad/<param>` = dR/dparam, all float64. The network is rebuilt from ablate's own layer list (each layer's
PyTorch equivalent below), so the script follows the Rust code's definitions rather than
restating the architectures.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

torch.set_default_dtype(torch.float64)


def weight(case, tensors, i):
    """Parameter i, spectrally normalised with the checkpointed u, v when it has them."""
    name = case["param_names"][i]
    w = tensors[name]
    if name in case["sn"]:
        u = case["sn_vectors"][name + "_u"]
        v = case["sn_vectors"][name + "_v"]
        sigma = u @ (w.reshape(u.shape[0], -1) @ v)
        w = w / sigma
    return w


def run(layers, x, case, tensors, labels):
    for layer in layers:
        x = apply(layer, x, case, tensors, labels)
    return x


def apply(layer, x, case, tensors, labels):
    if isinstance(layer, str):
        name, a = layer, None
    else:
        (name, a), = layer.items()
    p = lambda i: tensors[case["param_names"][i]]
    bias = lambda b: None if b is None else p(b)
    if name == "Linear":
        w = weight(case, tensors, a["w"])
        y = F.linear(x.flatten(1), w, bias(a["b"]))
        return y[:, :, None, None]
    if name == "Conv":
        w = weight(case, tensors, a["w"])
        return F.conv2d(x, w, bias(a["b"]), a["stride"], a["pad"], 1, a["groups"])
    if name == "ConvT":
        w = weight(case, tensors, a["w"])
        return F.conv_transpose2d(x, w, bias(a["b"]), a["stride"], a["pad"])
    if name == "LeakyRelu":
        return F.leaky_relu(x, a)
    if name == "Relu":
        return F.relu(x)
    if name == "Scale":
        return x * a
    if name == "AvgPool2":
        return F.avg_pool2d(x, 2)
    if name == "FirDown":
        # R3GAN's InterpolativeDownsamplerReference: every plane correlated with
        # outer([1,3,3,1], [1,3,3,1]) / 64, stride 2, padding 1
        f = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = (torch.outer(f, f) / 64.0).to(x.dtype)[None, None]
        b, c, h, w = x.shape
        y = F.conv2d(x.reshape(b * c, 1, h, w), k, stride=2, padding=1)
        return y.reshape(b, c, h // 2, w // 2)
    if name == "Reshape":
        return x.reshape(x.shape[0], *a)
    if name == "ParamScale":
        return x * p(a["a"])
    if name == "SumPool":
        return x.sum((2, 3), keepdim=True)
    if name == "Residual":
        return run(a["skip"], x, case, tensors, labels) + run(a["body"], x, case, tensors, labels)
    if name == "Project":
        b = x.shape[0]
        phi = x.reshape(b, -1, 1, 1)
        psi = run(a["head"], phi, case, tensors, labels)
        onehot = F.one_hot(labels, case["classes"]).to(x.dtype)[:, :, None, None]
        e = run(a["embed"], onehot, case, tensors, labels)
        return psi + (phi * e).sum(1, keepdim=True)
    raise ValueError(f"layer {name} is not in any discriminator")


def main(folder):
    folder = Path(folder)
    cases = json.loads((folder / "cases.json").read_text())
    inputs = load_file(str(folder / "inputs.safetensors"))
    out = {}
    for cname, case in cases.items():
        pre = f"{cname}/"
        case["sn_vectors"] = {
            n + s: inputs[pre + n + s] for n in case["sn"] for s in ("_u", "_v")
        }
        params = [inputs[pre + n].clone().requires_grad_(True) for n in case["param_names"]]
        tensors = dict(zip(case["param_names"], params))
        x = inputs[pre + "x"].clone().requires_grad_(True)
        labels = inputs[pre + "labels"].long() if case["classes"] else None
        d = run(case["layers"], x, case, tensors, labels)
        (g,) = torch.autograd.grad(d.sum(), x, create_graph=True)
        r = g.pow(2).sum() / x.shape[0]
        grads = torch.autograd.grad(r, params, allow_unused=True)
        out[pre + "R"] = r.detach().reshape(1)
        for n, gr in zip(case["param_names"], grads):
            out[f"{pre}grad/{n}"] = torch.zeros_like(tensors[n]) if gr is None else gr.detach()
        print(f"{cname}: R = {r.item():.6g}")
    save_file({k: v.contiguous() for k, v in out.items()}, str(folder / "expected.safetensors"),
              metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/penalty")
