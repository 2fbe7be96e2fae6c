"""PyTorch reference for the crate's training-step benchmarks (benches/step_time.rs).

Times the same steps as the crate, built the same way:

* ``mlp``: a 3-hidden-layer, 256-wide SiLU MLP (input 2 + 2 + 32, output 2), squared-error
  loss against a fixed random target, Adam (β = (0.9, 0.999), ε = 1e-8, lr 1e-3);
* ``unet``: the crate's default ``UNetConfig`` (MNIST 28×28, 2×2 space-to-depth, 32/64/64
  channels at 14/7/4, one residual block per level, attention at 7×7 with 4 heads, GroupNorm
  with 8 groups, the anchor as input channels, a 32-wide sinusoidal embedding of c_noise),
  squared-error loss against a fixed random target, the same Adam.

Prints one line per run: ``<model> batch=<b> threads=<t> device=<d> median_ms=<m>``.
Run through ``benches/reference/run.sh``, which makes the virtualenv.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, inputs=36, width=256, depth=3, outputs=2):
        super().__init__()
        dims = [inputs] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.out = nn.Linear(width, outputs)

    def forward(self, x):
        for layer in self.hidden:
            x = F.silu(layer(x))
        return self.out(x)


def embed(c_noise, dim=32, scale=1000.0, max_period=10_000.0):
    half = dim // 2
    k = torch.arange(half, device=c_noise.device, dtype=torch.float32)
    freq = scale * max_period ** (-k / half)
    angles = c_noise[:, None] * freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embedding = nn.Linear(emb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c, heads, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x):
        n, c, h, w = x.shape
        seq = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
        q, k, v = self.qkv(seq).split(c, dim=2)
        d = c // self.heads
        split = lambda t: t.reshape(n, h * w, self.heads, d).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d), dim=3)
        out = (weights @ v).transpose(1, 2).reshape(n, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(n, c, h, w)


class Block(nn.Module):
    def __init__(self, c_in, c_out, emb, groups, heads, attends):
        super().__init__()
        self.residual = ResBlock(c_in, c_out, emb, groups)
        self.attention = Attention(c_out, heads, groups) if attends else None

    def forward(self, x, emb):
        h = self.residual(x, emb)
        return self.attention(h) if self.attention is not None else h


class UNet(nn.Module):
    """The crate's ``nn::UNet`` with its default configuration (anchor as channels)."""

    def __init__(self, side=28, patch=2, base=32, mult=(1, 2, 2), res_blocks=1,
                 attention=(7,), heads=4, groups=8, emb_dim=32):
        super().__init__()
        self.side, self.patch = side, patch
        emb = 4 * base
        folded = patch * patch
        self.stem = nn.Conv2d(2 * folded, base, 3, padding=1)
        self.embed_in = nn.Linear(emb_dim, emb)
        self.embed_out = nn.Linear(emb, emb)
        resolution = lambda level: self._resolution(level)
        self.down = nn.ModuleList()
        self.kinds_down = []
        skips, ch = [base], base
        for level, m in enumerate(mult):
            out = base * m
            for _ in range(res_blocks):
                self.down.append(Block(ch, out, emb, groups, heads, resolution(level) in attention))
                self.kinds_down.append("block")
                ch = out
                skips.append(ch)
            if level + 1 < len(mult):
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                self.kinds_down.append("down")
                skips.append(ch)
        self.middle = nn.ModuleList([Block(ch, ch, emb, groups, heads, True),
                                     Block(ch, ch, emb, groups, heads, False)])
        self.up = nn.ModuleList()
        self.kinds_up = []
        for level in reversed(range(len(mult))):
            out = base * mult[level]
            for _ in range(res_blocks + 1):
                skip = skips.pop()
                self.up.append(Block(ch + skip, out, emb, groups, heads,
                                     resolution(level) in attention))
                self.kinds_up.append("block")
                ch = out
            if level > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
                self.kinds_up.append("up")
        self.out_norm = nn.GroupNorm(groups, ch)
        self.out_conv = nn.Conv2d(ch, folded, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _resolution(self, level):
        s = self.side // self.patch
        for _ in range(level):
            s = (s + 1) // 2
        return s

    def forward(self, x, c_noise, anchor):
        return self.trunk(x, embed(c_noise), anchor)

    def trunk(self, x, times, anchor):
        """The network after the time embedding ``times`` (check_export.py gives its own)."""
        n, p, s = x.shape[0], self.patch, self.side
        image = lambda t: F.pixel_unshuffle(t.reshape(n, 1, s, s), p)
        emb = F.silu(self.embed_out(F.silu(self.embed_in(times))))
        h = self.stem(torch.cat([image(x), image(anchor)], dim=1))
        skips = [h]
        for kind, stage in zip(self.kinds_down, self.down):
            h = stage(h, emb) if kind == "block" else stage(h)
            skips.append(h)
        for stage in self.middle:
            h = stage(h, emb)
        for kind, stage in zip(self.kinds_up, self.up):
            if kind == "up":
                sh, sw = skips[-1].shape[2:]
                h = F.interpolate(h, scale_factor=2, mode="nearest")[:, :, :sh, :sw]
                h = stage(h)
            else:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out, p).reshape(n, s * s)


def time_steps(model_name, batch, steps, warmup, device):
    torch.manual_seed(0)
    if model_name == "mlp":
        model = Mlp().to(device)
        inputs = (torch.randn(batch, 36, device=device),)
        target = torch.randn(batch, 2, device=device)
    else:
        model = UNet().to(device)
        inputs = (torch.randn(batch, 784, device=device), torch.rand(batch, device=device),
                  torch.randn(batch, 784, device=device))
        target = torch.randn(batch, 784, device=device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        loss = (model(*inputs) - target).pow(2).mean()
        loss.backward()
        optim.step()
        loss.item()  # finish the step (matters on the GPU)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["mlp", "unet"])
    parser.add_argument("batch", type=int)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ms = time_steps(args.model, args.batch, args.steps, args.warmup, args.device)
    print(f"{args.model} batch={args.batch} threads={args.threads} device={args.device} "
          f"median_ms={ms:.3f}")


if __name__ == "__main__":
    main()
