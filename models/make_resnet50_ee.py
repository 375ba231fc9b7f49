#!/usr/bin/python3
"""Writes ResNet-50 with two early exits and random (seeded) weights: the
GPU-scale model of `exitrt bench`. Throughput depends only on
routing, which the bench's exit profiles fix, so random weights are honest
for benchmarks; the model is not meant to classify anything.

    /usr/bin/python3 models/make_resnet50_ee.py OUT_DIR [--seed 0] [--no-check]

The backbone is torchvision.models.resnet50(weights=None) (input 3x224x224
in raw units 0..255 with ImageNet normalisation, 1000 classes, the final
head its fc). Two exits in the layout of Distiller's ImageNet early-exit
ResNet (distiller/models/imagenet/resnet_earlyexit.py), both entropy:
  exit1 after layer1 ([256,56,56]): AvgPool2d(3), Conv2d(256,50,7,s2,p3),
        Conv2d(50,12,7,s2,p3), Flatten, Linear(12*5*5, 1000)
  exit2 after layer2 ([512,28,28]): AvgPool2d(3), Conv2d(512,12,7,s2,p3),
        Flatten, Linear(12*5*5, 1000)
Weights: torchvision's initialisation under torch.manual_seed(seed); the
batch-norm running statistics are then set from seeded random inputs (a few
forward passes in training mode), so activations stay normalised through
the 50 layers; then each head's last linear layer is scaled so its logits
have a standard deviation of 4 on such inputs, so the exits' entropies
spread over [0, log 1000] instead of crowding within 1e-3 of log 1000.
About 100 MB of float32: generate it into a build folder, never commit it.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export as ex  # noqa: E402
from make_cifar_ee import spread_logits  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def build():
    net = torchvision.models.resnet50(weights=None)
    exits = {
        "layer1": (nn.Sequential(nn.AvgPool2d(3),
                                 nn.Conv2d(256, 50, 7, stride=2, padding=3),
                                 nn.Conv2d(50, 12, 7, stride=2, padding=3),
                                 nn.Flatten(), nn.Linear(12 * 5 * 5, 1000)),
                   {"type": "entropy", "threshold": 2.0, "name": "exit1"}),
        "layer2": (nn.Sequential(nn.AvgPool2d(3),
                                 nn.Conv2d(512, 12, 7, stride=2, padding=3),
                                 nn.Flatten(), nn.Linear(12 * 5 * 5, 1000)),
                   {"type": "entropy", "threshold": 2.0, "name": "exit2"}),
    }
    return net, exits


def set_bn_stats(net, seed, batches=2, batch=16):
    gen = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn((batch, 3, 224, 224), generator=gen))
    net.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-check", action="store_true",
                    help="skip the exporter's self-check (slow on a small CPU)")
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(a.seed)
    net, exits = build()
    set_bn_stats(net, a.seed)
    spread_logits(net, exits, net.fc, (3, 224, 224), a.seed, target_std=4.0, batch=8)
    name = "resnet50-ee-random"
    ex.export(net, exits, None, a.out_dir, input_shape=(3, 224, 224), num_classes=1000,
              input_norm=dict(scale=1.0 / 255.0, mean=MEAN, std=STD), name=name,
              check=not a.no_check)
    print(f"{name}: written to {a.out_dir} (random weights, seed {a.seed}, "
          f"{time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
