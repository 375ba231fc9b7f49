#!/usr/bin/python3
"""Writes ResNet-50 with Distiller's two ImageNet early exits and random
(seeded) weights in exitrt's model format, with numpy alone: the GPU
check generates it on the device machine (bench/device.sh bench), where it
is too big to carry (~100 MB), and the same seed gives the same bytes.

    /usr/bin/python3 bench/make_resnet50.py OUT_DIR [--seed 0] [--samples 256]
                     [--image 224] [--width-div 1]

The network is models/make_resnet50_ee.py's (which needs PyTorch and
torchvision, and sets the batch-norm statistics by forward passes, so its
bytes depend on the machine's kernels): torchvision's resnet50 (a 7x7/2
stem, a 3x3/2 max pool, bottlenecks [3, 4, 6, 3] of widths 64..512 with
the stride on the 3x3 conv, a global average pool and a 2048-to-1000
linear head), input 3xIMAGExIMAGE in raw units 0..255 with ImageNet's
normalisation, and two entropy exits in the layout of Distiller's
ImageNet early-exit ResNet (distiller/models/imagenet/resnet_earlyexit.py):
  exit1 after layer1: AvgPool2d(3), Conv2d(256,50,7,s2,p3),
        Conv2d(50,12,7,s2,p3), Flatten, Linear(12*5*5, 1000)
  exit2 after layer2: AvgPool2d(3), Conv2d(512,12,7,s2,p3), Flatten,
        Linear(12*5*5, 1000)
(5x5 at 224; the linear layers follow the image size.) About 4.1 GMAC per
sample at 224.

Weights: as torchvision initialises them (backbone convs normal with
std sqrt(2 / (k^2 out)), batch-norm scale 1 and shift 0; the heads'
convs and linears uniform within 1/sqrt(fan_in), as nn.Conv2d and
nn.Linear), from numpy's default_rng(seed). No forward pass: each batch
norm's running variance is the second moment its convolution's output
has when the convolution's input has the second moment the network's
structure predicts (a convolution multiplies it by the sum of its
channel's squared weights, a ReLU halves it, a residual sums its
branches), running mean 0, so that activations stay of unit scale
through the 50 layers. Each head's last linear layer is then scaled so
that its logits have a predicted standard deviation of 1 + 1.5 s (s = 0,
1, 2 for exit1, exit2, the final head): the exits' entropies spread over
(0, ln 1000) instead of crowding near ln 1000, which the bench's profiles
need. Random weights classify nothing: throughput depends only on the
routing, which the bench's exit profiles fix.

Sample data: `sample_data.npy` float32 [N, 3, IMAGE, IMAGE], uniform in
[0, 255); `sample_labels.npy` int32 [N] uniform over the classes.

--image and --width-div (every channel count divided by it) shrink the
network for tests (64 and 8: a few MB, written in well under a second).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_encoder import Weights  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
K = 1000


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


class Net:
    """Writes layers and tracks the predicted second moment of the
    activation (m2) and its spatial size (hw) and channels (c)."""

    def __init__(self, w, m2, c, hw):
        self.w, self.m2, self.c, self.hw = w, m2, c, hw

    def conv(self, name, prefix, cout, k, s, p, head=False):
        cin = self.c
        if head:  # nn.Conv2d's default: kaiming_uniform(a=sqrt 5), bias uniform
            bound = 1.0 / np.sqrt(cin * k * k)
            wt = self.w.rng.uniform(-bound, bound, (cout, cin, k, k)).astype(np.float32)
            b = self.w.rng.uniform(-bound, bound, cout).astype(np.float32)
        else:  # torchvision's resnet: kaiming_normal(fan_out, relu), no bias
            wt = self.w.rng.standard_normal((cout, cin, k, k), dtype=np.float32)
            wt *= np.float32(np.sqrt(2.0 / (k * k * cout)))
            b = None
        L = {"name": name, "type": "conv2d", "in_channels": cin, "out_channels": cout,
             "kernel_size": k, "stride": s, "padding": p, "dilation": 1, "groups": 1,
             "weight": self.w.add(prefix + ".weight", wt)}
        # per output channel: E[y^2] = sum of its squared weights * E[x^2] (+ bias^2)
        ch = (wt.astype(np.float64) ** 2).sum(axis=(1, 2, 3)) * self.m2
        if b is not None:
            L["bias"] = self.w.add(prefix + ".bias", b)
            ch += b.astype(np.float64) ** 2
        self.c, self.hw = cout, out_size(self.hw, k, s, p)
        self.m2 = float(ch.mean())
        return L, ch

    def bn(self, name, prefix, var):
        c = len(var)
        L = {"name": name, "type": "batchnorm2d", "num_features": c, "eps": 1e-05,
             "weight": self.w.const(prefix + ".weight", c, 1.0),
             "bias": self.w.const(prefix + ".bias", c, 0.0),
             "running_mean": self.w.const(prefix + ".running_mean", c, 0.0),
             "running_var": self.w.add(prefix + ".running_var", var.astype(np.float32))}
        self.m2 = 1.0
        return L

    def relu(self, name):
        self.m2 *= 0.5
        return {"name": name, "type": "relu"}


def bottleneck(net, name, width, stride, shortcut):
    """torchvision's Bottleneck as one exitrt residual."""
    p = "backbone." + name
    m2_in, c_in, hw_in = net.m2, net.c, net.hw
    body = []
    L, v = net.conv("conv1", p + ".conv1", width, 1, 1, 0)
    body += [L, net.bn("bn1", p + ".bn1", v), net.relu("relu1")]
    L, v = net.conv("conv2", p + ".conv2", width, 3, stride, 1)
    body += [L, net.bn("bn2", p + ".bn2", v), net.relu("relu2")]
    L, v = net.conv("conv3", p + ".conv3", 4 * width, 1, 1, 0)
    body += [L, net.bn("bn3", p + ".bn3", v)]
    out_c, out_hw = net.c, net.hw
    res = {"name": name, "type": "residual", "body": body, "activation": "relu"}
    if shortcut:
        net.m2, net.c, net.hw = m2_in, c_in, hw_in
        L, v = net.conv("downsample.0", p + ".downsample.0", 4 * width, 1, stride, 0)
        res["shortcut"] = [L, net.bn("downsample.1", p + ".downsample.1", v)]
        short_m2 = 1.0
    else:
        short_m2 = m2_in
    net.c, net.hw = out_c, out_hw
    net.m2 = 0.5 * (1.0 + short_m2)  # the sum of the branches, then the ReLU
    return res


