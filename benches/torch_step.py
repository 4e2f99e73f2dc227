"""The training step of benches/train_step.rs in PyTorch on the CPU, for comparison.

The same nets as ablate's `dcgan`, `resnet` and `r3gan` (variant E) at 3x32x32 for a base
width W (src/gan/nets/; channels at resolution r are min(W * 32 / r, 8 W)), with the
same parameter counts (printed, and checked by the Rust bench), and the same step: D step
with the rpgan loss and R1 + R2 (gamma 0.1), then a G step, Adam betas (0, 0.99), EMA of
G; batch 64. Images/s = batch * steps / seconds, as in ablate.

`r3gan-e` is ablate's R3GAN as the official code (brownvc/R3GAN) builds it, layer for
layer and with ablate's parameter names and shapes: 2 blocks per stage (1x1 to 2c,
grouped 3x3 with 16 channels per group, bias-free 1x1 back, residual), bias-free 1x1
transitions, [1, 3, 3, 1] FIR up/down-sampling as depthwise (transposed) convs with the
outer-product kernel (stride 2, padding 1), G: generative basis in, bias-free 1x1 out (no
tanh); D: bias-free 1x1 in, discriminative basis (depthwise 4x4, bias-free linear) out
with no activation before it. Only the init differs (ablate's fix-up init is not copied;
speed does not depend on it).

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
import warnings
from collections import OrderedDict

# the CPU wheel warns at import when NumPy is missing; nothing here uses NumPy
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
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
# As ablate's r3gan_g / r3gan_d (src/gan/nets.rs), which follow the official R3GAN code
# (brownvc/R3GAN, Networks.py): 2 blocks per stage, grouped-conv inverted bottleneck
# blocks, [1, 3, 3, 1] FIR resampling, generative / discriminative basis. Module names
# mirror ablate's parameter names (`stages.1.blocks.0.conv1.weight`, ...). The init is not
# ablate's (fix-up etc.): the bench measures speed; the ops and shapes are the same.

DEPTH = 2  # blocks per stage
FIR = torch.tensor([1.0, 3.0, 3.0, 1.0])
FIR2D = torch.outer(FIR, FIR) / FIR.sum() ** 2  # outer([1,3,3,1]) / 64


def inner(c):
    """Inner width and groups of a variant E block: 2c rounded up to groups of 16."""
    ci = max(round(c * 2.0), 1)
    gs = min(16, ci)
    ci = -(-ci // gs) * gs
    return ci, ci // gs


class R3Block(nn.Module):
    """x + conv3(lrelu(conv2(lrelu(conv1(x))))): 1x1 to 2c, grouped 3x3, bias-free 1x1."""

    def __init__(self, c):
        super().__init__()
        ci, groups = inner(c)
        self.conv1 = nn.Conv2d(c, ci, 1)
        self.conv2 = nn.Conv2d(ci, ci, 3, 1, 1, groups=groups)
        self.conv3 = nn.Conv2d(ci, c, 1, bias=False)

    def forward(self, x):
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = F.leaky_relu(self.conv2(h), 0.2)
        return x + self.conv3(h)


class FirUp(nn.Module):
    """2x upsampling as upfirdn2d(up=2) with [1,3,3,1] (gain 4): a depthwise transposed
    conv with outer([1,3,3,1]) / 16, stride 2, padding 1 (ablate's Layer::FirUp)."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("k", (FIR2D * 4).expand(c, 1, 4, 4).contiguous(), persistent=False)

    def forward(self, x):
        return F.conv_transpose2d(x, self.k, stride=2, padding=1, groups=x.shape[1])


class FirDown(nn.Module):
    """2x downsampling as upfirdn2d(down=2) with [1,3,3,1]: a depthwise conv with
    outer([1,3,3,1]) / 64, stride 2, padding 1 (ablate's Layer::FirDown)."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("k", FIR2D.expand(c, 1, 4, 4).contiguous(), persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.k, stride=2, padding=1, groups=x.shape[1])


class GenBasis(nn.Module):
    """Generative basis: a bias-free linear map z -> c scaling a learned (c, 4, 4) basis."""

    def __init__(self, z, c, h, w):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(c, h, w))
        self.linear = nn.Linear(z, c, bias=False)

    def forward(self, z):
        return self.linear(z)[:, :, None, None] * self.basis[None]


def r3gan_g(w):
    """basis, stage 0 (4x4): 2 blocks; stages 1..3: bias-free 1x1 transition (at the low
    resolution), FIR up, 2 blocks; bias-free 1x1 to the image (no tanh)."""
    stages, r, s = [], 4, 0
    while True:
        c = chans(w, r)
        st = nn.Sequential()
        if s > 0:
            cp = chans(w, r // 2)
            if cp != c:
                st.add_module("transition", nn.Conv2d(cp, c, 1, bias=False))
            st.add_module("up", FirUp(c))
        st.add_module("blocks", nn.Sequential(*[R3Block(c) for _ in range(DEPTH)]))
        stages.append(st)
        if r == R:
            break
        r, s = 2 * r, s + 1
    return nn.Sequential(OrderedDict(
        basis=GenBasis(Z, chans(w, 4), 4, 4),
        stages=nn.Sequential(*stages),
        to_img=nn.Conv2d(chans(w, R), C, 1, bias=False),
    ))


def r3gan_d(w):
    """bias-free 1x1 from the image; per stage 2 blocks, then (above 4x4) FIR down and a
    bias-free 1x1 transition; the discriminative basis: bias-free depthwise 4x4 conv
    (valid) and a bias-free linear to the score, no activation before it."""
    stages, r = [], R
    while True:
        c = chans(w, r)
        st = nn.Sequential()
        st.add_module("blocks", nn.Sequential(*[R3Block(c) for _ in range(DEPTH)]))
        if r > 4:
            cn = chans(w, r // 2)
            st.add_module("down", FirDown(c))
            if cn != c:
                st.add_module("transition", nn.Conv2d(c, cn, 1, bias=False))
        stages.append(st)
        if r == 4:
            break
        r //= 2
    c = chans(w, 4)
    return nn.Sequential(OrderedDict(
        from_img=nn.Conv2d(C, chans(w, R), 1, bias=False),
        stages=nn.Sequential(*stages),
        basis=nn.Conv2d(c, c, 4, groups=c, bias=False),
        flatten=nn.Flatten(),
        fc=nn.Linear(c, 1, bias=False),
    ))


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
