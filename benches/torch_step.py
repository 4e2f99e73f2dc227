"""The training step of benches/train_step.rs in PyTorch on the CPU, for comparison.

The same nets as ablate's `dcgan`, `resnet` and `r3gan` (variant E) at 3x32x32 for a base
width W (src/gan/nets/; channels at resolution r are min(W * 32 / r, 8 W)), with the
same parameter counts (printed, and checked by the Rust bench), and the same step: D step
with the rpgan loss and R1 + R2 (gamma 0.1), then a G step, Adam betas (0, 0.99), EMA of
G; batch 64. Images/s = batch * steps / seconds, as in ablate.

  /root/torchvenv/bin/python benches/torch_step.py --net resnet --width 32 [--steps 5]
      [--threads 2] [--penalty fd|double] [--json]

--penalty fd (default): the finite-difference Hessian-vector product ablate uses (two
extra first-order passes per penalty), to compare like with like.
--penalty double: R1/R2 by double backward (create_graph), what PyTorch code usually does.
--json: one line `RESULT {...}` for benches/train_step.rs.
"""

import argparse
import copy
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

B, C, R, Z = 64, 3, 32, 128


def chans(w, r):
    return min(w * R // r, 8 * w)


# ---------------------------------------------------------------- dcgan

def dcgan_g(w):
    c = chans(w, 4)
    layers = [nn.Linear(Z, c * 16, bias=False), nn.Unflatten(1, (c, 4, 4)), nn.BatchNorm2d(c), nn.ReLU()]
    r = 4
    while r < R:
        ci, co = chans(w, r), chans(w, 2 * r)
        layers += [nn.ConvTranspose2d(ci, co, 4, 2, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU()]
        r *= 2
    layers += [nn.Conv2d(chans(w, R), C, 3, 1, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def dcgan_d(w):
    layers, ci, r = [], C, R
    while r > 4:
        co = chans(w, r // 2)
        layers += [nn.Conv2d(ci, co, 4, 2, 1), nn.LeakyReLU(0.2)]
        ci, r = co, r // 2
    layers += [nn.Flatten(), nn.Linear(ci * 16, 1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- resnet (SNGAN-style)

class Residual(nn.Module):
    def __init__(self, body, skip):
        super().__init__()
        self.body, self.skip = nn.Sequential(*body), nn.Sequential(*skip)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Up(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SumPool(nn.Module):
    def forward(self, x):
        return x.sum((2, 3))


def resnet_g(w):
    c0 = chans(w, 4)
    layers = [nn.Linear(Z, c0 * 16), nn.Unflatten(1, (c0, 4, 4))]
    r = 4
    while r < R:
        ci, co = chans(w, r), chans(w, 2 * r)
        body = [nn.BatchNorm2d(ci), nn.ReLU(), Up("nearest"), nn.Conv2d(ci, co, 3, 1, 1),
                nn.BatchNorm2d(co), nn.ReLU(), nn.Conv2d(co, co, 3, 1, 1)]
        skip = [Up("nearest"), nn.Conv2d(ci, co, 1)]
        layers.append(Residual(body, skip))
        r *= 2
    c = chans(w, R)
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, C, 3, 1, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def resnet_d(w, extra=2):
    n = {16: 2, 32: 3, 64: 4}[R]
    n_down = max(n - 1, 1)
    layers, r, ci = [], R, C
    for i in range(n_down + extra):
        down = i < n_down
        co = chans(w, r // 2) if down else ci
        body = [] if i == 0 else [nn.ReLU()]
        body += [nn.Conv2d(ci, co, 3, 1, 1), nn.ReLU(), nn.Conv2d(co, co, 3, 1, 1)]
        if down:
            body.append(nn.AvgPool2d(2))
        skip = []
        if down or ci != co:
            sc = nn.Conv2d(ci, co, 1)
            skip = [nn.AvgPool2d(2), sc] if i == 0 else ([sc, nn.AvgPool2d(2)] if down else [sc])
        layers.append(Residual(body, skip))
        if down:
            r //= 2
        ci = co
    layers += [nn.ReLU(), SumPool(), nn.Linear(ci, 1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- r3gan (variant E)

def inner(c):
    ci = max(round(c * 2.0), 1)
    gs = min(16, ci)
    ci = -(-ci // gs) * gs
    return ci, ci // gs


def res_block(c):
    ci, groups = inner(c)
    body = [nn.Conv2d(c, ci, 1), nn.LeakyReLU(0.2), nn.Conv2d(ci, ci, 3, 1, 1, groups=groups),
            nn.LeakyReLU(0.2), nn.Conv2d(ci, c, 1)]
    return Residual(body, [])


class Basis(nn.Module):
    """z -> per-channel coefficients (linear) times a learned c x 4 x 4 basis."""

    def __init__(self, z, c, h, w):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(c, h, w))
        self.fc = nn.Linear(z, c)

    def forward(self, z):
        return self.fc(z)[:, :, None, None] * self.basis[None]


def r3gan_g(w):
    layers = [Basis(Z, chans(w, 4), 4, 4)]
    r = 4
    while True:
        c = chans(w, r)
        if r > 4:
            layers += [nn.Conv2d(chans(w, r // 2), c, 1), Up("bilinear")]
        layers.append(res_block(c))
        if r == R:
            break
        r *= 2
    layers.append(nn.Conv2d(chans(w, R), C, 1))
    return nn.Sequential(*layers)


def r3gan_d(w):
    layers, r = [nn.Conv2d(C, chans(w, R), 1)], R
    while True:
        c = chans(w, r)
        layers.append(res_block(c))
        if r == 4:
            break
        layers += [nn.AvgPool2d(2), nn.Conv2d(c, chans(w, r // 2), 1)]
        r //= 2
    c = chans(w, 4)
    layers += [nn.LeakyReLU(0.2), nn.Conv2d(c, c, 4, groups=c, bias=False), nn.Flatten(), nn.Linear(c, 1)]
    return nn.Sequential(*layers)


NETS = {"dcgan": (dcgan_g, dcgan_d), "resnet": (resnet_g, resnet_d), "r3gan-e": (r3gan_g, r3gan_d)}


def count(m):
    return sum(p.numel() for p in m.parameters())


def grad_sq(d, x, create_graph):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=create_graph)
    return g


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=sorted(NETS), default="dcgan")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--penalty", choices=["double", "fd"], default="fd")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    mk_g, mk_d = NETS[a.net]
    g, d = mk_g(a.width), mk_d(a.width)
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

    t0 = time.perf_counter()
    step()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    s = time.perf_counter() - t0
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
    res = {
        "net": a.net,
        "width": a.width,
        "torch": torch.__version__,
        "threads": a.threads,
        "penalty": a.penalty,
        "params_g": count(g),
        "params_d": count(d),
        "warmup_s": warm,
        "steps": a.steps,
        "seconds": s,
        "images_per_s": a.steps * B / s,
        "peak_rss_mib": int(hwm) / 1024,
    }
    if a.json:
        print("RESULT " + json.dumps(res), flush=True)
    else:
        print(f"torch {torch.__version__} {a.net} width {a.width} ({a.penalty} penalty, {a.threads} threads): "
              f"G {res['params_g']} D {res['params_d']} params | {a.steps} steps {s:.2f} s | "
              f"{s / a.steps:.3f} s/step | {res['images_per_s']:.1f} images/s | "
              f"peak RSS {res['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
