#!/usr/bin/env python3
"""Exporter round trip: PyTorch -> models/export.py -> the exitrt CLI.

    python3 tests/test_export.py EXITRT_BINARY WORK_DIR

For small, randomly initialised networks of every supported layer kind (a
Linear/ReLU MLP; a conv/BN/ReLU/maxpool/avgpool CNN with stride, padding,
groups and dilation; a basic-block ResNet; a bottleneck ResNet laid out as
torchvision's ResNet class; a model with learned confidence heads; Dropout
next to exit points; a one-class model) it exports the model with golden
inputs, runs `exitrt run` on those inputs in the full, masked and compacted
modes, and checks against PyTorch:
  - each sample's exit equals the one the policy formulas of
    models/FORMAT.md give on PyTorch's logits (entropy < thr; max_prob,
    margin, confidence >= thr; patience: the class, PyTorch's argmax, the
    same at the last thr exits; the final head otherwise),
  - its class equals the argmax of PyTorch's logits at that exit,
  - its logits (--logits) are within relative error 1e-4 of PyTorch's.
Threshold sets: chosen so that samples spread over the exits, a sweep of
others, and for every exit j one that sends every sample to exit j, so the
logits of every exit are compared for every input. The shipped models'
golden files (models/*/golden.safetensors) are checked the same way.

Transformer encoders (models/FORMAT.md, "Transformer encoders"), the same
way: an nn.TransformerEncoder of pre-LN ReLU layers behind a patch
embedding; post-LN GELU nn.TransformerEncoderLayers (sequence first) on
padded token sequences; torchvision's VisionTransformer; models/bert.py's
BERT-style classifier with DeeBERT exits on padded sequences. For these the
exporter's own interpreter, run on the written files, is compared with
PyTorch too (and must depend on the masks), the MACs with FORMAT.md's
formulas, and ids outside the vocabulary or a sequence of padding alone
must give NaN logits and the final head. A padded token 0 (left-padded
sequences: token_pool first reads token 0 whatever its mask, as PyTorch's
x[:, 0]) and a row of padding alone among the golden inputs (the
exporter's self-check takes NaN against NaN as agreement) are exported and
run in every mode against BertClassifier's own forward. The worst relative logit error of
exitrt against PyTorch over these models is printed at the end. What the
format cannot express (other activations, extra key/value rows, attention
masks, a Linear on tokens, ...) is refused at export, naming the module.

Where an exit reads (models/FORMAT.md): the networks whose Dropout leaves
an exit without a layer of its own (after another exit's layer, before a
trailing Dropout, after a leading one) and an exit between a conv and its
batch norm are refused by the exporter, and the model.json it used to write
for them is refused by exitrt with the same reason; a Dropout written by an
older exporter gives the same results as none.

A sample whose PyTorch score lies within float noise of a threshold (so
that C and PyTorch may round to different sides) is left out of the exit
check; its logits are still compared at the exit exitrt chose.

Exits 77 ("skipped: ...") when PyTorch is not installed. Devices: cpu, plus
cuda when /dev/nvidia0 exists (or as ERT_TEST_DEVICES=cpu,cuda says).
"""
import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import traceback

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print("skipped: python3-torch not installed")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
import export as ex  # noqa: E402
import transformer as tx  # noqa: E402
import bert  # noqa: E402

try:
    from torchvision.models.resnet import BasicBlock, Bottleneck
    BLOCKS_FROM = "torchvision"
except ImportError:
    from blocks import BasicBlock, Bottleneck
    BLOCKS_FROM = "models/blocks.py"

REL_TOL = 1e-4
N = 37          # golden batch: odd, larger than --batch
BATCH = 16      # exitrt's batch: 37 = 16 + 16 + 5


# ---------------------------------------------------------------------------
# the networks


def randomise(model, seed):
    """Seeded random weights, with BN statistics and affine parameters away
    from their defaults, so folding them is really tested; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.5 / math.sqrt(fan_in)))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
        for name, p in model.named_parameters():
            # ViT's class token starts at zero, a position table near it
            if name.endswith(("class_token", "pos_embedding", "position", "segment")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()


def _last_linear(m):
    lin = [c for c in m.modules() if isinstance(c, nn.Linear)]
    return lin[-1] if lin else None


@torch.no_grad()
def _linear_outputs(spec, g, lins, x):
    """{k: output of lins[k]} when graph g runs on the raw inputs x,
    normalised as spec["norm"] says; lins[k] None is not watched."""
    outs = {}

    def grab(k):
        def hook(mod, inp, out):
            outs[k] = out.detach()
        return hook
    handles = [lin.register_forward_hook(grab(k)) for k, lin in enumerate(lins) if lin is not None]
    if isinstance(spec["shape"], dict):  # a token model: rows [N, 2, T] as they are
        g.forward(torch.as_tensor(x))
        for h in handles:
            h.remove()
        return outs
    inp = spec["norm"]
    c = x.shape[1]
    mean = torch.tensor(np.broadcast_to(np.asarray(inp.get("mean", 0.0), np.float32), (c,)).copy())
    std = torch.tensor(np.broadcast_to(np.asarray(inp.get("std", 1.0), np.float32), (c,)).copy())
    xn = (torch.as_tensor(x) * inp.get("scale", 1.0) - mean.view(1, c, 1, 1)) / std.view(1, c, 1, 1)
    g.forward(xn)
    for h in handles:
        h.remove()
    return outs


@torch.no_grad()
def calibrate(spec, x):
    """Rescales the last Linear of every head so that its logits have a
    standard deviation near 3 (confidence heads: pre-sigmoid values centred
    on 0 with deviation 2) on x: random networks otherwise give logits so
    small or so large that every sample gets the same exit decision."""
    g = ex.Graph(spec["backbone"], spec["exits"], spec["final"])
    heads = [(e["head"], 3.0, False) for e in g.exits]
    heads += [(e["confidence"], 2.0, True) for e in g.exits if e["confidence"] is not None]
    heads.append((g.final, 3.0, False))
    lins = [_last_linear(m) if m is not None else None for m, _, _ in heads]
    outs = _linear_outputs(spec, g, lins, x)
    for k, (_, target, centre) in enumerate(heads):
        if k not in outs:
            continue
        lin = lins[k]
        out = outs[k]
        f = target / max(float(out.std()), 1e-6)
        lin.weight.mul_(f)
        if lin.bias is not None:
            lin.bias.mul_(f)
            if centre:
                lin.bias.sub_(float(out.mean()) * f)


@torch.no_grad()
def favour_class0(spec, x):
    """Raises class 0's bias in every head's last Linear until it wins for
    about half of x there (and no sample of x is near a tie). Random heads each lean to a class of their own, so
    their classes would agree by chance only and patience streaks of 2 or
    more would be rare; now each exit splits its samples between class 0 and
    its own favourite."""
    g = ex.Graph(spec["backbone"], spec["exits"], spec["final"])
    lins = [_last_linear(e["head"]) for e in g.exits] + [_last_linear(g.final)]
    outs = _linear_outputs(spec, g, lins, x)
    for k, lin in enumerate(lins):
        z = outs[k]
        # by how much class 0 trails the best other class, per sample; the
        # shift goes into the widest gap between those near the median, so no
        # sample is left with a near tie (classes are compared exactly)
        v = np.sort((z[:, 1:].max(1).values - z[:, 0]).double().numpy())
        lo, hi = int(0.3 * len(v)), min(int(0.7 * len(v)), len(v) - 1)
        j = lo + int(np.argmax(np.diff(v)[lo:max(hi, lo + 1)]))
        lin.bias[0] += float((v[j] + v[j + 1]) / 2)


def _pool_head(c, k, *mid):
    """A head on c feature maps: global average pool, flatten, the layers in
    mid (a Dropout, say), a Linear to k classes."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *mid, nn.Linear(c, k))


def _imagenet_norm():
    """The input normalisation torchvision's ImageNet ResNets expect, of
    8-bit pixels (a fresh dict per model)."""
    return dict(scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def mlp():
    bb = nn.Sequential()
    bb.add_module("flatten", nn.Flatten())
    bb.add_module("fc1", nn.Linear(2 * 6 * 6, 40))
    bb.add_module("relu1", nn.ReLU())
    bb.add_module("fc2", nn.Linear(40, 32))
    bb.add_module("relu2", nn.ReLU(inplace=True))
    bb.add_module("drop", nn.Dropout(0.3))
    bb.add_module("fc3", nn.Linear(32, 24, bias=False))
    bb.add_module("relu3", nn.ReLU())
    exits = {"relu1": (nn.Linear(40, 7), {"type": "max_prob", "threshold": 0.5}),
             "relu2": (nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 7)),
                       {"type": "margin", "threshold": 0.3, "name": "mid"})}
    return dict(backbone=bb, exits=exits, final=nn.Linear(24, 7), shape=(2, 6, 6), K=7,
                norm=dict(scale=1 / 255, mean=[0.5, 0.25], std=[0.5, 0.2]), raw=255.0)


