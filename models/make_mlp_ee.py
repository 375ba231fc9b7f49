#!/usr/bin/python3
"""Writes an early-exit MLP with random (seeded) weights, for benchmarks:
`exitrt bench` throughput depends only on routing, which the bench's exit
profiles fix, so random weights are honest there.

    /usr/bin/python3 models/make_mlp_ee.py OUT_DIR [--hidden 1024] [--layers 3] [--seed 0]

The network is models/fmnist-mlp3's shape: Flatten, then --layers blocks of
Linear(--hidden) and ReLU on a 1x28x28 input (raw units 0..255, Fashion-MNIST's
normalisation), an exit with a Linear(hidden, 10) head and a max_prob policy
after every block but the last, and a Linear(hidden, 10) final head; with
the defaults 784-1024x3, 2.91 MMAC/sample, three exits (two early ones and
the final head). Each head's linear layer is scaled so its logits have a
standard deviation of 2 on seeded random inputs (as models/make_cifar_ee.py
does), which spreads the exits' scores out.
The model is not committed: generate it into a build folder.
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export as ex  # noqa: E402
from make_cifar_ee import spread_logits  # noqa: E402


def build(hidden, layers):
    backbone = nn.Sequential()
    backbone.add_module("flatten", nn.Flatten(1))
    width = 28 * 28
    for i in range(layers):
        backbone.add_module(f"block{i + 1}", nn.Sequential(nn.Linear(width, hidden), nn.ReLU()))
        width = hidden
    exits = {f"block{i + 1}": (nn.Sequential(nn.Linear(hidden, 10)),
                               {"type": "max_prob", "threshold": 0.7, "name": f"exit{i + 1}"})
             for i in range(layers - 1)}
    return backbone, exits, nn.Linear(hidden, 10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.layers < 2:
        raise SystemExit("--layers: at least 2 (an early exit after each block but the last)")
    torch.manual_seed(a.seed)
    backbone, exits, final = build(a.hidden, a.layers)
    backbone.eval()
    spread_logits(backbone, exits, final, (1, 28, 28), a.seed, target_std=2.0)
    name = f"mlp784-{a.hidden}x{a.layers}-ee-random"
    ex.export(backbone, exits, final, a.out_dir, input_shape=(1, 28, 28), num_classes=10,
              input_norm=dict(scale=1.0 / 255.0, mean=[0.286], std=[0.353]), name=name)
    print(f"{name}: written to {a.out_dir} (random weights, seed {a.seed})")


if __name__ == "__main__":
    main()
