#!/usr/bin/python3
"""Writes a CIFAR-scale early-exit ResNet with random (seeded) weights, for
benchmarks: `exitrt bench` throughput depends only on routing, which the
bench's exit profiles fix, so random weights are honest there.

    /usr/bin/python3 models/make_cifar_ee.py OUT_DIR [--depth 20] [--seed 0]
    /usr/bin/python3 models/make_cifar_ee.py OUT_DIR --arch resnet18 [--seed 0]

The network is the CIFAR ResNet of He et al. (depth 6n+2: a 3x3 stem with 16
channels, three stages of n BasicBlocks with 16, 32 and 64 channels, global
average pooling, a 10-class linear layer) with two early exits in Distiller's
layout (distiller/models/cifar10/resnet_cifar_earlyexit.py): after layer1
AvgPool2d(3), Flatten, Linear(16*10*10, 10); after layer2 AvgPool2d(3),
Flatten, Linear(32*5*5, 10). Input 3x32x32 (raw units 0..255), 10 classes,
entropy policies (the bench sets the thresholds).

--arch resnet18 writes the CIFAR variant of ResNet-18 instead (a 3x3 stem
with 64 channels and no max pooling, four stages of two BasicBlocks with
64, 128, 256 and 512 channels; 557 MMAC/sample) with the same two exits
after layer1 and layer2: AvgPool2d(3), Flatten, Linear(64*10*10, 10) and
Linear(128*5*5, 10).

Batch-norm statistics are set by running seeded random inputs through the
network in training mode, so activations stay normalised through the depth;
then each head's last linear layer is scaled so its logits have a standard
deviation of 2 on such inputs, which spreads the exits' scores out (neither
saturated softmaxes, whose scores tie, nor near-uniform ones, whose scores
crowd within float rounding of each other).
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
from blocks import BasicBlock, downsample  # noqa: E402

MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


def stage(inplanes, planes, n, stride):
    blocks = [BasicBlock(inplanes, planes, stride, downsample(inplanes, planes, stride))]
    blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def build_resnet18():
    backbone = nn.Sequential()
    backbone.add_module("conv1", nn.Conv2d(3, 64, 3, padding=1, bias=False))
    backbone.add_module("bn1", nn.BatchNorm2d(64))
    backbone.add_module("relu", nn.ReLU(inplace=True))
    backbone.add_module("layer1", stage(64, 64, 2, 1))
    backbone.add_module("layer2", stage(64, 128, 2, 2))
    backbone.add_module("layer3", stage(128, 256, 2, 2))
    backbone.add_module("layer4", stage(256, 512, 2, 2))
    backbone.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    backbone.add_module("flatten", nn.Flatten(1))
    exits = {
        "layer1": (nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(64 * 10 * 10, 10)),
                   {"type": "entropy", "threshold": 0.5, "name": "exit1"}),
        "layer2": (nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(128 * 5 * 5, 10)),
                   {"type": "entropy", "threshold": 0.5, "name": "exit2"}),
    }
    return backbone, exits, nn.Linear(512, 10)


def build(depth):
    if (depth - 2) % 6 != 0 or depth < 8:
        raise SystemExit(f"--depth {depth}: must be 6n+2 (8, 14, 20, 32, 44, 56, 110)")
    n = (depth - 2) // 6
    backbone = nn.Sequential()
    backbone.add_module("conv1", nn.Conv2d(3, 16, 3, padding=1, bias=False))
    backbone.add_module("bn1", nn.BatchNorm2d(16))
    backbone.add_module("relu", nn.ReLU(inplace=True))
    backbone.add_module("layer1", stage(16, 16, n, 1))
    backbone.add_module("layer2", stage(16, 32, n, 2))
    backbone.add_module("layer3", stage(32, 64, n, 2))
    backbone.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    backbone.add_module("flatten", nn.Flatten(1))
    exits = {
        "layer1": (nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(16 * 10 * 10, 10)),
                   {"type": "entropy", "threshold": 0.5, "name": "exit1"}),
        "layer2": (nn.Sequential(nn.AvgPool2d(3), nn.Flatten(), nn.Linear(32 * 5 * 5, 10)),
                   {"type": "entropy", "threshold": 0.5, "name": "exit2"}),
    }
    final = nn.Linear(64, 10)
    return backbone, exits, final


def set_bn_stats(backbone, shape, seed, batches=4, batch=64):
    """BN running statistics from seeded random inputs (cumulative average)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    backbone.train()
    with torch.no_grad():
        for _ in range(batches):
            backbone(torch.randn((batch,) + tuple(shape), generator=gen))
    backbone.eval()


def last_linear(m):
    lin = [c for c in m.modules() if isinstance(c, nn.Linear)]
    return lin[-1]


def spread_logits(backbone, exits, final, shape, seed, target_std, batch=32):
    """Scales each head's last linear layer so its logits have a standard
    deviation of target_std on seeded random inputs. Random heads otherwise
    give near-uniform softmaxes whose scores crowd into a sliver (entropy
    all within 1e-3 of log K), where float rounding decides the order; with
    spread-out scores the bench's thresholds sit between well-separated
    neighbours."""
    gen = torch.Generator().manual_seed(seed + 2)
    x = torch.randn((batch,) + tuple(shape), generator=gen)
    with torch.no_grad():
        logits, _ = ex.forward_exits(backbone, exits, final, x)
        heads = [spec[0] for spec in exits.values()] + [final]
        for head, z in zip(heads, logits):
            lin = last_linear(head)
            k = target_std / max(float(z.std()), 1e-12)
            lin.weight.mul_(k)
            if lin.bias is not None:
                lin.bias.mul_(k)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", choices=["resnet", "resnet18"], default="resnet",
                    help="resnet: He et al.'s CIFAR ResNet of --depth; resnet18: ResNet-18")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    backbone, exits, final = build_resnet18() if a.arch == "resnet18" else build(a.depth)
    set_bn_stats(backbone, (3, 32, 32), a.seed)
    spread_logits(backbone, exits, final, (3, 32, 32), a.seed, target_std=2.0)
    name = f"cifar-resnet{18 if a.arch == 'resnet18' else a.depth}-ee-random"
    ex.export(backbone, exits, final, a.out_dir, input_shape=(3, 32, 32), num_classes=10,
              input_norm=dict(scale=1.0 / 255.0, mean=MEAN, std=STD), name=name)
    print(f"{name}: written to {a.out_dir} (random weights, seed {a.seed})")


if __name__ == "__main__":
    main()