def cnn():
    bb = nn.Sequential()
    bb.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    bb.add_module("bn1", nn.BatchNorm2d(8))
    bb.add_module("relu1", nn.ReLU())
    bb.add_module("pool1", nn.MaxPool2d(2))                                    # 8x8x8
    bb.add_module("conv2", nn.Conv2d(8, 12, (3, 5), stride=(2, 1), padding=(1, 2),
                                     groups=4, bias=False))                    # 12x4x8
    bb.add_module("bn2", nn.BatchNorm2d(12, eps=1e-3))
    bb.add_module("relu2", nn.ReLU(inplace=True))
    bb.add_module("conv3", nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12))
    bb.add_module("bn3", nn.BatchNorm2d(12, affine=False))
    bb.add_module("relu3", nn.ReLU())
    bb.add_module("pool3", nn.AvgPool2d(3, stride=2, padding=1))              # 12x2x4
    bb.add_module("conv4", nn.Conv2d(12, 16, 1))
    bb.add_module("relu4", nn.ReLU())
    bb.add_module("pool4", nn.MaxPool2d(3, stride=1, padding=1))              # 16x2x4
    bb.add_module("conv5", nn.Conv2d(16, 16, 3, padding="same"))
    bb.add_module("relu5", nn.ReLU())
    exits = {
        "pool1": (nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)),
                  {"type": "entropy", "threshold": 1.0}),
        "pool3": (_pool_head(12, 5, nn.Dropout()), {"type": "max_prob", "threshold": 0.5}),
    }
    final = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, 5))
    return dict(backbone=bb, exits=exits, final=final, shape=(3, 16, 16), K=5,
                norm=dict(scale=1.0, mean=[0.1, -0.2, 0.3], std=[1.5, 0.8, 1.1]), raw=1.0)


