"""The DCGAN training step of benches/train_step.rs in PyTorch on the CPU, for comparison.

Same nets (G: z 128 -> linear 256x4x4 + BN + ReLU -> 3 x (ConvTranspose k4 s2 p1 + BN +
ReLU) -> 3x3 conv -> tanh; D: 3 x (conv k4 s2 p1 + LeakyReLU 0.2) -> linear), same step
(rpgan loss, R1 + R2 with gamma 0.1 on the D step, then a G step, Adam betas (0, 0.99),
EMA of G), batch 64, 3x32x32. Images/s = batch * steps / seconds, as in ablate.

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
  /tmp/torchvenv/bin/python benches/torch_dcgan.py [--steps 5] [--threads 2] [--penalty double|fd]

--penalty double (default): R1/R2 by double backward (create_graph), what PyTorch code does.
--penalty fd: the same finite-difference Hessian-vector product ablate uses (two extra
first-order passes), to compare like with like.
"""

import argparse
import copy
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

B, C, R, Z, W = 64, 3, 32, 128, 32


def G():
    layers = [nn.Linear(Z, 8 * W * 16, bias=False), nn.Unflatten(1, (8 * W, 4, 4)),
              nn.BatchNorm2d(8 * W), nn.ReLU()]
    c = 8 * W
    for _ in range(3):
        layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
        c //= 2
    layers += [nn.Conv2d(c, C, 3, 1, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def D():
    layers, c = [], C
    for co in (2 * W, 4 * W, 8 * W):
        layers += [nn.Conv2d(c, co, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = co
    layers += [nn.Flatten(), nn.Linear(c * 16, 1)]
    return nn.Sequential(*layers)


def grad_sq(d, x, create_graph):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=create_graph)
    return g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--penalty", choices=["double", "fd"], default="double")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    g, d = G(), D()
    g_ema = copy.deepcopy(g).eval()
    og = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.0, 0.99), eps=1e-8)
    od = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.99), eps=1e-8)
    data = torch.rand(512, C, R, R) * 2 - 1
    gamma, delta = 0.1, 1e-3

    def step():
        # D step
        real = data[torch.randint(0, len(data), (B,))]
        with torch.no_grad():
            fake = g(torch.randn(B, Z))
        od.zero_grad(set_to_none=True)
        if a.penalty == "double":
            xr = real.clone().requires_grad_(True)
            xf = fake.clone().requires_grad_(True)
            out = d(torch.cat([xr, xf])).flatten()
            loss = F.softplus(out[B:] - out[:B]).mean()
            gr, gf = torch.autograd.grad(out.sum(), [xr, xf], create_graph=True)
            r1 = gr.square().sum([1, 2, 3]).mean()
            r2 = gf.square().sum([1, 2, 3]).mean()
            (loss + gamma / 2 * (r1 + r2)).backward()
        else:
            out = d(torch.cat([real, fake])).flatten()
            F.softplus(out[B:] - out[:B]).mean().backward()
            for x in (real, fake):
                gx = grad_sq(d, x, False)
                val = gx.square().sum() / B
                rms = (val * B / gx.numel()).sqrt()
                eps = delta / rms
                both = torch.cat([x + eps * gx, x - eps * gx])
                o = d(both).flatten()
                k = 1.0 / (B * eps)
                # grad of gamma/2 * R = gamma/2 * (sum D(x+) - sum D(x-)) / (B eps)
                (gamma / 2 * k * (o[:B].sum() - o[B:].sum())).backward()
        od.step()
        # G step
        real = data[torch.randint(0, len(data), (B,))]
        with torch.no_grad():
            dr = d(real).flatten()
        og.zero_grad(set_to_none=True)
        df = d(g(torch.randn(B, Z))).flatten()
        F.softplus(dr - df).mean().backward()
        og.step()
        with torch.no_grad():
            for pe, p in zip(g_ema.parameters(), g.parameters()):
                pe.lerp_(p, 1 - 0.999)

    step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    s = time.perf_counter() - t0
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
    print(f"torch {torch.__version__} dcgan ({a.penalty} penalty, {a.threads} threads): "
          f"{a.steps} steps {s:.2f} s | {s / a.steps:.3f} s/step | {a.steps * B / s:.1f} images/s "
          f"| peak RSS {int(hwm) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
