"""Loads an export of the crate (model.json + model.safetensors) into the PyTorch mirrors of
reference.py and checks that they give the crate's outputs.

    cargo run --release --example network_io -- --model DIR --out IO
    benches/reference/run.sh check DIR IO

IO holds the inputs and the crate's outputs that ``examples/network_io`` wrote (x, c_noise,
gap for a flow-map network, anchor, out). Prints
``network=<mlp|unet> count=<n> max_abs_diff=<d> max_abs_out=<m>`` and exits 1 when the largest
difference exceeds ``--tolerance`` (default 1e-5).

The mapping from the crate's names to the mirror's: burn stores a linear layer's weight as
[in, out] (PyTorch: [out, in]), a GroupNorm's scale and shift as gamma and beta (weight and
bias), and an enum module's variant in the path (``down.0.Block.residual...``), which the
mirror's ModuleList does not have.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402


def embedding(config):
    """The crate's sinusoidal embedding (NoiseEmbedding::Sinusoidal): cos then sin of
    c·scale·max_period^(-k/half)."""
    if config.get("kind") != "sinusoidal":
        raise SystemExit(f"the mirror has the sinusoidal embedding only, not {config}")
    half = config["dim"] // 2
    k = torch.arange(half, dtype=torch.float64)
    freq = (config["scale"] * torch.exp(-math.log(config["max_period"]) * k / half)).float()

    def embed(c):
        angles = c[:, None] * freq[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)

    return embed


def embed_times(embed, c_noise, gap):
    return embed(c_noise) if gap is None else torch.cat([embed(c_noise), embed(gap)], dim=1)


class Mlp(reference.Mlp):
    def __init__(self, config):
        self.embed = embedding(config["embedding"])
        emb = config["embedding"]["dim"] * (2 if config["target_time"] else 1)
        super().__init__(inputs=2 * config["dim"] + emb, width=config["width"],
                         depth=config["depth"], outputs=config["dim"])

    def run(self, x, c_noise, gap, anchor):
        return self.forward(torch.cat([x, anchor, embed_times(self.embed, c_noise, gap)], 1))


class UNet(reference.UNet):
    def __init__(self, config):
        if config["channels"] != 1 or config["height"] != config["width"]:
            raise SystemExit("the UNet mirror takes square one-channel images")
        if config["anchor"]["kind"] != "channels":
            raise SystemExit("the UNet mirror takes the anchor as input channels")
        self.embed = embedding(config["embedding"])
        emb = config["embedding"]["dim"] * (2 if config["target_time"] else 1)
        super().__init__(side=config["height"], patch=config["patch"],
                         base=config["base_channels"], mult=tuple(config["channel_mult"]),
                         res_blocks=config["res_blocks"],
                         attention=tuple(config["attention_resolutions"]),
                         heads=config["heads"], groups=config["groups"], emb_dim=emb)

    def run(self, x, c_noise, gap, anchor):
        return self.trunk(x, embed_times(self.embed, c_noise, gap), anchor)


def mirror_state(tensors, network):
    """The crate's tensors under the mirror's names and layouts."""
    state = {}
    for name, value in tensors.items():
        value = torch.from_numpy(value.astype(np.float32))
        parts = [p for p in name.split(".") if p not in ("Block", "Down", "Up")]
        if network == "mlp" and parts[0] == "output":
            parts[0] = "out"
        leaf = parts[-1]
        if leaf == "gamma":
            parts[-1] = "weight"
        elif leaf == "beta":
            parts[-1] = "bias"
        elif leaf == "weight" and value.dim() == 2:
            value = value.t().contiguous()  # burn's Linear is [in, out]
        state[".".join(parts)] = value
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("io")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with open(os.path.join(args.export, "model.json")) as f:
        card = json.load(f)
    config = dict(card["network"])
    kind = config.pop("kind")
    model = {"mlp": Mlp, "unet": UNet}[kind](config)
    tensors = load_file(os.path.join(args.export, "model.safetensors"))
    missing, unexpected = model.load_state_dict(mirror_state(tensors, kind), strict=False)
    if missing or unexpected:
        raise SystemExit(f"the export does not fit the mirror: missing {missing}, "
                         f"unexpected {unexpected}")
    load = lambda name: torch.from_numpy(np.load(os.path.join(args.io, name)))
    gap_path = os.path.join(args.io, "gap.npy")
    gap = load("gap.npy") if config["target_time"] and os.path.exists(gap_path) else None
    if config["target_time"] and gap is None:
        raise SystemExit("a flow-map network needs gap.npy")
    with torch.no_grad():
        out = model.run(load("x.npy"), load("c_noise.npy"), gap, load("anchor.npy"))
    expected = load("out.npy")
    diff = (out - expected).abs().max().item()
    print(f"network={kind} count={out.shape[0]} max_abs_diff={diff:.3e} "
          f"max_abs_out={expected.abs().max().item():.3e}")
    sys.exit(0 if diff <= args.tolerance else 1)


if __name__ == "__main__":
    main()