def _stage(block, inp, planes, blocks, stride):
    down = None
    if stride != 1 or inp != planes * block.expansion:
        down = nn.Sequential(nn.Conv2d(inp, planes * block.expansion, 1, stride=stride,
                                       bias=False),
                             nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inp, planes, stride, down)]
    layers += [block(planes * block.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def basic_resnet():
    """A Sequential backbone of BasicBlock stages; one exit keyed by a stage,
    one by a nested block path."""
    bb = nn.Sequential()
    bb.add_module("conv1", nn.Conv2d(1, 8, 3, padding=1, bias=False))
    bb.add_module("bn1", nn.BatchNorm2d(8))
    bb.add_module("relu", nn.ReLU(inplace=True))
    bb.add_module("layer1", _stage(BasicBlock, 8, 8, 2, 1))
    bb.add_module("layer2", _stage(BasicBlock, 8, 16, 2, 2))
    bb.add_module("layer3", _stage(BasicBlock, 16, 24, 1, 2))
    bb.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    bb.add_module("flatten", nn.Flatten())

    def head(c):
        return nn.Sequential(nn.Conv2d(c, 8, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(8, 10))
    exits = {"layer1": (head(8), {"type": "entropy", "threshold": 1.5}),
             "layer2.0": (head(16), {"type": "margin", "threshold": 0.2})}
    return dict(backbone=bb, exits=exits, final=nn.Linear(24, 10), shape=(1, 12, 12),
                K=10, norm=dict(scale=1 / 255, mean=0.286, std=0.353), raw=255.0)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (the attribute names the exporter
    recognises, and its forward), at a small width."""

    def __init__(self, block, layers, widths, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inp = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", _stage(block, inp, w, n, 1 if i == 0 else 2))
            inp = w * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bottleneck_resnet():
    net = TinyResNet(Bottleneck, [2, 1, 1, 1], [4, 8, 8, 16], 6)
    exits = {"layer1": (_pool_head(16, 6), {"type": "max_prob", "threshold": 0.4}),
             "layer3": (_pool_head(32, 6), {"type": "entropy", "threshold": 1.0})}
    return dict(backbone=net, exits=exits, final=None, shape=(3, 32, 32), K=6,
                norm=_imagenet_norm(), raw=255.0)


def confidence():
    bb = nn.Sequential()
    bb.add_module("block1", nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6),
                                          nn.ReLU(), nn.MaxPool2d(2)))
    bb.add_module("block2", nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8),
                                          nn.ReLU(), nn.MaxPool2d(2)))
    bb.add_module("block3", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    exits = {
        "block1": (nn.Sequential(nn.Flatten(), nn.Linear(6 * 7 * 7, 10)),
                   {"type": "confidence_head", "threshold": 0.5},
                   nn.Sequential(nn.Flatten(), nn.Linear(6 * 7 * 7, 1), nn.Sigmoid())),
        "block2": (nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 10)),
                   {"type": "confidence_head", "threshold": 0.5},
                   nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1),
                                 nn.Sigmoid())),
    }
    final = nn.Sequential(nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    return dict(backbone=bb, exits=exits, final=final, shape=(1, 14, 14), K=10,
                norm=dict(scale=1 / 255, mean=0.286, std=0.353), raw=255.0)


def patience():
    """Patience exits (k = 2, and 3 given as 3.0) after an entropy and a
    confidence-head exit, whose classes count towards the streak too."""
    bb = nn.Sequential()
    bb.add_module("flatten", nn.Flatten())
    for i, n_in in enumerate((36, 32, 32, 32, 32), 1):
        bb.add_module(f"fc{i}", nn.Linear(n_in, 32))
        bb.add_module(f"relu{i}", nn.ReLU())
    exits = {"relu1": (nn.Linear(32, 6), {"type": "entropy", "threshold": 0.8}),
             "relu2": (nn.Linear(32, 6), {"type": "confidence_head", "threshold": 0.9},
                       nn.Sequential(nn.Linear(32, 1), nn.Sigmoid())),
             "relu3": (nn.Linear(32, 6), {"type": "patience", "threshold": 2}),
             "relu4": (nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 6)),
                       {"type": "patience", "threshold": 3.0, "name": "late"})}
    return dict(backbone=bb, exits=exits, final=nn.Linear(32, 6), shape=(1, 6, 6), K=6,
                norm=dict(scale=1.0, mean=0.5, std=0.3), raw=1.0, favour0=True)


def torchvision_resnet():
    """torchvision's own ResNet class (BasicBlock, one block per stage), exits
    by module name after layer1 and layer2, the final head its fc."""
    from torchvision.models.resnet import ResNet
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    exits = {"layer1": (_pool_head(64, 10), {"type": "margin", "threshold": 0.5}),
             "layer2": (_pool_head(128, 10), {"type": "max_prob", "threshold": 0.8})}
    return dict(backbone=net, exits=exits, final=None, shape=(3, 32, 32), K=10,
                norm=_imagenet_norm(), raw=255.0)


def dropout_net():
    """Dropout next to exit points wherever the rule (models/FORMAT.md,
    "Where an exit reads") still gives each exit a layer of its own: a
    leading Dropout, one between a conv and its batch norm, exits keyed by a
    Dropout and by a Sequential ending in one, a trailing Dropout, and
    Dropout in the heads. None of them is written; the exits read relu1 and
    block.1, and the logits must still be PyTorch's."""
    bb = nn.Sequential()
    bb.add_module("drop_in", nn.Dropout(0.2))
    bb.add_module("conv1", nn.Conv2d(2, 6, 3, padding=1))
    bb.add_module("drop_bn", nn.Dropout2d(0.1))
    bb.add_module("bn1", nn.BatchNorm2d(6))
    bb.add_module("relu1", nn.ReLU())
    bb.add_module("drop1", nn.Dropout2d(0.3))
    bb.add_module("block", nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Dropout(0.5)))                    # 8x4x4
    bb.add_module("conv3", nn.Conv2d(8, 8, 3, padding=1))
    bb.add_module("relu3", nn.ReLU())
    bb.add_module("pool", nn.AdaptiveAvgPool2d(1))
    bb.add_module("flatten", nn.Flatten())
    bb.add_module("drop_out", nn.Dropout())
    exits = {"drop1": (_pool_head(6, 4, nn.Dropout()), {"type": "entropy", "threshold": 1.0}),
             "block": (_pool_head(8, 4, nn.Dropout()), {"type": "max_prob", "threshold": 0.5})}
    final = nn.Sequential(nn.Dropout(0.4), nn.Linear(8, 4))
    return dict(backbone=bb, exits=exits, final=final, shape=(2, 8, 8), K=4,
                norm=dict(scale=1.0, mean=[0.5, 0.4], std=[0.3, 0.2]), raw=1.0,
                check=check_dropout_net)


def one_class():
    """num_classes 1 (models/FORMAT.md, "One class"): every head is
    certain, so entropy is 0 and max_prob and margin are 1."""
    bb = nn.Sequential()
    bb.add_module("flatten", nn.Flatten())
    bb.add_module("fc1", nn.Linear(2 * 5 * 5, 12))
    bb.add_module("relu1", nn.ReLU())
    bb.add_module("fc2", nn.Linear(12, 12))
    bb.add_module("relu2", nn.ReLU())
    bb.add_module("fc3", nn.Linear(12, 8))
    bb.add_module("relu3", nn.ReLU())
    exits = {"relu1": (nn.Linear(12, 1), {"type": "entropy", "threshold": 0.5}),
             "relu2": (nn.Linear(12, 1), {"type": "margin", "threshold": 0.9})}
    return dict(backbone=bb, exits=exits, final=nn.Linear(8, 1), shape=(2, 5, 5), K=1,
                norm=dict(scale=1 / 255), raw=255.0, check=check_one_class)


# -- transformer encoders (models/FORMAT.md, "Transformer encoders")


def _tok_head(d, k, mode="first"):
    return nn.Sequential(tx.TokenPool(mode), nn.Linear(d, k))


def tx_preln_relu():
    """An image model: models/transformer.py's PatchEmbed (class token,
    positions), an nn.TransformerEncoder of pre-LN ReLU layers (batch_first)
    with a final norm; exits keyed by the encoder's layers; mean and first
    token pooling."""
    d = 24
    layer = nn.TransformerEncoderLayer(d, 4, 40, dropout=0.1, activation="relu",
                                       norm_first=True, batch_first=True)
    bb = nn.Sequential()
    bb.add_module("patch", tx.PatchEmbed(2, d, 4, 12))              # 9 patches + class token
    bb.add_module("encoder", nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(d),
                                                   enable_nested_tensor=False))
    exits = {"encoder.layers.0": (_tok_head(d, 5, "mean"), {"type": "entropy", "threshold": 1.0}),
             "encoder.layers.1": (nn.Sequential(tx.TokenPool("first"), nn.LayerNorm(d),
                                                nn.Linear(d, 16), nn.GELU(), nn.Linear(16, 5)),
                                  {"type": "max_prob", "threshold": 0.5})}
    return dict(backbone=bb, exits=exits, final=_tok_head(d, 5), shape=(2, 12, 12), K=5,
                norm=dict(scale=1 / 255, mean=[0.5, 0.4], std=[0.25, 0.3]), raw=255.0,
                check=check_transformer)


def tx_postln_gelu():
    """A token model with padded masks: models/transformer.py's
    TokenEmbedding (positions, a segment vector), a LayerNorm, single
    post-LN GELU nn.TransformerEncoderLayers (the activation given as a
    module; sequence first, batch_first=False, the middle one with an eps
    of its own), exits after two of them; mean pooling over the attended
    tokens."""
    d, t = 32, 12
    bb = nn.Sequential()
    bb.add_module("embed", tx.TokenEmbedding(50, d, t, segment=True))
    bb.add_module("norm", nn.LayerNorm(d))
    for i in range(3):
        bb.add_module(f"layer{i}", nn.TransformerEncoderLayer(
            d, 4, 48, dropout=0.1, activation=nn.GELU(), norm_first=False, batch_first=False,
            layer_norm_eps=1e-6 if i == 1 else 1e-5))
    exits = {"layer0": (_tok_head(d, 4, "mean"), {"type": "margin", "threshold": 0.3}),
             "layer1": (nn.Sequential(tx.TokenPool("first"), nn.Linear(d, d), nn.Tanh(),
                                      nn.Linear(d, 4)), {"type": "patience", "threshold": 2})}
    return dict(backbone=bb, exits=exits, final=_tok_head(d, 4, "mean"), shape={"tokens": t},
                K=4, vocab=50, check=check_transformer)


def tx_vit():
    """torchvision's VisionTransformer itself (small, random): a 1-channel
    conv_proj, patch 7 on 28x28 (16 patches + class token), a pre-logits
    layer (Linear, Tanh) in its heads; exits keyed by its encoder layers,
    the default final head [token_pool, encoder.ln, heads]."""
    from torchvision.models.vision_transformer import VisionTransformer
    d = 32
    net = VisionTransformer(image_size=28, patch_size=7, num_layers=4, num_heads=4,
                            hidden_dim=d, mlp_dim=64, num_classes=10, representation_size=24)
    net.conv_proj = nn.Conv2d(1, d, 7, stride=7)

    def head():
        return nn.Sequential(tx.TokenPool("first"), nn.LayerNorm(d, eps=1e-6), nn.Linear(d, 10))
    exits = {"encoder.layers.encoder_layer_0": (head(), {"type": "entropy", "threshold": 1.0}),
             "encoder.layers.encoder_layer_1": (head(), {"type": "max_prob", "threshold": 0.6}),
             "encoder.layers.encoder_layer_2": (head(), {"type": "patience", "threshold": 2})}
    return dict(backbone=net, exits=exits, final=None, shape=(1, 28, 28), K=10,
                norm=dict(scale=1 / 255, mean=0.286, std=0.353), raw=255.0, favour0=True,
                check=check_vit)


def tx_bert():
    """models/bert.py's BERT-style classifier (post-LN GELU blocks, BERT's
    embeddings with their LayerNorm, DeeBERT exits after every block but the
    last) on padded sequences."""
    net = bert.BertClassifier(vocab_size=100, tokens=16, dim=32, heads=4, ffn=64, layers=4,
                              num_classes=3)
    bb, exits, final = net.export_parts({
        "encoder.0": {"type": "entropy", "threshold": 0.8},
        "encoder.1": {"type": "max_prob", "threshold": 0.7},
        "encoder.2": {"type": "patience", "threshold": 2}})
    return dict(backbone=bb, exits=exits, final=final, shape={"tokens": 16}, K=3, vocab=100,
                net=net, favour0=True, check=check_bert)


TX_CASES = ["tx_preln_relu", "tx_postln_gelu", "tx_vit", "tx_bert"]
# the worst relative logit error of exitrt against PyTorch (and of the
# exporter's own interpreter) over the transformer cases
TX_WORST = {"exitrt": 0.0, "interpreter": 0.0}


def rel_err(got, want):
    """Largest |got - want| of a row over its largest |want|, the worst row."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    den = np.maximum(np.abs(want).max(1), 1e-30)
    return float((np.abs(got - want).max(1) / den).max())


def check_transformer(model, model_dir, exe, work):
    """The exporter's interpreter, run on the files as written (model.json
    and the weights read back), gives PyTorch's logits at every exit; the
    MACs are FORMAT.md's."""
    model = json.load(open(os.path.join(model_dir, "model.json")))
    tensors = {k: np.array(v) for k, v in
               ex.read_safetensors(os.path.join(model_dir, "model.safetensors"))[0].items()}
    golden, _ = ex.read_safetensors(os.path.join(model_dir, "golden.safetensors"))
    x = np.array(golden["input"])
    logits, _ = ex.run_model(model, tensors, x)
    worst = 0.0
    for name, z in logits.items():
        worst = max(worst, rel_err(z, golden[f"logits.{name}"]))
    TX_WORST["interpreter"] = max(TX_WORST["interpreter"], worst)
    if not worst < REL_TOL:
        raise Failure(f"interpreter vs PyTorch: relative logit error {worst:.3g}")
    if "tokens" in model["input"]:
        # the masks matter: attending to the padding too changes the logits
        # of the padded samples, so the comparisons above test the masking
        padded = (x[:, 1] == 0).any(1)
        unmasked, _ = ex.run_model(model, tensors, np.stack([x[:, 0], np.ones_like(x[:, 1])], 1))
        z, z1 = logits["final"][padded], unmasked["final"][padded]
        if not padded.any() or not np.all(np.abs(z - z1).max(1) > 1e-3 * np.abs(z).max(1)):
            raise Failure("the final logits of padded samples do not depend on their mask")
    # MACs by FORMAT.md's formulas, from the layer fields
    def block_macs(L, t):
        a = L.get("attention", L)
        d = a["embed_dim"]
        f = L["linear1"]["out_features"] if "linear1" in L else 0
        return t * 4 * d * d + 2 * t * t * d + 2 * t * d * f
    first = model["backbone"][0]
    if first["type"] == "patch_embed":
        c, hh, ww = model["input"]["shape"]
        p = first["patch_size"]
        t = (hh // p) * (ww // p) + ("class_token" in first)
        want = first["embed_dim"] * c * hh * ww
    else:
        t, want = model["input"]["tokens"], 0
    want += sum(block_macs(L, t) for L in model["backbone"] if L["type"] == "encoder_block")
    want += sum(L["in_features"] * L["out_features"] for L in model["final"]["head"]
                if L["type"] == "linear")
    got = ex.model_macs(model)["full"]
    if got != want:
        raise Failure(f"model_macs full {got}, FORMAT.md's formulas give {want}")
    if exe:  # and exitrt counts the same
        r = subprocess.run([exe, "inspect", model_dir], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        text = r.stdout.decode("utf-8", "replace")
        line = [ln for ln in text.splitlines() if ln.startswith("MACs full")]
        macs = int(line[0].split()[2].replace(",", "")) if line else None
        if r.returncode != 0 or macs != got:
            raise Failure(f"exitrt inspect: MACs full {macs}, model_macs {got}\n{text[-1500:]}")
    return [f"interpreter (from the written files) vs PyTorch: max rel err {worst:.2g}; "
            f"{got} MACs" + (" (exitrt inspect: the same)" if exe else "")]


def check_vit(model, model_dir, exe, work):
    """Also: the final head's logits are the VisionTransformer's own
    forward's, and the layers are laid out as models/export.py's docstring
    says."""
    out = check_transformer(model, model_dir, exe, work)
    names = [L["name"] for L in model["backbone"]]
    want = ["patch_embed"] + [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    if names != want:
        raise Failure(f"backbone layers {names}, want {want}")
    final = [L["type"] for L in model["final"]["head"]]
    if final != ["token_pool", "layer_norm", "linear", "tanh", "linear"]:
        raise Failure(f"final head {final}")
    return out


def check_bert(model, model_dir, exe, work):
    """Also: the logits at every exit are BertClassifier.forward's (the
    network's own forward, which passes the mask itself), and the embeddings
    are written as token_embed then layer_norm."""
    out = check_transformer(model, model_dir, exe, work)
    golden, _ = ex.read_safetensors(os.path.join(model_dir, "golden.safetensors"))
    net = SPEC_NETS["tx_bert"]
    net.eval()
    with torch.no_grad():
        own = net(torch.as_tensor(np.array(golden["input"])))
    names = [e["name"] for e in model["exits"]] + ["final"]
    worst = max(rel_err(z.numpy(), golden[f"logits.{n}"]) for n, z in zip(names, own))
    if not worst < REL_TOL:
        raise Failure(f"BertClassifier.forward vs the exporter's graph: {worst:.3g}")
    types = [L["type"] for L in model["backbone"]]
    if types[:2] != ["token_embed", "layer_norm"] or model["input"] != {"tokens": 16}:
        raise Failure(f"backbone {types}, input {model['input']}")
    out.append(f"BertClassifier.forward vs the exported graph: max rel err {worst:.2g}")
    # FORMAT.md, "Token inputs": an id outside [0, vocab) and a sequence with
    # no attended token give NaN logits, and such a sample never exits early
    bad = bad_token_rows(golden["input"], model)
    tensors = {k: np.array(v) for k, v in
               ex.read_safetensors(os.path.join(model_dir, "model.safetensors"))[0].items()}
    logits, _ = ex.run_model(model, tensors, bad)
    for name, z in logits.items():
        if not np.isnan(z[:4]).all(1).all() or not np.isfinite(z[4:]).all():
            raise Failure(f"interpreter at {name}: NaN rows "
                          f"{np.isnan(z).all(1).nonzero()[0].tolist()}, want [0, 1, 2, 3]")
    if exe:
        data = os.path.join(work, "bad-tokens-input.npy")
        np.save(data, bad)
        rows, z = run_plain(exe, model_dir, data, work, "bad-tokens", "--allow-invalid-tokens")
        final = len(model["exits"])
        names = [e["name"] for e in model["exits"]] + ["final"]
        for idx, exit_, _cls, _score in rows:
            got = int(exit_) if exit_.isdigit() else names.index(exit_)
            if idx < 4 and (got != final or not np.isnan(z[idx]).all()):
                raise Failure(f"bad token row {idx}: exit {exit_}, logits {z[idx][:3]}; "
                              "want the final head and NaN logits")
            if idx >= 4 and not np.isfinite(z[idx]).all():
                raise Failure(f"row {idx} (valid) has non-finite logits {z[idx]}")
        out.append("ids outside the vocabulary and an all-padding sequence: NaN logits, "
                   "the final head (interpreter and exitrt)")
    # invalid ids at padded tokens change nothing, at any exit
    pad = padded_bad_rows(golden["input"], model)
    valid = np.array(golden["input"])[(golden["input"][:, 1] == 0).any(1)][:6]
    if len(pad) == 0:
        raise Failure("no padded rows in the golden input")
    a, _ = ex.run_model(model, tensors, pad)
    b, _ = ex.run_model(model, tensors, valid)
    for name in a:
        if not np.array_equal(a[name], b[name]):
            raise Failure(f"interpreter at {name}: invalid ids at padded tokens change the logits")
    if exe:
        runs = []
        for tag, rows in (("pad-bad", pad), ("pad-valid", valid)):
            data = os.path.join(work, f"{tag}-input.npy")
            np.save(data, rows)
            runs.append(run_plain(exe, model_dir, data, work, tag, "--allow-invalid-tokens"))
        if runs[0][0] != runs[1][0] or not np.array_equal(runs[0][1], runs[1][1]):
            raise Failure("exitrt: invalid ids at padded tokens change the results: logits "
                          f"{runs[0][1][:2].tolist()}, without them {runs[1][1][:2].tolist()}")
        out.append("invalid ids at padded tokens: no effect (interpreter and exitrt, bit "
                   "for bit)")
    out += check_padded_first_token(model_dir, exe, work)
    return out


def left_padded(x):
    """x's rows [N, 2, T] with each sequence moved to the end (padded on the
    left, so token 0 is padding whenever the sequence is shorter than T;
    the padding ids are those of the row, still valid), and a last row with
    no attended token."""
    x = np.array(x, dtype=np.float32)
    t = x.shape[2]
    for i in range(len(x)):
        n = int(x[i, 1].sum())
        x[i] = np.roll(x[i], t - n, axis=1)
    x[-1, 1] = 0
    return x


def check_padded_first_token(model_dir, exe, work):
    """token_pool first reads token 0 whatever its mask (as PyTorch's x[:, 0]
    and Hugging Face's pooler): left-padded sequences, and a row with no
    attended token among the golden inputs (the exporter's self-check takes
    its NaN against NaN as agreement), exported and run by exitrt in every
    mode, equal PyTorch's forward (BertClassifier's own) at every exit."""
    golden, _ = ex.read_safetensors(os.path.join(model_dir, "golden.safetensors"))
    x = left_padded(np.array(golden["input"])[:20])
    if not (x[:-1, 1, 0] == 0).sum() >= 10:
        raise Failure("too few left-padded rows with a padded token 0")
    net = SPEC_NETS["tx_bert"]
    bb, exits, final = net.export_parts({
        "encoder.0": {"type": "entropy", "threshold": 0.8},
        "encoder.1": {"type": "max_prob", "threshold": 0.7},
        "encoder.2": {"type": "patience", "threshold": 2}})
    d = os.path.join(work, "left-padded")
    ex.export(bb, exits, final, d, {"tokens": x.shape[2]}, 3, golden_inputs=x)
    g, _ = ex.read_safetensors(os.path.join(d, "golden.safetensors"))
    with torch.no_grad():
        own = net(torch.as_tensor(x))
    names = ["exit1", "exit2", "exit3", "final"]
    for n, z in zip(names, own):
        z = z.numpy()
        if not (np.isnan(z[-1]).all() and np.isnan(g[f"logits.{n}"][-1]).all()):
            raise Failure(f"{n}: the row with no attended token is not NaN in PyTorch and the "
                          "golden file")
        e = rel_err(g[f"logits.{n}"][:-1], z[:-1])
        if not e < 1e-5:
            raise Failure(f"left-padded golden logits at {n} differ from PyTorch's by {e:.3g}")
    if not exe:
        return ["left padding: the exporter takes it (and a row of padding alone)"]
    lines, worst = check_model(d, exe, os.path.join(work, "left-padded-run"),
                               ["cpu"] + (["cuda"] if os.path.exists("/dev/nvidia0") else []),
                               "left-padded")
    return [f"padded token 0 (left padding, {int((x[:-1, 1, 0] == 0).sum())} rows) and a row of "
            f"padding alone: exitrt = PyTorch in every mode (max rel err {worst:.2g})"]


def bad_token_rows(x, model):
    """x's rows with a bad first token (always attended) in rows 0, 1 and 3:
    the id vocab_size, 2.5 and -1, and row 2 a mask of zeros (the others
    unchanged)."""
    x = np.array(x[:8], dtype=np.float32)
    vocab = model["backbone"][0]["vocab_size"]
    x[0, 0, 0], x[1, 0, 0], x[3, 0, 0], x[2, 1, :] = vocab, 2.5, -1, 0
    return x


def padded_bad_rows(x, model):
    """x's padded rows (the first 6), with invalid ids (vocab_size, -1, 0.5
    in turn) written at every padded token: which has no effect
    (FORMAT.md, "Token inputs")."""
    x = np.array(x[(x[:, 1] == 0).any(1)][:6], dtype=np.float32)
    vocab = model["backbone"][0]["vocab_size"]
    for i in range(len(x)):
        x[i, 0][x[i, 1] == 0] = (vocab, -1, 0.5)[i % 3]
    return x


SPEC_NETS = {}


CASES = [("mlp", mlp), ("cnn", cnn), ("resnet_basic", basic_resnet),
         ("resnet_bottleneck", bottleneck_resnet), ("confidence", confidence),
         ("dropout", dropout_net), ("one_class", one_class)]
if BLOCKS_FROM == "torchvision":
    CASES.append(("torchvision_resnet", torchvision_resnet))
CASES.append(("patience", patience))
CASES += [("tx_preln_relu", tx_preln_relu), ("tx_postln_gelu", tx_postln_gelu)]
if BLOCKS_FROM == "torchvision":
    CASES.append(("tx_vit", tx_vit))
CASES.append(("tx_bert", tx_bert))


# ---------------------------------------------------------------------------
# expected decisions (models/FORMAT.md, src/policy.h), from PyTorch's logits


def softmax_scores(kind, z, conf):
    """Policy scores [N] in float64 from logits [N,K] (and confidence)."""
    if kind == "confidence_head":
        return conf.reshape(-1).astype(np.float64)
    z = z.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    if kind == "entropy":
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
    s = np.sort(p, 1)
    if kind == "margin":
        return s[:, -1] - s[:, -2] if z.shape[1] > 1 else np.ones(len(z))
    return s[:, -1]


def logit_noise(z):
    """How far C's float32 logits may plausibly be from PyTorch's: ~1e-6
    relative (REL_TOL is the bound we test), per sample."""
    return 2e-5 * np.maximum(1.0, np.abs(z).max(1)) + 1e-6


def class_chain(golden, exits):
    """Per early exit, in order: each sample's class (argmax, the first of
    equals), whether its logits are finite, its patience streak (FORMAT.md:
    equal classes at consecutive exits with finite logits, every exit
    counting whatever its policy, broken by non-finite logits) and whether a
    near tie of the top two logits here or at an earlier exit could change
    that streak."""
    out, streak, prev, shaky = [], None, None, None
    for e in exits:
        z = golden[f"logits.{e['name']}"].astype(np.float64)
        fin = np.isfinite(z).all(1)
        cls = np.argmax(np.where(np.isnan(z), -np.inf, z), 1)
        top = np.sort(z, 1)
        tie = fin & (top[:, -1] - top[:, -2] <= logit_noise(z)) if z.shape[1] > 1 \
            else np.zeros(len(z), bool)
        if streak is None:
            streak = np.where(fin, 1, 0)
        else:
            streak = np.where(fin, np.where((streak > 0) & (cls == prev), streak + 1, 1), 0)
        prev = cls
        shaky = tie if shaky is None else shaky | tie
        out.append(dict(cls=cls, fin=fin, streak=streak, shaky=shaky))
    return out


def expected(golden, exits, thresholds):
    """Exit index per sample and a mask of samples whose decision is within
    float noise of a threshold somewhere on their path."""
    n = golden["input"].shape[0]
    taken = np.full(n, len(exits))
    unsure = np.zeros(n, bool)
    left = np.ones(n, bool)
    chain = class_chain(golden, exits)
    for i, e in enumerate(exits):
        kind, thr = e["policy"]["type"], thresholds[e["name"]]
        if kind == "patience":
            go = chain[i]["fin"] & (chain[i]["streak"] >= thr)
            unsure |= left & chain[i]["shaky"]
            taken[left & go] = i
            left &= ~go
            continue
        z = golden[f"logits.{e['name']}"]
        conf = golden.get(f"confidence.{e['name']}")
        score = softmax_scores(kind, z, conf)
        # how far C's score may plausibly be from PyTorch's: float32 logits
        # of the two differ by ~1e-6 relative (REL_TOL is the bound we test);
        # a probability moves by at most the logits' change
        noise = logit_noise(z)
        if kind == "entropy":
            go = score < thr
            sure = np.full(n, thr <= 0.0) | (thr > math.log(z.shape[1]) + 1e-3)
            noise = noise * (1 + math.log(z.shape[1]))
        else:
            go = score >= thr
            sure = np.full(n, thr <= 0.0)
        unsure |= left & ~sure & (np.abs(score - thr) <= noise)
        taken[left & go] = i
        left &= ~go
    return taken, unsure


def spread_thresholds(golden, exits, share):
    """Per exit, a threshold that lets about `share` of the samples reaching
    it leave, placed in the widest gap between their scores near that share:
    a mix of samples exits everywhere, and none lies close to a threshold."""
    n = golden["input"].shape[0]
    left = np.ones(n, bool)
    out = {}
    chain = class_chain(golden, exits)
    for i, e in enumerate(exits):
        kind = e["policy"]["type"]
        if kind == "patience":
            # the k in 1 .. i+1 (longer streaks cannot occur here) whose share
            # of the samples still running is nearest `share`
            s = chain[i]["streak"]
            k = min(range(1, i + 2),
                    key=lambda k: abs(np.mean(s[left] >= k) - share) if left.any() else 0)
            out[e["name"]] = k
            left &= ~(s >= k)
            continue
        s = softmax_scores(kind, golden[f"logits.{e['name']}"],
                           golden.get(f"confidence.{e['name']}"))
        v = np.sort(s[left & np.isfinite(s)])  # a NaN row (no attended token) never exits
        m = len(v)
        if m < 2:
            thr = 0.0 if kind == "entropy" else 1.0
        else:
            # entropy exits below the threshold, the others at or above it:
            # a threshold between v[j] and v[j+1] lets j+1 (or m-j-1) leave
            want = share * m - 1 if kind == "entropy" else m - 1 - share * m
            r = max(2, int(0.15 * m))
            lo = int(min(max(round(want) - r, 0), m - 2))
            hi = int(min(max(round(want) + r, lo), m - 2))
            j = lo + int(np.argmax(np.diff(v)[lo:hi + 1]))
            thr = float((v[j] + v[j + 1]) / 2)
        if kind != "entropy":
            thr = min(max(thr, 0.0), 1.0)
        out[e["name"]] = thr
        left &= ~(s < thr if kind == "entropy" else s >= thr)
    return out


def forcing_thresholds(exits, j):
    """Sends every sample to exit j: exits before j never fire, exit j always
    (j == len(exits): the final head)."""
    out = {}
    for i, e in enumerate(exits):
        ent = e["policy"]["type"] == "entropy"
        if e["policy"]["type"] == "patience":
            # 16: no streak gets that long (16 exits at most); 1: any finite row
            if i <= j:
                out[e["name"]] = 16 if i < j else 1
            else:
                out[e["name"]] = e["policy"]["threshold"]
        elif i < j:
            out[e["name"]] = 0.0 if ent else 1.0
        elif i == j:
            out[e["name"]] = 1000.0 if ent else 0.0
        else:
            out[e["name"]] = e["policy"]["threshold"]
    return out


# ---------------------------------------------------------------------------
# running exitrt


class Failure(Exception):
    pass


def run_cli(exe, model_dir, data, mode, device, thresholds, work, tag):
    pred = os.path.join(work, f"{tag}.csv")
    logits = os.path.join(work, f"{tag}.npy")
    for p in (pred, logits):
        if os.path.exists(p):
            os.remove(p)
    cmd = [exe, "run", model_dir, "--data", data, "--device", device, "--mode", mode,
           "--batch", str(BATCH), "--predictions", pred, "--logits", logits]
    for name, thr in thresholds.items():
        cmd += ["--threshold", f"{name}={thr!r}"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    text = r.stdout.decode("utf-8", "replace")
    if r.returncode != 0:
        raise Failure(f"exitrt failed (rc {r.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
    for p in (pred, logits):
        if not os.path.exists(p):
            raise Failure(f"exitrt wrote no {p}: {' '.join(cmd)}\n{text[-2000:]}")
    return read_predictions(pred), np.load(logits), cmd


def read_predictions(path):
    """index,exit,class,score rows (a header line is allowed); exit may be
    an index or a name."""
    rows = []
    with open(path, newline="") as f:
        for rec in csv.reader(f):
            if not rec or rec[0].strip().lower() == "index":
                continue
            if len(rec) < 4:
                raise Failure(f"{path}: row {rec}: index,exit,class,score expected")
            rows.append((int(rec[0]), rec[1].strip(), int(rec[2]), float(rec[3])))
    return rows


def check_run(model, golden, exits, thresholds, mode, device, exe, model_dir, data, work, tag):
    names = [e["name"] for e in exits] + [model["final"]["name"]]
    n = golden["input"].shape[0]
    if mode == "full":
        want, unsure = np.full(n, len(exits)), np.zeros(n, bool)
    else:
        want, unsure = expected(golden, exits, thresholds)
    rows, logits, cmd = run_cli(exe, model_dir, data, mode, device, thresholds, work, tag)
    where = f"{tag}: {' '.join(cmd)}"
    if len(rows) != n or sorted(r[0] for r in rows) != list(range(n)):
        raise Failure(f"{where}: {len(rows)} prediction rows for {n} samples")
    if logits.shape != (n, model["num_classes"]) or logits.dtype != np.float32:
        raise Failure(f"{where}: --logits gave {logits.dtype} {logits.shape}, "
                      f"float32 [{n},{model['num_classes']}] expected")
    errors = []
    worst = 0.0
    for idx, ex_field, cls, _score in sorted(rows):
        got = int(ex_field) if ex_field.lstrip("-").isdigit() else (
            names.index(ex_field) if ex_field in names else None)
        if got is None or not 0 <= got < len(names):
            errors.append(f"sample {idx}: exit {ex_field!r} is not an exit")
            continue
        if got != want[idx] and not unsure[idx]:
            errors.append(f"sample {idx}: exit {names[got]}, PyTorch's policy says "
                          f"{names[want[idx]]}")
            continue
        ref = golden[f"logits.{names[got]}"][idx]
        z = logits[idx]
        if np.isnan(ref).all() and np.isnan(z).all():
            continue  # NaN on both sides (no attended token) is agreement
        if cls != int(np.argmax(ref)):
            errors.append(f"sample {idx}: class {cls}, PyTorch's argmax at {names[got]} "
                          f"is {int(np.argmax(ref))}")
        z = logits[idx]
        rel = float(np.max(np.abs(z.astype(np.float64) - ref)) /
                    max(float(np.max(np.abs(ref))), 1e-30))
        worst = max(worst, rel if np.all(np.isfinite(z)) else math.inf)
        if not rel < REL_TOL:
            errors.append(f"sample {idx} at {names[got]}: logits relative error {rel:.3g} "
                          f"(exitrt {z[:4]}..., PyTorch {ref[:4]}...)")
        if cls != int(np.argmax(z)):
            errors.append(f"sample {idx}: class {cls} is not the argmax of its own logits")
    if errors:
        raise Failure(f"{where}:\n  " + "\n  ".join(errors[:12]) +
                      (f"\n  ... {len(errors) - 12} more" if len(errors) > 12 else ""))
    counts = np.bincount(want, minlength=len(names))
    return worst, counts, int(unsure.sum())


def check_model(model_dir, exe, work, devices, label):
    """All modes and threshold sets against the golden file of model_dir."""
    model = json.load(open(os.path.join(model_dir, "model.json")))
    golden, meta = ex.read_safetensors(os.path.join(model_dir, "golden.safetensors"))
    if meta.get("format") != "exitrt-golden" or meta.get("version") != "1":
        raise Failure(f"{label}: golden metadata {meta}")
    golden = {k: np.asarray(v) for k, v in golden.items()}
    exits = model["exits"]
    for e in exits:
        if f"logits.{e['name']}" not in golden:
            raise Failure(f"{label}: golden file lacks logits.{e['name']}")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "input.npy")
    np.save(data, golden["input"].astype(np.float32))
    sets = [("shipped", {e["name"]: e["policy"]["threshold"] for e in exits})]
    for q in (0.3, 0.5, 0.7):
        sets.append((f"spread{q}", spread_thresholds(golden, exits, q)))
    for j in range(len(exits) + 1):
        sets.append((f"all-at-{j}", forcing_thresholds(exits, j)))
    results = []
    overall = 0.0
    for device in devices:
        w, c, u = check_run(model, golden, exits, {}, "full", device, exe, model_dir, data,
                            work, f"{device}-full")
        overall = max(overall, w)
        results.append(f"{device} full ok (max rel err {w:.2g})")
        for mode in ("masked", "compacted"):
            worst = 0.0
            for name, thr in sets:
                w, counts, unsure = check_run(model, golden, exits, thr, mode, device, exe,
                                              model_dir, data, work, f"{device}-{mode}-{name}")
                worst = max(worst, w)
                if name.startswith("spread") and mode == "masked" and device == devices[0]:
                    results.append(f"{name}: exits {counts.tolist()}"
                                   + (f", {unsure} near a threshold" if unsure else ""))
            overall = max(overall, worst)
            results.append(f"{device} {mode} ok over {len(sets)} threshold sets "
                           f"(max rel err {worst:.2g})")
    return results, overall


# ---------------------------------------------------------------------------
# per-case checks beyond the golden comparison


def run_plain(exe, model_dir, data, work, tag, *args):
    """exitrt run in MASKED mode on the CPU: (prediction rows, logits)."""
    pred, logits = os.path.join(work, f"{tag}.csv"), os.path.join(work, f"{tag}.npy")
    cmd = [exe, "run", model_dir, "--data", data, "--device", "cpu", "--mode", "masked",
           "--batch", str(BATCH), "--predictions", pred, "--logits", logits, *args]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if r.returncode != 0:
        raise Failure(f"exitrt failed (rc {r.returncode}): {' '.join(cmd)}\n"
                      f"{r.stdout.decode('utf-8', 'replace')[-2000:]}")
    return read_predictions(pred), np.load(logits)


def check_dropout_net(model, model_dir, exe, work):
    """No Dropout is written and the exits read the layers before their
    keys; the model.json the exporter used to write (dropout layers kept,
    exits "after" them) loads and gives the same results bit for bit: the
    loader's rule and the exporter's are one."""
    def types(layers):
        for L in layers:
            yield L["type"]
            for sub in ("body", "shortcut"):
                yield from types(L.get(sub, []))
    every = list(types(model["backbone"])) + list(types(model["final"]["head"]))
    for e in model["exits"]:
        every += list(types(e["head"]))
    if "dropout" in every:
        raise Failure("a dropout layer was written")
    afters = [e["after"] for e in model["exits"]]
    if afters != ["relu1", "block.1"]:
        raise Failure(f"exits after {afters}, want relu1 and block.1 (the layers before the "
                      "Dropouts they are keyed by)")
    if not exe:
        return ["no Dropout written; exits after relu1 and block.1"]
    old = json.loads(json.dumps(model))
    bb = old["backbone"]
    for where, name in (("relu1", "drop1"), ("block.1", "block.2"), ("flatten", "drop_out")):
        bb.insert([L["name"] for L in bb].index(where) + 1, {"name": name, "type": "dropout"})
    bb.insert(0, {"name": "drop_in", "type": "dropout"})
    old["exits"][0]["after"], old["exits"][1]["after"] = "drop1", "block.2"
    old_dir = os.path.join(work, "dropout-as-written-before")
    shutil.rmtree(old_dir, ignore_errors=True)  # WORK_DIR is kept between runs
    os.makedirs(old_dir)
    with open(os.path.join(old_dir, "model.json"), "w") as f:
        json.dump(old, f)
    shutil.copy(os.path.join(model_dir, "model.safetensors"), old_dir)
    data = os.path.join(work, "input.npy")
    a = run_plain(exe, model_dir, data, work, "dropout-new")
    b = run_plain(exe, old_dir, data, work, "dropout-old")
    if a[0] != b[0] or not np.array_equal(a[1], b[1]):
        raise Failure("the model with its dropout layers written gives other results")
    return ["no Dropout written; exits after relu1 and block.1; the same model with "
            "dropout layers gives the same results bit for bit"]


def check_one_class(model, model_dir, exe, work):
    """One class: entropy exits below any positive threshold (score 0),
    margin and max_prob exits at any threshold (score 1), class 0 always."""
    if not exe:
        return []
    data = os.path.join(work, "input.npy")
    n = np.load(data).shape[0]
    e1, e2 = (e["name"] for e in model["exits"])
    for args, want_exit, want_score in (
            ((f"--threshold={e1}=1e-30",), 0, 0.0),
            ((f"--threshold={e1}=0", f"--threshold={e2}=1"), 1, 1.0),
            ((f"--threshold={e1}=0", f"--threshold={e2}=0"), 1, 1.0)):
        rows, logits = run_plain(exe, model_dir, data, work, "one-class", *args)
        got = {(int(r[1]), r[2], r[3]) for r in rows}
        if len(rows) != n or got != {(want_exit, 0, want_score)}:
            raise Failure(f"{' '.join(args)}: (exit, class, score) {sorted(got)[:4]}, want "
                          f"{(want_exit, 0, want_score)} for all {n} samples")
    r = subprocess.run([exe, "inspect", model_dir], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    if r.returncode != 0:
        raise Failure(f"exitrt inspect: {r.stdout.decode('utf-8', 'replace')}")
    return ["1 class: entropy exits at any threshold > 0 (score 0), margin at any (score 1), "
            "class 0"]


# ---------------------------------------------------------------------------
# exporter-only checks (no exitrt needed)


def expect_error(fn, *needles):
    try:
        fn()
    except ex.ExportError as e:
        msg = str(e)
        missing = [s for s in needles if s not in msg]
        if missing:
            raise Failure(f"export error {msg!r} does not name {missing}")
        return
    raise Failure(f"export did not fail (expected an error naming {needles})")


def _seq(*named):
    bb = nn.Sequential()
    for name, m in named:
        bb.add_module(name, m)
    return bb


def dropout_refusals():
    """(backbone, exits, message parts) of the three ways a Dropout next to
    an exit point leaves an exit without a layer of its own (input [1,4,4],
    2 classes, final head Linear(8, 2))."""
    def ex_(c):
        return (nn.Sequential(nn.Flatten(), nn.Linear(c, 2)), {"type": "entropy", "threshold": 1})
    mlp_ = [("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 8)), ("relu1", nn.ReLU())]
    return [
        # (a) an exit after a Dropout that follows another exit's layer
        (_seq(*mlp_, ("drop1", nn.Dropout()), ("fc2", nn.Linear(8, 8)), ("relu2", nn.ReLU())),
         {"relu1": ex_(8), "drop1": ex_(8)},
         ["exits at 'relu1' and 'drop1' attach after the same layer 'relu1'",
          "Dropout computes nothing at inference", "at most one exit per layer"]),
        # (b) an exit before a trailing Dropout
        (_seq(*mlp_, ("fc2", nn.Linear(8, 8)), ("relu2", nn.ReLU()), ("drop", nn.Dropout())),
         {"relu2": ex_(8)},
         ["exit at 'relu2': after the last computing backbone layer 'relu2'",
          "only Dropout follows it", "the final head's place"]),
        # (c) an exit after a leading Dropout
        (_seq(("drop0", nn.Dropout()), *mlp_, ("fc2", nn.Linear(8, 8))),
         {"drop0": ex_(16)},
         ["exit at 'drop0': no computing layer before it", "would read the network's input"]),
    ]


def loader_refuses_the_same(exe, work):
    """The loader's side of the rule: the model.json the exporter used to
    write for the three networks of dropout_refusals (dropout layers kept,
    "after" naming them) is refused by exitrt with one line saying why."""
    base = _seq(("flatten", nn.Flatten()), ("fc1", nn.Linear(16, 8)), ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(8, 8)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(8, 8)),
                ("relu3", nn.ReLU()))
    exits = {"relu1": (nn.Linear(8, 2), {"type": "entropy", "threshold": 1}),
             "relu2": (nn.Linear(8, 2), {"type": "max_prob", "threshold": 0.5})}
    d = os.path.join(work, "dropout-loader")
    model = ex.export(base, exits, nn.Linear(8, 2), os.path.join(d, "base"), (1, 4, 4), 2)
    drop = {"type": "dropout"}

    def insert(j, at, name):
        j["backbone"].insert(at, dict(drop, name=name))
    cases = [
        ("a", lambda j: (insert(j, 3, "drop1"), j["exits"][1].update(after="drop1")),
         "exits[1].after: 'drop1' gives the same output as exits[0]'s layer (a dropout is a "
         "no-op at inference); at most one exit per layer"),
        ("b", lambda j: (insert(j, len(j["backbone"]), "drop"), j["exits"][1].update(after="relu3")),
         "exits[1].after: 'relu3' is the end of the backbone (only dropout follows it"),
        ("c", lambda j: (insert(j, 0, "drop0"), j["exits"][0].update(after="drop0")),
         "exits[0].after: 'drop0' has no computing layer before it (a dropout is a no-op at "
         "inference): the exit would read the input"),
    ]
    for tag, mutate, want in cases:
        j = json.loads(json.dumps(model))
        mutate(j)
        cd = os.path.join(d, tag)
        os.makedirs(cd, exist_ok=True)
        with open(os.path.join(cd, "model.json"), "w") as f:
            json.dump(j, f)
        shutil.copy(os.path.join(d, "base", "model.safetensors"), cd)
        r = subprocess.run([exe, "inspect", cd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=60)
        err = r.stderr.decode("utf-8", "replace")
        if r.returncode != 1 or want not in err or err.count("\n") != 1:
            raise Failure(f"case ({tag}): exitrt inspect gave status {r.returncode}, stderr "
                          f"{err!r}; want status 1 and one line with {want!r}")


def transformer_refusals(out):
    """What FORMAT.md's transformer layers cannot express is refused at
    export, naming the module."""
    d = 16

    def net(layer=None, head=None, final=None, embed=None, shape=(1, 8, 8)):
        bb = nn.Sequential()
        bb.add_module("embed", embed or tx.PatchEmbed(1, d, 4, 8))
        bb.add_module("enc", layer or nn.TransformerEncoderLayer(d, 2, 32, batch_first=True))
        bb.add_module("enc2", nn.TransformerEncoderLayer(d, 2, 32, batch_first=True))
        exits = {"enc": (head, {"type": "entropy", "threshold": 1})} if head is not None else {}
        return lambda: ex.export(bb, exits, final or _tok_head(d, 2), out, shape, 2)
    expect_error(net(nn.TransformerEncoderLayer(d, 2, 32, activation=F.silu, batch_first=True)),
                 "'enc'", "activation")
    expect_error(net(nn.TransformerEncoderLayer(d, 2, 32, activation=nn.GELU("tanh"),
                                                batch_first=True)), "'enc'", "gelu")
    layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True)
    layer.self_attn = nn.MultiheadAttention(d, 2, add_bias_kv=True, batch_first=True)
    expect_error(net(layer), "'enc'", "add_bias_kv")
    layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True)
    layer.norm2 = nn.LayerNorm((5, d))
    expect_error(net(layer), "'enc'", "LayerNorm over [5, 16]")

    class Causal(nn.Module):
        """A layer under a causal attention mask: no such layer in the format."""
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True)

        def forward(self, h):
            t = h.shape[1]
            return self.layer(h, src_mask=torch.triu(torch.ones(t, t, dtype=torch.bool), 1))
    expect_error(net(Causal()), "'enc'", "Causal")
    expect_error(net(nn.MultiheadAttention(d, 2, batch_first=True)), "'enc'",
                 "MultiheadAttention", "not supported on its own")
    # a Linear on tokens, a head ending in tokens, GELU on tokens
    expect_error(net(head=nn.Linear(d, 2)), "exit 'exit1': head", "'linear'", "given tokens")
    expect_error(net(final=nn.Sequential(nn.LayerNorm(d))), "final head", "ends in tokens")
    expect_error(net(head=nn.Sequential(nn.GELU(), tx.TokenPool(), nn.Linear(d, 2))),
                 "gelu", "given tokens")
    # a token_pool on a vector
    expect_error(net(final=nn.Sequential(tx.TokenPool(), tx.TokenPool(), nn.Linear(d, 2))),
                 "token_pool", "reads tokens")
    # a patch projection that is not kernel = stride without padding
    pe = tx.PatchEmbed(1, d, 4, 8)
    pe.proj = nn.Conv2d(1, d, 4, stride=4, padding=1)
    expect_error(net(embed=pe), "'embed'", "kernel = stride")
    # token models: the input must say tokens, and the embedding must fit it
    emb = tx.TokenEmbedding(20, d, 6)
    expect_error(net(embed=emb), "'embed'", "input_shape={'tokens': T}")
    expect_error(net(embed=emb, shape={"tokens": 8}), "'embed'", "6 positions for 8 tokens")
    emb = tx.TokenEmbedding(20, d, 6)
    emb.word = nn.Embedding(20, d, max_norm=1.0)
    expect_error(net(embed=emb, shape={"tokens": 6}), "'embed'", "max_norm")
    expect_error(net(shape={"tokens": 4}), "first backbone layer 'embed'", "no token embedding")
    # an exit keyed by a module written as two layers (BERT's embeddings:
    # token_embed, layer_norm) reads the second
    bb = nn.Sequential()
    bb.add_module("embeddings", bert.BertEmbeddings(30, d, 8))
    bb.add_module("enc", nn.TransformerEncoderLayer(d, 2, 32, batch_first=True))
    bb.add_module("enc2", nn.TransformerEncoderLayer(d, 2, 32, batch_first=True))
    randomise(bb, 3)
    model = ex.export(bb, {"embeddings": (_tok_head(d, 2), {"type": "entropy", "threshold": 1})},
                      _tok_head(d, 2), out, {"tokens": 8}, 2)
    got = ([L["type"] for L in model["backbone"]], model["exits"][0]["after"])
    if got != (["token_embed", "layer_norm", "encoder_block", "encoder_block"],
               "embeddings.LayerNorm"):
        raise Failure(f"BERT embeddings with an exit: layers and exit {got}")

    # torchvision's ViT with a convolutional stem
    try:
        from torchvision.models.vision_transformer import VisionTransformer, ConvStemConfig
    except ImportError:
        return
    vit = VisionTransformer(16, 8, 1, 2, d, 32, num_classes=2,
                            conv_stem_configs=[ConvStemConfig(8, 3, 2)])
    expect_error(lambda: ex.export(vit, {}, None, out, (3, 16, 16), 2), "conv_proj",
                 "convolutional stem")


def exporter_checks(work):
    out = os.path.join(work, "errors")

    def exp(bb, exits=None, final=None, shape=(1, 4, 4)):
        return lambda: ex.export(bb, exits or {}, final, out, shape, 2)
    expect_error(exp(nn.Sequential(nn.Flatten(), nn.Linear(16, 2), nn.LeakyReLU())), "2",
                 "LeakyReLU")
    inner = nn.Sequential()
    inner.add_module("conv", nn.Conv2d(1, 2, 3))
    inner.add_module("act", nn.SiLU())
    bb = nn.Sequential()
    bb.add_module("stem", inner)
    bb.add_module("flat", nn.Flatten())
    bb.add_module("fc", nn.Linear(8, 2))
    expect_error(exp(bb), "stem.act", "SiLU")
    expect_error(exp(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)),
                     {"nope": (nn.Linear(16, 2), {"type": "entropy", "threshold": 1})}),
                 "nope")
    expect_error(exp(nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(16, 2))),
                 "batch norm")
    expect_error(exp(nn.Sequential(nn.Flatten(), nn.Linear(16, 2), nn.ReLU()),
                     {"1": (nn.Linear(2, 3), {"type": "entropy", "threshold": 1})}),
                 "exit1", "2 values")
    expect_error(exp(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU()),
                     {"1": (nn.Linear(4, 2), {"type": "max_prob", "threshold": 1.5})},
                     nn.Linear(4, 2)), "threshold")
    for k in (2.5, 0, -1, True, float("inf")):
        expect_error(exp(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU()),
                         {"1": (nn.Linear(4, 2), {"type": "patience", "threshold": k})},
                         nn.Linear(4, 2)), "exit1", "integer >= 1")
    expect_error(exp(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
                                   nn.Flatten(), nn.Linear(32, 2))), "padding_mode")

    class NotABlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)
            self.conv2, self.bn2 = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)
            self.extra = nn.ReLU()
    expect_error(exp(nn.Sequential(NotABlock(), nn.Flatten(), nn.Linear(16, 2))),
                 "NotABlock", "extra")

    class WrongForward(nn.Module):
        """A BasicBlock's structure, without the residual addition."""
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)
            self.conv2, self.bn2 = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
    m = nn.Sequential(WrongForward(), nn.Flatten(), nn.Linear(16, 2))
    randomise(m, 5)
    expect_error(exp(m), "self-check")

    # Where an exit reads (models/FORMAT.md): Dropout is a no-op, so these
    # exits have no layer of their own; they used to be written, and the
    # loader refused them (loader_refuses_the_same checks its side)
    for bb, exits, needles in dropout_refusals():
        expect_error(exp(bb, exits, nn.Linear(8, 2)), *needles)
    bb = nn.Sequential()
    bb.add_module("conv1", nn.Conv2d(1, 2, 3, padding=1))
    bb.add_module("bn1", nn.BatchNorm2d(2))
    bb.add_module("relu1", nn.ReLU())
    bb.add_module("flatten", nn.Flatten())
    bb.add_module("fc", nn.Linear(32, 8))
    expect_error(exp(bb, {"conv1": (nn.Sequential(nn.Flatten(), nn.Linear(32, 2)),
                                    {"type": "entropy", "threshold": 1})}, nn.Linear(8, 2)),
                 "exit at 'conv1': between Conv2d 'conv1' and BatchNorm2d 'bn1'",
                 "attach the exit after 'bn1'")

    transformer_refusals(out)

    # the self-check: NaN where both sides are NaN is agreement (a row with
    # no attended token), NaN on one side alone is a difference
    both = np.array([[np.nan, np.nan], [1.0, -2.0]], np.float32)
    ex._compare("rows", both, both.copy())
    expect_error(lambda: ex._compare("rows", both, np.array([[0.5, 0.5], [1.0, -2.0]])),
                 "self-check: rows", "differ")
    expect_error(lambda: ex._compare("rows", np.zeros((2, 2)), both), "self-check: rows",
                 "differ")

    # safetensors layout: header length, padding, offsets
    path = os.path.join(work, "t.safetensors")
    ex.write_safetensors(path, {"b": np.arange(3, dtype=np.float32),
                                "a": np.ones((2, 2), np.float32)}, {"k": "v"})
    raw = open(path, "rb").read()
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + hlen])
    if hlen % 8 or header["__metadata__"] != {"k": "v"} or len(raw) != 8 + hlen + 28:
        raise Failure(f"safetensors layout: header length {hlen}, file {len(raw)} bytes")
    t, _ = ex.read_safetensors(path)
    if t["b"].tolist() != [0, 1, 2] or t["a"].shape != (2, 2):
        raise Failure("safetensors round trip")