def scale_head(w, name, m2_in, target_std):
    """Scales the weights of the linear layer `name` (already in w) so that
    its logits have the predicted standard deviation target_std."""
    for i, (n, a) in enumerate(w.items):
        if n == name:
            pred = np.sqrt((a.astype(np.float64) ** 2).sum(axis=1).mean() * m2_in)
            w.items[i] = (n, np.ascontiguousarray(a * np.float32(target_std / pred),
                                                  dtype="<f4"))
            return
    raise KeyError(name)


def linear(w, name, prefix, n_in, n_out):
    bound = 1.0 / np.sqrt(n_in)
    return {"name": name, "type": "linear", "in_features": n_in, "out_features": n_out,
            "weight": w.add(prefix + ".weight",
                            w.rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32)),
            "bias": w.add(prefix + ".bias", w.rng.uniform(-bound, bound, n_out)
                          .astype(np.float32))}


def exit_head(w, net, name, convs, target_std):
    """Distiller's head on a copy of the tracker: AvgPool2d(3), the convs
    [(out, k, stride, pad)], Flatten, Linear to K."""
    h = Net(w, net.m2, net.c, net.hw)
    p = f"exits.{name}.head"
    layers = [{"name": "0", "type": "avgpool2d", "kernel_size": 3, "stride": 3, "padding": 0}]
    h.hw = out_size(h.hw, 3, 3, 0)
    # an average of 9 (spatially correlated) values: keep the second moment
    for i, (cout, k, s, pad) in enumerate(convs):
        L, _ = h.conv(str(i + 1), f"{p}.{i + 1}", cout, k, s, pad, head=True)
        layers.append(L)
    n = len(layers)
    layers.append({"name": str(n), "type": "flatten"})
    n_in = h.c * h.hw * h.hw
    layers.append(linear(w, str(n + 1), f"{p}.{n + 1}", n_in, K))
    scale_head(w, f"{p}.{n + 1}.weight", h.m2, target_std)
    return {"name": name, "after": None, "head": layers,
            "policy": {"type": "entropy", "threshold": 2.0}}