# ---------------------------------------------------------------------------


def harness_start(doc):
    """The command line of the export tests (this file, test_export_hf.py):
    EXE WORK. Makes WORK, holds torch at 2 threads at most and returns
    (exe, work, devices), the devices from ERT_TEST_DEVICES or those present;
    None (after printing `doc`) on a wrong command line."""
    if len(sys.argv) != 3:
        print(doc)
        return None
    exe, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    devices = os.environ.get("ERT_TEST_DEVICES")
    devices = (devices.split(",") if devices else
               ["cpu"] + (["cuda"] if os.path.exists("/dev/nvidia0") else []))
    return exe, work, devices


def main():
    start = harness_start(__doc__)
    if start is None:
        return 2
    exe, work, devices = start
    print(f"torch {torch.__version__}, blocks from {BLOCKS_FROM}, devices {devices}")
    failed = 0
    try:
        exporter_checks(work)
        print("exporter checks: ok")
    except Exception as e:  # noqa: BLE001
        failed += 1
        print(f"exporter checks: FAIL: {e}")
        traceback.print_exc()
    have_exe = os.path.isfile(exe) and os.access(exe, os.X_OK)
    if not have_exe:
        failed += 1
        print(f"FAIL: {exe} is not an executable; the C side is not checked")
    else:
        try:
            loader_refuses_the_same(exe, work)
            print("loader refuses what the exporter refuses (Dropout next to exits): ok")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"loader refuses what the exporter refuses: FAIL: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
    for i, (name, build) in enumerate(CASES):
        try:
            torch.manual_seed(100 + i)
            spec = build()
            if "net" in spec:
                SPEC_NETS[name] = spec["net"]
            mods = [spec["backbone"]] + ([spec["final"]] if spec["final"] is not None else [])
            for v in spec["exits"].values():
                mods += [m for m in ex.exit_spec(v)[::2] if m is not None]
            holder = nn.ModuleList(mods)
            randomise(holder, 100 + i)
            g = torch.Generator().manual_seed(200 + i)
            if isinstance(spec["shape"], dict):  # tokens: random ids, padded masks
                x = ex.random_tokens(N, spec["shape"]["tokens"], spec["vocab"], seed=200 + i)
            else:
                x = (torch.rand((N,) + spec["shape"], generator=g) * spec["raw"]).numpy()
                if spec["raw"] == 255.0:
                    x = np.round(x)
                x[0] = 0.0  # an all-zero input (raw units)
            calibrate(spec, x)
            if spec.get("favour0"):
                favour_class0(spec, x)
            model_dir = os.path.join(work, name)
            model = ex.export(spec["backbone"], spec["exits"], spec["final"], model_dir,
                              spec["shape"], spec["K"], input_norm=spec.get("norm"),
                              name=f"test-{name}", golden_inputs=x)
            # the golden file holds what PyTorch computes for the raw input
            golden, _ = ex.read_safetensors(os.path.join(model_dir, "golden.safetensors"))
            if not np.array_equal(golden["input"], x.astype(np.float32)):
                raise Failure("golden input differs from the input given")
            kinds = [e["policy"]["type"] for e in model["exits"]]
            print(f"{name}: exported ({len(model['backbone'])} backbone layers, exits "
                  f"{[(e['name'], e['after'], e['policy']['type']) for e in model['exits']]},"
                  f" {ex.model_macs(model)['full']} MACs)")
            if "confidence_head" in kinds and not any(k.startswith("confidence.") for k in golden):
                raise Failure("golden file lacks the confidence outputs")
            for e in model["exits"]:
                thr = e["policy"]["threshold"]
                if e["policy"]["type"] == "patience" and (type(thr) is not int or thr < 1):
                    raise Failure(f"exit {e['name']}: patience threshold {thr!r} is not written "
                                  "as an integer")
            with open(os.path.join(model_dir, "model.json")) as f:
                if "patience" in kinds and '"threshold": 3.0' in f.read():
                    raise Failure("model.json holds a patience threshold as 3.0")
            if have_exe:
                lines, worst = check_model(model_dir, exe, os.path.join(work, name + "-run"),
                                           devices, name)
                for line in lines:
                    print(f"  {line}")
                if name in TX_CASES:
                    TX_WORST["exitrt"] = max(TX_WORST["exitrt"], worst)
            if "check" in spec:
                for line in spec["check"](model, model_dir, exe if have_exe else None,
                                          os.path.join(work, name + "-run")):
                    print(f"  {line}")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"{name}: FAIL: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
    shipped = sorted(glob.glob(os.path.join(ROOT, "models", "*", "golden.safetensors")))
    for path in shipped:
        model_dir = os.path.dirname(path)
        name = os.path.basename(model_dir)
        if not have_exe:
            break
        try:
            print(f"{name} (shipped golden file):")
            for line in check_model(model_dir, exe, os.path.join(work, "shipped-" + name),
                                    devices, name)[0]:
                print(f"  {line}")
            print(f"{name} (shipped golden file): ok")
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"{name} (shipped golden file): FAIL: {e}")
            if not isinstance(e, Failure):
                traceback.print_exc()
    print(f"transformer encoders: worst relative logit error against PyTorch, exitrt "
          f"{TX_WORST['exitrt']:.3g}"
          + ("" if have_exe else " (not run)") +
          f", the exporter's interpreter {TX_WORST['interpreter']:.3g}")
    print(f"{failed} failure(s)" if failed else "all export round trips passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