def build(a, w):
    d = a.width_div
    net = Net(w, 1.7, 3, a.image)  # normalised uniform [0, 255): E[x^2] about 1.7
    bb = []
    L, v = net.conv("conv1", "backbone.conv1", 64 // d, 7, 2, 3)
    bb += [L, net.bn("bn1", "backbone.bn1", v), net.relu("relu")]
    bb.append({"name": "maxpool", "type": "maxpool2d", "kernel_size": 3, "stride": 2,
               "padding": 1})
    net.hw = out_size(net.hw, 3, 2, 1)
    exits = []
    for li, (blocks, width, stride) in enumerate([(3, 64, 1), (4, 128, 2), (6, 256, 2),
                                                  (3, 512, 2)]):
        for b in range(blocks):
            bb.append(bottleneck(net, f"layer{li + 1}.{b}", width // d, stride if b == 0 else 1,
                                 b == 0))
        if li == 0:
            e = exit_head(w, net, "exit1", [(50, 7, 2, 3), (12, 7, 2, 3)], 1.0)
        elif li == 1:
            e = exit_head(w, net, "exit2", [(12, 7, 2, 3)], 2.5)
        else:
            continue
        e["after"] = bb[-1]["name"]
        exits.append(e)
    bb += [{"name": "avgpool", "type": "global_avgpool"}, {"name": "flatten", "type": "flatten"}]
    fc = linear(w, "fc", "final", net.c, K)
    scale_head(w, "final.weight", net.m2, 4.0)
    final = {"name": "final", "head": [fc]}
    return bb, exits, final


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--width-div", type=int, default=1, choices=[1, 2, 4, 8])
    a = ap.parse_args()
    if a.image < 64:
        sys.exit("make_resnet50: --image must be at least 64 (the exits' pools need room)")
    rng = np.random.default_rng(a.seed)
    w = Weights(rng)
    backbone, exits, final = build(a, w)
    os.makedirs(a.out, exist_ok=True)
    x = (rng.random((a.samples, 3, a.image, a.image), dtype=np.float32) * np.float32(255.0))
    y = rng.integers(0, K, size=a.samples).astype(np.int32)
    np.save(os.path.join(a.out, "sample_data.npy"), x)
    np.save(os.path.join(a.out, "sample_labels.npy"), y)
    size = "" if a.width_div == 1 and a.image == 224 else f"-w{a.width_div}-i{a.image}"
    j = {"format": "exitrt-model", "version": 1, "name": f"resnet50{size}-ee-random",
         "random_weights": True, "weights": "model.safetensors",
         "input": {"shape": [3, a.image, a.image], "scale": 1.0 / 255.0, "mean": MEAN,
                   "std": STD},
         "num_classes": K, "sample_data": "sample_data.npy",
         "sample_labels": "sample_labels.npy",
         "backbone": backbone, "exits": exits, "final": final}
    w.write(os.path.join(a.out, "model.safetensors"))
    with open(os.path.join(a.out, "model.json"), "w") as f:
        json.dump(j, f, indent=1)
    nw = sum(t.size for _, t in w.items)
    print(f"make_resnet50: {a.out}: {j['name']}, {nw / 1e6:.1f} M weights, seed {a.seed}, "
          f"{a.samples} samples of 3x{a.image}x{a.image}")


if __name__ == "__main__":
    main()
