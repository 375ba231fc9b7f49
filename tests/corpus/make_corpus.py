#!/usr/bin/python3
"""make_corpus.py - the malformed-input corpus of exitrt.

    make_corpus.py OUTDIR           the committed corpus (tests/corpus)
    make_corpus.py --big OUTDIR     cases too large to commit (run_corpus.sh
                                    writes them into a scratch directory)
    make_corpus.py --seeds OUTDIR   the fuzzers' seed inputs (tests/fuzz/corpus)

One valid small model (valid/: model.json + w.safetensors, a data set it
runs, labels, and the data with a NaN and an Inf in two samples) is the
base; every case under models/ is that model with one thing broken, every
file under data/ a data or label file with one thing broken.
expected.tsv lists each case as

    path <TAB> command <TAB> status <TAB> stderr substring

command: run (exitrt run CASE --data valid/inputs.npy), inspect (exitrt
inspect CASE), data (exitrt run valid --data CASE), labels (exitrt run valid
--data valid/inputs.npy --labels CASE). Paths are relative to OUTDIR; the
substring is what the one stderr line must contain (file, field, problem).
tests/corpus/run_corpus.sh runs them.

Deterministic: numpy's legacy RandomState, hand-written .npy and
safetensors headers, gzip with mtime 0, so the output is byte-for-byte the
same on every run (run_corpus.sh checks that against the committed files).
"""
import copy
import gzip
import json
import os
import shutil
import struct
import sys

import numpy as np

# ---- writers ------------------------------------------------------------------


def st_bytes(tensors, header_override=None, metadata=None):
    """safetensors bytes. tensors: list of (name, array float32 | (dtype, shape, raw))."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, t in tensors:
        if isinstance(t, tuple):
            dtype, shape, raw = t
        else:
            dtype, shape, raw = "F32", list(t.shape), t.astype("<f4").tobytes()
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = header_override if header_override is not None else json.dumps(header)
    text = text.encode() if isinstance(text, str) else text
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def npy_bytes(descr, shape, payload, version=1, fortran=False, header=None):
    """A .npy file with a hand-written header (numpy's own layout)."""
    if header is None:
        shp = "(" + "".join("%d, " % d for d in shape) + ")" if len(shape) != 1 else "(%d,)" % shape[0]
        if len(shape) > 1:
            shp = "(" + ", ".join(str(d) for d in shape) + ")"
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
            descr, "True" if fortran else "False", shp)
    h = header.encode()
    pre = 10 if version == 1 else 12
    total = pre + len(h) + 1
    pad = (64 - total % 64) % 64
    h = h + b" " * pad + b"\n"
    if version == 1:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h))
    else:
        head = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(h))
    return head + h + payload


def idx_bytes(type_code, dims, payload):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def gz(b):
    return gzip.compress(b, compresslevel=9, mtime=0)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- the valid base model ---------------------------------------------------------
#
# input [2,8,8], K = 3
# backbone: conv1 (2->4 k3 p1, no bias) + bn1 + relu1 -> pool1 (max k2: [4,4,4])
#   -> res1 (body conv 4->4 k3 p1 + relu, identity shortcut) -> drop
#   -> conv2 (4->6 k3 g2: [6,2,2]) -> gap ([6,1,1]) -> flat ([6])
# exit e1 after pool1: flatten + linear 64->3, entropy 0.5
# exit e2 after res1: avgpool k2 + flatten + linear 16->3, confidence_head 0.9,
#   confidence: flatten + linear 64->1 + sigmoid
# final: linear 6->3


def L(name, type_, **kw):
    d = {"name": name, "type": type_}
    d.update(kw)
    return d


def base_json():
    return {
        "format": "exitrt-model", "version": 1, "name": "corpus-base",
        "weights": "w.safetensors",
        "input": {"shape": [2, 8, 8], "scale": 1.0, "mean": [0.5, 0.5], "std": 0.25},
        "num_classes": 3,
        "backbone": [
            L("conv1", "conv2d", in_channels=2, out_channels=4, kernel_size=3, padding=1, weight="c1.w"),
            L("bn1", "batchnorm2d", num_features=4, eps=1e-5, weight="bn1.g", bias="bn1.b",
              running_mean="bn1.m", running_var="bn1.v"),
            L("relu1", "relu"),
            L("pool1", "maxpool2d", kernel_size=2),
            L("res1", "residual", activation="relu", body=[
                L("rconv", "conv2d", in_channels=4, out_channels=4, kernel_size=3, padding=1,
                  weight="r.w", bias="r.b"),
                L("rrelu", "relu")]),
            L("drop", "dropout"),
            L("conv2", "conv2d", in_channels=4, out_channels=6, kernel_size=3, groups=2,
              weight="c2.w", bias="c2.b"),
            L("gap", "global_avgpool"),
            L("flat", "flatten"),
        ],
        "exits": [
            {"name": "e1", "after": "pool1",
             "head": [L("flat", "flatten"),
                      L("fc", "linear", in_features=64, out_features=3, weight="e1.w", bias="e1.b")],
             "policy": {"type": "entropy", "threshold": 0.5}},
            {"name": "e2", "after": "res1",
             "head": [L("pool", "avgpool2d", kernel_size=2), L("flat", "flatten"),
                      L("fc", "linear", in_features=16, out_features=3, weight="e2.w", bias="e2.b")],
             "policy": {"type": "confidence_head", "threshold": 0.9},
             "confidence": [L("flat", "flatten"),
                            L("fc", "linear", in_features=64, out_features=1, weight="cf.w", bias="cf.b"),
                            L("sig", "sigmoid")]},
        ],
        "final": {"name": "final", "head": [
            L("fc", "linear", in_features=6, out_features=3, weight="f.w", bias="f.b")]},
    }


def base_tensors():
    r = np.random.RandomState(6)

    def u(*shape, lo=-0.5, hi=0.5):
        return (lo + (hi - lo) * r.random_sample(shape)).astype(np.float32)
    return [
        ("c1.w", u(4, 2, 3, 3)), ("bn1.g", u(4, lo=0.5, hi=1.5)), ("bn1.b", u(4)),
        ("bn1.m", u(4)), ("bn1.v", u(4, lo=0.5, hi=1.5)),
        ("r.w", u(4, 4, 3, 3)), ("r.b", u(4)),
        ("c2.w", u(6, 2, 3, 3)), ("c2.b", u(6)),
        ("e1.w", u(3, 64)), ("e1.b", u(3)),
        ("e2.w", u(3, 16)), ("e2.b", u(3)),
        ("cf.w", u(1, 64)), ("cf.b", u(1)),
        ("f.w", u(3, 6)), ("f.b", u(3)),
        ("neg.v", np.array([1, -2, 1, 1], np.float32)),
    ]


def dumps(j):
    return json.dumps(j, indent=1)


# ---- model cases ---------------------------------------------------------------------
#
# Each case: (name, substring, mutate) where mutate(j, t) edits the JSON dict j
# and/or the tensor list t in place and may return bytes to use as the weights
# file, or ("json", text) to replace model.json with raw text.

def bb(j, name):
    return next(l for l in j["backbone"] if l["name"] == name)


def ex(j, i):
    return j["exits"][i]


def tensor(t, name):
    return next(a for n, a in t if n == name)


def set_tensor(t, name, value):
    for i, (n, _) in enumerate(t):
        if n == name:
            t[i] = (name, value)


def st_header_of(t):
    """The header dict st_bytes would write, for header mutations."""
    b = st_bytes(t)
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_with_header(header, data):
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def st_mut(fn):
    """A weights-file mutation: fn(header_dict) edits the header; data unchanged."""
    def m(j, t):
        h, data = st_header_of(t)
        fn(h)
        return st_with_header(h, data)
    return m


MODEL_CASES = []


def case(name, want):
    def deco(fn):
        MODEL_CASES.append((name, want, fn))
        return fn
    return deco


# -- model.json as text
case("json-syntax", "model.json: invalid JSON at line")(lambda j, t: ("json", dumps(j)[:200]))
case("json-not-object", "model.json: not a JSON object")(lambda j, t: ("json", "[1, 2, 3]\n"))
case("json-nul-byte", "model.json: holds a NUL byte")(lambda j, t: ("json", dumps(j)[:50] + "\0" + dumps(j)[50:]))
case("json-deep-nesting", "model.json: invalid JSON at line")(
    lambda j, t: ("json", '{"format": ' + "[" * 2000 + "]" * 2000 + "}"))
case("json-empty", "model.json: invalid JSON at line 1, column 1")(lambda j, t: ("json", ""))

# -- top level
case("format-wrong", "model.json: format: 'onnx' is not \"exitrt-model\"")(lambda j, t: j.update(format="onnx"))
case("format-missing", "model.json: format: missing")(lambda j, t: j.pop("format"))
case("version-2", "model.json: version: 2 is not supported")(lambda j, t: j.update(version=2))
case("version-string", "model.json: version: must be an integer")(lambda j, t: j.update(version="1"))
case("weights-missing-field", "model.json: weights: missing")(lambda j, t: j.pop("weights"))
case("weights-absolute", "model.json: weights: '/etc/passwd' is absolute")(lambda j, t: j.update(weights="/etc/passwd"))
case("weights-not-there", "nothere.safetensors: cannot open: No such file or directory")(
    lambda j, t: j.update(weights="nothere.safetensors"))
case("weights-is-directory", ": not a regular file")(lambda j, t: j.update(weights="."))
case("weights-empty-path", "model.json: weights: empty path")(lambda j, t: j.update(weights=""))
# a path out of the model directory, to a valid weights file: only the rule refuses it
case("weights-dotdot", "model.json: weights: '../../valid/w.safetensors' has a '..' component")(
    lambda j, t: j.update(weights="../../valid/w.safetensors"))
case("weights-dotdot-passwd", "model.json: weights: '../../../../../../../../etc/passwd' has a '..' component")(
    lambda j, t: j.update(weights="../../../../../../../../etc/passwd"))
case("num-classes-zero", "model.json: num_classes: 0 is out of range [1, 65536]")(lambda j, t: j.update(num_classes=0))
case("num-classes-fraction", "model.json: num_classes: must be an integer")(lambda j, t: j.update(num_classes=3.5))
case("num-classes-mismatch", "model.json: exits[0].head: ends in 3x1x1 = 3 values, expected num_classes = 4")(
    lambda j, t: j.update(num_classes=4))

# -- input
case("input-shape-2d", "model.json: input.shape: must be [C, H, W]")(lambda j, t: j["input"].update(shape=[8, 8]))
case("input-channels-5", "model.json: input.shape[0]: must be an integer in [1, 4]")(
    lambda j, t: j["input"].update(shape=[5, 8, 8]))
case("input-height-zero", "model.json: input.shape[1]: must be an integer in [1, 65536]")(
    lambda j, t: j["input"].update(shape=[2, 0, 8]))
case("input-std-zero", "model.json: input.std[0]: must be > 0")(lambda j, t: j["input"].update(std=0))
case("input-std-underflows", "model.json: input.std[0]: must be > 0")(lambda j, t: j["input"].update(std=1e-50))
case("input-scale-huge", "model.json: input.scale: 1e+39 is out of the float32 range")(
    lambda j, t: j["input"].update(scale=1e39))
case("input-mean-inf", "model.json: input.mean[0]: must be a finite float32 number")(
    lambda j, t: ("json", dumps(j).replace('"mean": [\n   0.5,', '"mean": [\n   1e999,')))
case("input-mean-count", "model.json: input.mean: has 3 values, expected 1 or 2")(
    lambda j, t: j["input"].update(mean=[0, 0, 0]))

# -- thresholds and policies
case("threshold-inf", "model.json: exits[0].policy.threshold: must be finite")(
    lambda j, t: ("json", dumps(j).replace('"threshold": 0.5', '"threshold": 1e999')))
case("threshold-minus-inf", "model.json: exits[0].policy.threshold: must be finite")(
    lambda j, t: ("json", dumps(j).replace('"threshold": 0.5', '"threshold": -1e999')))
case("threshold-string-nan", "model.json: exits[0].policy.threshold: must be a number")(
    lambda j, t: ex(j, 0)["policy"].update(threshold="NaN"))
case("threshold-null", "model.json: exits[0].policy.threshold: missing")(
    lambda j, t: ex(j, 0)["policy"].update(threshold=None))
case("threshold-negative", "model.json: exits[0].policy.threshold: -0.5 is out of range (>= 0)")(
    lambda j, t: ex(j, 0)["policy"].update(threshold=-0.5))
case("threshold-beyond-float", "model.json: exits[0].policy.threshold: 1e+300 is out of range (>= 0)")(
    lambda j, t: ex(j, 0)["policy"].update(threshold=1e300))
case("threshold-prob-above-one", "model.json: exits[1].policy.threshold: 1.5 is out of range ([0, 1])")(
    lambda j, t: ex(j, 1)["policy"].update(threshold=1.5))
case("policy-unknown", "model.json: exits[0].policy.type: unknown policy 'oracle'")(
    lambda j, t: ex(j, 0)["policy"].update(type="oracle"))
case("threshold-patience-fraction", "model.json: exits[0].policy.threshold: 2.5 is out of range (an integer >= 1)")(
    lambda j, t: ex(j, 0)["policy"].update(type="patience", threshold=2.5))
case("threshold-patience-zero", "model.json: exits[1].policy.threshold: 0 is out of range (an integer >= 1)")(
    lambda j, t: ex(j, 1)["policy"].update(type="patience", threshold=0))
case("policy-missing", "model.json: exits[0].policy: missing or not an object")(lambda j, t: ex(j, 0).pop("policy"))

# -- exits and references
case("exit-after-unknown", "model.json: exits[0].after: 'nolayer' is not a top-level backbone layer")(
    lambda j, t: ex(j, 0).update(after="nolayer"))
case("exit-after-nested-layer", "model.json: exits[0].after: 'rconv' is not a top-level backbone layer")(
    lambda j, t: ex(j, 0).update(after="rconv"))
case("exit-after-last", "model.json: exits[1].after: 'flat' is the end of the backbone")(
    lambda j, t: ex(j, 1).update(after="flat"))
case("exits-out-of-order", "model.json: exits[1].after: 'relu1' comes before exits[0]'s layer")(
    lambda j, t: ex(j, 1).update(after="relu1"))
case("exits-same-layer", "model.json: exits[1].after: 'drop' gives the same output as exits[0]'s layer")(
    lambda j, t: (ex(j, 0).update(after="res1"), ex(j, 1).update(after="drop")))
# dropout is a no-op and batch norm is folded into its conv (FORMAT.md, "Where an exit reads")
case("exit-after-leading-dropout",
     "model.json: exits[0].after: 'd0' has no computing layer before it (a dropout is a no-op at inference)")(
    lambda j, t: (j["backbone"].insert(0, L("d0", "dropout")), ex(j, 0).update(after="d0")))
case("exit-before-trailing-dropout",
     "model.json: exits[1].after: 'flat' is the end of the backbone (only dropout follows it")(
    lambda j, t: (j["backbone"].append(L("d9", "dropout")), ex(j, 1).update(after="flat")))
case("exit-between-conv-and-bn",
     "model.json: exits[0].after: 'conv1' is followed by batchnorm2d 'bn1', which is folded into it")(
    lambda j, t: ex(j, 0).update(after="conv1"))
case("exit-name-duplicate", "model.json: exits[1].name: 'e1' is already the name of exits[0]")(
    lambda j, t: ex(j, 1).update(name="e1"))
case("final-name-duplicate", "model.json: final.name: 'e2' is already the name of exits[1]")(
    lambda j, t: j["final"].update(name="e2"))
case("exits-not-array", "model.json: exits: not an array")(lambda j, t: j.update(exits={"e1": 1}))
case("exits-too-many", "model.json: exits: 16 early exits, at most 15")(
    lambda j, t: j.update(exits=[copy.deepcopy(ex(j, 0)) for _ in range(16)]))
case("final-missing", "model.json: final: missing or not an object")(lambda j, t: j.pop("final"))
case("confidence-missing", "model.json: exits[1].confidence: required for the confidence_head policy")(
    lambda j, t: ex(j, 1).pop("confidence"))
case("confidence-not-one-value", "model.json: exits[1].confidence: ends in 64 values, expected 1")(
    lambda j, t: ex(j, 1).update(confidence=[L("flat", "flatten")]))
case("confidence-with-entropy", "model.json: exits[0].confidence: only allowed with the confidence_head policy")(
    lambda j, t: ex(j, 0).update(confidence=[]))
case("head-not-ending-in-k", "model.json: exits[0].head: ends in 64x1x1 = 64 values, expected num_classes = 3")(
    lambda j, t: ex(j, 0)["head"].pop())
case("final-head-empty", "model.json: final.head: ends in 6x1x1 = 6 values, expected num_classes = 3")(
    lambda j, t: j["final"].update(head=[]))

# -- layers
case("layer-type-unknown", "model.json: backbone[0].type: unknown layer type 'conv3d'")(
    lambda j, t: bb(j, "conv1").update(type="conv3d"))
case("layer-not-object", "model.json: backbone[2]: a layer must be an object")(
    lambda j, t: j["backbone"].__setitem__(2, 5))
case("layer-name-duplicate", "model.json: backbone[3].name: 'relu1' is already used by backbone[2]")(
    lambda j, t: bb(j, "pool1").update(name="relu1"))
case("layer-name-duplicate-in-head", "model.json: exits[0].head[1].name: 'flat' is already used by exits[0].head[0]")(
    lambda j, t: ex(j, 0)["head"][1].update(name="flat"))
case("layer-name-too-long", "model.json: backbone[2].name: must be 1 to 63 characters")(
    lambda j, t: bb(j, "relu1").update(name="r" * 64))
case("layer-name-missing", "model.json: backbone[2].name: missing")(lambda j, t: bb(j, "relu1").pop("name"))
case("backbone-empty", "model.json: backbone: has no computing layer")(
    lambda j, t: (j.update(backbone=[L("d", "dropout")]), j.pop("exits")))
case("backbone-too-many-layers", "model.json: backbone: 4097 layers, more than the limit of 4096")(
    lambda j, t: ("json", json.dumps(dict(j, backbone=[{"name": "r%d" % i, "type": "relu"} for i in range(4097)]),
                                     separators=(",", ":"))))
case("batchnorm-after-relu", "model.json: backbone[3]: batchnorm2d must directly follow a conv2d")(
    lambda j, t: j["backbone"].insert(3, copy.deepcopy(bb(j, "bn1")) | {"name": "bn2"}))
case("batchnorm-features", "model.json: backbone[1].num_features: 6 does not match the preceding conv2d's out_channels 4")(
    lambda j, t: bb(j, "bn1").update(num_features=6))
case("batchnorm-negative-var", "model.json: backbone[1].running_var: [1] + eps is")(
    lambda j, t: bb(j, "bn1").update(running_var="neg.v"))
case("batchnorm-eps-negative", "model.json: backbone[1].eps: must be >= 0")(lambda j, t: bb(j, "bn1").update(eps=-1))
case("conv-in-channels", "model.json: backbone[0].weight: tensor 'c1.w' has shape [4, 2, 3, 3], expected [4, 3, 3, 3]")(
    lambda j, t: bb(j, "conv1").update(in_channels=3))
case("conv-groups", "model.json: backbone[6].groups: 4 does not divide in_channels 4 and out_channels 6")(
    lambda j, t: bb(j, "conv2").update(groups=4))
case("conv-kernel-fraction", "model.json: backbone[0].kernel_size: must be an integer")(
    lambda j, t: bb(j, "conv1").update(kernel_size=2.5))
case("conv-kernel-negative", "model.json: backbone[0].kernel_size: -1 is out of range [1, 65536]")(
    lambda j, t: bb(j, "conv1").update(kernel_size=-1))
case("conv-kernel-triple", "model.json: backbone[0].kernel_size: must be an integer or two integers [h, w]")(
    lambda j, t: bb(j, "conv1").update(kernel_size=[3, 3, 3]))
case("conv-stride-zero", "model.json: backbone[0].stride: 0 is out of range [1, 65536]")(
    lambda j, t: bb(j, "conv1").update(stride=0))
case("conv-padding-same", "model.json: backbone[0].padding: 'same' is not supported")(
    lambda j, t: bb(j, "conv1").update(padding="same"))
case("conv-padding-mode", "model.json: backbone[0].padding_mode: 'reflect' not supported")(
    lambda j, t: bb(j, "conv1").update(padding_mode="reflect"))
case("conv-kernel-too-large", "model.json: backbone layer 'conv2': the kernel does not fit the 4x4 input")(
    lambda j, t: (bb(j, "conv2").update(dilation=2)))
case("conv-weight-missing", "model.json: backbone[0].weight: missing")(lambda j, t: bb(j, "conv1").pop("weight"))
case("tensor-not-found", "model.json: backbone[6].bias: tensor 'nope' not found in")(
    lambda j, t: bb(j, "conv2").update(bias="nope"))
case("pool-window-too-large", "model.json: backbone layer 'pool1': the 9x9 window does not fit the 8x8 input")(
    lambda j, t: bb(j, "pool1").update(kernel_size=9))
case("pool-padding-over-half", "model.json: backbone[3].padding: must be at most half the kernel size")(
    lambda j, t: bb(j, "pool1").update(padding=2))
case("pool-ceil-mode", "model.json: backbone[3].ceil_mode: true not supported")(
    lambda j, t: bb(j, "pool1").update(ceil_mode=True))
case("pool-dilation", "model.json: backbone[3].dilation: 2x2 not supported")(
    lambda j, t: bb(j, "pool1").update(dilation=2))
case("linear-in-features", "model.json: exits[0].head layer 'fc': in_features is 64, but its input has 16 values")(
    lambda j, t: ex(j, 0)["head"].insert(0, L("p", "maxpool2d", kernel_size=2)))
case("linear-features-missing", "model.json: final.head[0].in_features: missing")(
    lambda j, t: j["final"]["head"][0].pop("in_features"))
case("residual-shape-mismatch", "model.json: backbone layer 'res1': the body gives 4x2x2 but the shortcut 4x4x4")(
    lambda j, t: bb(j, "res1")["body"][0].update(stride=2))
case("residual-nested", "model.json: backbone[4].body[2]: residuals do not nest")(
    lambda j, t: bb(j, "res1")["body"].append(L("inner", "residual", body=[L("r", "relu")])))
case("residual-activation", "model.json: backbone[4].activation: 'gelu' is not \"relu\" or \"none\"")(
    lambda j, t: bb(j, "res1").update(activation="gelu"))
case("residual-empty-body", "model.json: backbone[4].body: has no computing layer")(
    lambda j, t: bb(j, "res1").update(body=[]))
case("residual-body-missing", "model.json: backbone[4].body: missing or not an array")(
    lambda j, t: bb(j, "res1").pop("body"))


def macs_too_large(j, t):
    j.clear()
    j.update({"format": "exitrt-model", "version": 1, "weights": "w.safetensors",
              "input": {"shape": [4, 16384, 16384]}, "num_classes": 1,
              "backbone": [L("conv", "conv2d", in_channels=4, out_channels=1, kernel_size=64, weight="big.w"),
                           L("gap", "global_avgpool")],
              "final": {"head": []}})
    t[:] = [("big.w", np.zeros((1, 4, 64, 64), np.float32))]


case("macs-over-limit", "model.json: the backbone and heads take 4364288671744 MACs per sample, "
     "more than the limit of 1099511627776")(macs_too_large)


def activation_too_large(j, t):
    j["input"]["shape"] = [4, 32768, 32768]
    j["input"]["mean"] = 0


case("activation-over-limit", "model.json: input.shape: 4x32768x32768 out of range")(activation_too_large)

# -- the weights file (safetensors), model.json valid
case("st-too-short", "w.safetensors: file is 4 bytes, too short for a safetensors header")(lambda j, t: b"\x10\0\0\0")
case("st-empty", "w.safetensors: file is 0 bytes, too short for a safetensors header")(lambda j, t: b"")
case("st-header-length-huge", "w.safetensors: header length 9223372036854775808 exceeds the limit of 104857600 bytes")(
    lambda j, t: struct.pack("<Q", 1 << 63) + b"{}")
case("st-header-beyond-file", "w.safetensors: header length 4096 exceeds the file (16 bytes after the length)")(
    lambda j, t: struct.pack("<Q", 4096) + b"{}" + b" " * 14)
case("st-header-length-one", "w.safetensors: header length 1 is too short for a JSON object")(
    lambda j, t: struct.pack("<Q", 1) + b"{}")
case("st-header-bad-json", "w.safetensors: header: invalid JSON near byte")(
    lambda j, t: struct.pack("<Q", 15) + b'{"a": {"dtype":')
case("st-header-trailing", "w.safetensors: header: unexpected bytes after the JSON at byte 2")(
    lambda j, t: struct.pack("<Q", 8) + b"{}xxxxxx")
case("st-header-array", "w.safetensors: header: not a JSON object")(lambda j, t: struct.pack("<Q", 8) + b"[]      ")
case("st-dtype-f16", "model.json: backbone[0].weight: tensor 'c1.w': dtype F16 not supported (float32 required)")(
    lambda j, t: set_tensor(t, "c1.w", ("F16", [4, 2, 3, 3], bytes(144))))
case("st-dtype-unknown", "w.safetensors: tensor 'c1.w': dtype 'F33' is not a safetensors dtype")(
    st_mut(lambda h: h["c1.w"].update(dtype="F33")))
case("st-dtype-missing", "w.safetensors: tensor 'c1.w': dtype is missing or not a string")(
    st_mut(lambda h: h["c1.w"].pop("dtype")))
case("st-shape-9-dims", "w.safetensors: tensor 'c1.w': shape has 9 dims (at most 8)")(
    st_mut(lambda h: h["c1.w"].update(shape=[1] * 9)))
case("st-shape-negative", "w.safetensors: tensor 'c1.w': shape[0] is not a non-negative integer")(
    st_mut(lambda h: h["c1.w"].update(shape=[-4, 2, 3, 3])))
case("st-shape-overflow", "w.safetensors: tensor 'c1.w': shape overflows the element count")(
    st_mut(lambda h: h["c1.w"].update(shape=[1 << 40, 1 << 40])))
case("st-shape-bytes-overflow", "w.safetensors: tensor 'c1.w': shape overflows the byte size")(
    st_mut(lambda h: h["c1.w"].update(shape=[1 << 31, 1 << 31])))
case("st-shape-not-array", "w.safetensors: tensor 'c1.w': shape is missing or not an array")(
    st_mut(lambda h: h["c1.w"].update(shape="4,2,3,3")))
case("st-offsets-beyond-data", "w.safetensors: tensor 'f.b': data_offsets [")(
    st_mut(lambda h: h["f.b"].update(data_offsets=[h["f.b"]["data_offsets"][0] + 64,
                                                    h["f.b"]["data_offsets"][1] + 64])))
case("st-offsets-reversed", "w.safetensors: tensor 'c1.w': data_offsets [288, 0] end before they begin")(
    st_mut(lambda h: h["c1.w"].update(data_offsets=[288, 0])))
case("st-offsets-size-mismatch", "w.safetensors: tensor 'c1.w': data_offsets [0, 284] hold 284 bytes, but F32 shape needs 288")(
    st_mut(lambda h: h["c1.w"].update(data_offsets=[0, 284])))
case("st-offsets-missing", "w.safetensors: tensor 'c1.w': data_offsets must be two non-negative integers")(
    st_mut(lambda h: h["c1.w"].pop("data_offsets")))
case("st-offsets-fraction", "w.safetensors: tensor 'c1.w': data_offsets must be two non-negative integers")(
    st_mut(lambda h: h["c1.w"].update(data_offsets=[0.5, 288.5])))
case("st-offsets-beyond-2-53", "w.safetensors: tensor 'c1.w': data_offsets must be two non-negative integers")(
    st_mut(lambda h: h["c1.w"].update(data_offsets=[0, 2 ** 60])))
case("st-overlap", "w.safetensors: tensors 'c1.w' and 'bn1.g' overlap in the data section")(
    st_mut(lambda h: h["bn1.g"].update(data_offsets=[272, 288])))
case("st-entry-not-object", "w.safetensors: tensor 'c1.w': entry is not an object")(
    st_mut(lambda h: h.update({"c1.w": [1, 2]})))
case("st-metadata-not-object", "w.safetensors: __metadata__ is not an object")(
    st_mut(lambda h: h.update({"__metadata__": "pt"})))
case("st-metadata-value", "w.safetensors: __metadata__.format: value is not a string")(
    st_mut(lambda h: h.update({"__metadata__": {"format": 1}})))


def st_duplicate_name(j, t):
    h, data = st_header_of(t)
    text = json.dumps(h)
    # JSON objects may repeat a key; the reader must refuse it
    text = text[:-1] + ', "c1.w": ' + json.dumps(h["c1.w"]) + "}"
    return st_with_header_text(text, data)


def st_duplicate_meta(j, t):
    h, data = st_header_of(t)
    text = '{"__metadata__": {}, "__metadata__": {}, ' + json.dumps(h)[1:]
    return st_with_header_text(text, data)


def st_with_header_text(text, data):
    b = text.encode()
    b += b" " * ((8 - len(b) % 8) % 8)
    return struct.pack("<Q", len(b)) + b + data


case("st-tensor-duplicate", "w.safetensors: tensor 'c1.w' appears twice")(st_duplicate_name)
case("st-metadata-twice", "w.safetensors: __metadata__ appears twice")(st_duplicate_meta)
case("st-shape-vs-graph", "model.json: exits[0].head[1].weight: tensor 'e1.w' has shape [3, 32, 2], expected [3, 64]")(
    lambda j, t: set_tensor(t, "e1.w", tensor(t, "e1.w").reshape(3, 32, 2)))
case("st-truncated-data", "w.safetensors: tensor 'neg.v': data_offsets [")(
    lambda j, t: st_bytes(t)[:-8])


# -- transformer encoders (FORMAT.md, "Transformer encoders"): a token model
# (input {"tokens": 6}, vocabulary 10, D 8: token_embed, layer_norm,
# self_attention, a post-LN encoder_block; exit after the attention with
# [token_pool mean, linear]; final [token_pool first, linear, tanh, linear])
# and a model of patches on the base's [2, 8, 8] input (patch_embed 4x4 with
# class token and position, a pre-LN block, layer_norm), each with one thing
# broken.

def tx_json():
    return {
        "format": "exitrt-model", "version": 1, "name": "corpus-tokens",
        "weights": "w.safetensors", "input": {"tokens": 6}, "num_classes": 3,
        "backbone": [
            L("embed", "token_embed", vocab_size=10, embed_dim=8, weight="te.w", position="te.p",
              segment="te.s"),
            L("ln", "layer_norm", normalized_shape=8, eps=1e-5, weight="ln.w", bias="ln.b"),
            L("attn", "self_attention", embed_dim=8, num_heads=2, in_weight="a.iw", in_bias="a.ib",
              out_weight="a.ow", out_bias="a.ob"),
            L("block", "encoder_block", norm_first=False, activation="gelu",
              attention={"embed_dim": 8, "num_heads": 4, "in_weight": "a.iw", "out_weight": "a.ow"},
              norm1={"normalized_shape": 8},
              linear1={"in_features": 8, "out_features": 16, "weight": "l1.w", "bias": "l1.b"},
              linear2={"in_features": 16, "out_features": 8, "weight": "l2.w", "bias": "l2.b"},
              norm2={"normalized_shape": 8, "weight": "ln.w", "bias": "ln.b"}),
        ],
        "exits": [
            {"name": "e1", "after": "attn",
             "head": [L("pool", "token_pool", mode="mean"),
                      L("fc", "linear", in_features=8, out_features=3, weight="h.w", bias="h.b")],
             "policy": {"type": "entropy", "threshold": 0.5}},
        ],
        "final": {"name": "final", "head": [
            L("pool", "token_pool", mode="first"),
            L("pooler", "linear", in_features=8, out_features=8, weight="p.w", bias="ln.b"),
            L("tanh", "tanh"),
            L("fc", "linear", in_features=8, out_features=3, weight="h.w", bias="h.b")]},
    }


def vit_json():
    return {
        "format": "exitrt-model", "version": 1, "name": "corpus-patches",
        "weights": "w.safetensors",
        "input": {"shape": [2, 8, 8], "scale": 1.0, "mean": 0.5, "std": 0.25},
        "num_classes": 3,
        "backbone": [
            L("patch", "patch_embed", in_channels=2, embed_dim=8, patch_size=4, weight="pe.w",
              bias="pe.b", class_token="pe.c", position="pe.p"),
            L("block", "encoder_block", norm_first=True, activation="relu",
              attention={"embed_dim": 8, "num_heads": 2, "in_weight": "a.iw", "in_bias": "a.ib",
                         "out_weight": "a.ow", "out_bias": "a.ob"},
              norm1={"normalized_shape": 8, "weight": "ln.w", "bias": "ln.b"},
              linear1={"in_features": 8, "out_features": 16, "weight": "l1.w", "bias": "l1.b"},
              linear2={"in_features": 16, "out_features": 8, "weight": "l2.w", "bias": "l2.b"},
              norm2={"normalized_shape": 8, "weight": "ln.w", "bias": "ln.b"}),
            L("ln", "layer_norm", normalized_shape=8),
        ],
        "exits": [
            {"name": "e1", "after": "block",
             "head": [L("pool", "token_pool", mode="first"),
                      L("ln", "layer_norm", normalized_shape=8, weight="ln.w", bias="ln.b"),
                      L("fc", "linear", in_features=8, out_features=3, weight="h.w", bias="h.b")],
             "policy": {"type": "max_prob", "threshold": 0.6}},
        ],
        "final": {"name": "final", "head": [
            L("pool", "token_pool", mode="mean"),
            L("fc", "linear", in_features=8, out_features=3, weight="h.w", bias="h.b")]},
    }


def tx_tensors():
    r = np.random.RandomState(12)

    def n(*shape):
        return (0.5 * r.standard_normal(shape)).astype(np.float32)
    return [
        ("te.w", n(10, 8)), ("te.p", n(6, 8)), ("te.s", n(8)), ("ln.w", n(8)), ("ln.b", n(8)),
        ("a.iw", n(24, 8)), ("a.ib", n(24)), ("a.ow", n(8, 8)), ("a.ob", n(8)),
        ("l1.w", n(16, 8)), ("l1.b", n(16)), ("l2.w", n(8, 16)), ("l2.b", n(8)),
        ("h.w", n(3, 8)), ("h.b", n(3)), ("p.w", n(8, 8)),
        ("pe.w", n(8, 2, 4, 4)), ("pe.b", n(8)), ("pe.c", n(8)), ("pe.p", n(5, 8)),
        ("v6", n(6)), ("c.w", n(8, 2, 1, 1)), ("pe.w3", n(8, 3, 4, 4)),
        ("l1.w6", n(16, 6)), ("pe.w16", n(8, 2, 16, 16)),
    ]


def tx_case(name, want, base=tx_json):
    """A case on the token model (or base=vit_json: the patches)."""
    def deco(fn):
        def m(j, t):
            j.clear()
            j.update(base())
            t[:] = tx_tensors()
            return fn(j, t)
        MODEL_CASES.append((name, want, m))
        return fn
    return deco


def tx_block(j):
    return bb(j, "block")


tx_case("tx-linear-on-tokens", "model.json: backbone layer 'lin': linear cannot read a token activation (pool the tokens first: token_pool)")(
    lambda j, t: j["backbone"].__setitem__(1, L("lin", "linear", in_features=8, out_features=8, weight="p.w")))
tx_case("tx-relu-on-tokens", "model.json: backbone layer 'r': relu cannot read a token activation")(
    lambda j, t: j["backbone"].__setitem__(1, L("r", "relu")))
tx_case("tx-flatten-on-tokens", "model.json: final.head layer 'flat': flatten cannot read a token activation")(
    lambda j, t: j["final"]["head"].__setitem__(0, L("flat", "flatten")))
tx_case("tx-token-pool-on-vector", "model.json: exits[0].head layer 'pool2': token_pool reads a token activation, but its input is not one")(
    lambda j, t: ex(j, 0)["head"].insert(1, L("pool2", "token_pool", mode="first")))
tx_case("tx-token-embed-on-tokens", "model.json: backbone layer 'embed2': token_embed reads the token input (input.tokens), as the first backbone layer")(
    lambda j, t: j["backbone"].__setitem__(1, dict(bb(j, "embed"), name="embed2")))
tx_case("tx-conv-on-ids", "model.json: backbone layer 'conv': conv2d cannot read the token input (a token_embed reads it)")(
    lambda j, t: j["backbone"].__setitem__(0, L("conv", "conv2d", in_channels=2, out_channels=8,
                                                 kernel_size=1, weight="c.w")))
tx_case("tx-layer-norm-dim", "model.json: backbone layer 'ln': normalized_shape is 6, but the features are 8")(
    lambda j, t: (bb(j, "ln").update(normalized_shape=6), bb(j, "ln").pop("weight"), bb(j, "ln").pop("bias")))
tx_case("tx-layer-norm-weight-only", "model.json: backbone[1]: weight and bias come together (or neither)")(
    lambda j, t: bb(j, "ln").pop("bias"))
tx_case("tx-heads-not-dividing", "model.json: backbone[2].num_heads: 3 heads do not divide embed_dim 8")(
    lambda j, t: bb(j, "attn").update(num_heads=3))
tx_case("tx-in-weight-shape", "model.json: backbone[2].in_weight: tensor 'a.ow' has shape [8, 8], expected [24, 8]")(
    lambda j, t: bb(j, "attn").update(in_weight="a.ow"))
tx_case("tx-position-shape", "model.json: backbone layer 'embed': position has 10 rows, but there are 6 tokens")(
    lambda j, t: bb(j, "embed").update(position="te.w"))
tx_case("tx-segment-shape", "model.json: backbone[0].segment: tensor 'v6' has shape [6], expected [8]")(
    lambda j, t: bb(j, "embed").update(segment="v6"))
tx_case("tx-tokens-with-shape", "model.json: input.shape: not allowed with input.tokens")(
    lambda j, t: j["input"].update(shape=[2, 6, 1]))
tx_case("tx-tokens-with-scale", "model.json: input.scale: not allowed with input.tokens")(
    lambda j, t: j["input"].update(scale=1.0))
tx_case("tx-tokens-zero", "model.json: input.tokens: 0 is out of range [1, 65536]")(
    lambda j, t: j["input"].update(tokens=0))
tx_case("tx-tokens-string", "model.json: input.tokens: must be an integer")(
    lambda j, t: j["input"].update(tokens="6"))
tx_case("tx-vocab-zero", "model.json: backbone[0].vocab_size: 0 is out of range [1, 16777216]")(
    lambda j, t: bb(j, "embed").update(vocab_size=0))
tx_case("tx-token-pool-mode", "model.json: exits[0].head[0].mode: 'max' is not \"first\" or \"mean\"")(
    lambda j, t: ex(j, 0)["head"][0].update(mode="max"))
tx_case("tx-block-activation", "model.json: backbone[3].activation: 'tanh' is not \"relu\" or \"gelu\"")(
    lambda j, t: tx_block(j).update(activation="tanh"))
tx_case("tx-block-norm-first-string", "model.json: backbone[3].norm_first: must be true or false")(
    lambda j, t: tx_block(j).update(norm_first="yes"))
tx_case("tx-block-attention-missing", "model.json: backbone[3].attention: missing or not an object")(
    lambda j, t: tx_block(j).pop("attention"))
tx_case("tx-block-attention-not-object", "model.json: backbone[3].attention: missing or not an object")(
    lambda j, t: tx_block(j).update(attention=5))
tx_case("tx-block-linear1-features", "model.json: backbone layer 'block': linear1 must map the 8 features to F and linear2 F back to 8 (got 6 -> 16, 16 -> 8)")(
    lambda j, t: tx_block(j)["linear1"].update(in_features=6, weight="l1.w6"))
tx_case("tx-block-linear2-weight", "model.json: backbone[3].linear2.weight: tensor 'l1.w' has shape [16, 8], expected [8, 16]")(
    lambda j, t: tx_block(j)["linear2"].update(weight="l1.w"))
tx_case("tx-block-heads", "model.json: backbone[3].attention.num_heads: 5 heads do not divide embed_dim 8")(
    lambda j, t: tx_block(j)["attention"].update(num_heads=5))
tx_case("tx-patch-channels", "model.json: backbone layer 'patch': in_channels is 3, but its input has 2 channels",
        vit_json)(lambda j, t: bb(j, "patch").update(in_channels=3, weight="pe.w3"))
tx_case("tx-patch-position-shape", "model.json: backbone layer 'patch': position has 6 rows, but there are 5 tokens",
        vit_json)(lambda j, t: bb(j, "patch").update(position="te.p"))
tx_case("tx-patch-too-large", "model.json: backbone layer 'patch': the 16x16 patch does not fit the 8x8 input",
        vit_json)(lambda j, t: bb(j, "patch").update(patch_size=16, weight="pe.w16"))
tx_case("tx-token-pool-on-image", "model.json: backbone layer 'pool': token_pool reads a token activation, but its input is not one", vit_json)(
    lambda j, t: j["backbone"].insert(0, L("pool", "token_pool", mode="first")))
tx_case("tx-token-embed-on-image", "model.json: backbone layer 'embed': token_embed reads the token input (input.tokens), as the first backbone layer",
        vit_json)(lambda j, t: j["backbone"].__setitem__(0, L("embed", "token_embed", vocab_size=10, embed_dim=8,
                                                             weight="te.w")))


# ---- data cases -----------------------------------------------------------------------

def valid_inputs():
    r = np.random.RandomState(9)
    return r.random_sample((4, 2, 8, 8)).astype(np.float32)


def f4(a):
    return np.asarray(a, np.float32).astype("<f4").tobytes()


X = None  # set in main


def data_cases():
    x = f4(X)
    shp = (4, 2, 8, 8)
    big_idx = idx_bytes(8, [60000, 28, 28], b"")
    return [
        # (file name, command, substring, bytes)
        ("empty.npy", "data", "empty.npy: the file is empty", b""),
        ("three-bytes.npy", "data", "three-bytes.npy: truncated: 3 bytes is too short for a header", b"\x93NU"),
        ("text.npy", "data", "text.npy: not a .npy or IDX file (first bytes 68 65 6c 6c)", b"hello world\n"),
        ("bad-magic.npy", "data", "bad-magic.npy: bad .npy magic", b"\x93NUMPZ\x01\x00" + bytes(64)),
        ("version-4.npy", "data", "version-4.npy: .npy version 4.0 is not supported",
         npy_bytes("<f4", shp, x).replace(b"NUMPY\x01", b"NUMPY\x04", 1)),
        ("header-not-dict.npy", "data", "header-not-dict.npy: malformed .npy header: not a dict",
         npy_bytes("<f4", shp, x, header="['descr', '<f4']")),
        ("dtype-f8-big-endian.npy", "data", "dtype-f8-big-endian.npy: unsupported dtype '>f8'",
         npy_bytes(">f8", shp, np.asarray(X, ">f8").tobytes())),
        ("dtype-f8-truncated.npy", "data",
         "dtype-f8-truncated.npy: truncated: data needs 4096 bytes from byte 128, the file has 4095",
         npy_bytes("<f8", shp, np.asarray(X, "<f8").tobytes())[:-1]),
        ("dtype-big-endian.npy", "data", "dtype-big-endian.npy: unsupported dtype '>f4'",
         npy_bytes(">f4", shp, np.asarray(X, ">f4").tobytes())),
        ("fortran.npy", "data", "fortran.npy: fortran_order True is not supported", npy_bytes("<f4", shp, x, fortran=True)),
        ("shape-negative.npy", "data",
         "shape-negative.npy: malformed .npy header: shape holds something other than non-negative integers",
         npy_bytes("<f4", shp, x, header="{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 2, 8, 8), }")),
        ("shape-dim-overflow.npy", "data", "shape-dim-overflow.npy: a dimension of the shape overflows",
         npy_bytes("<f4", shp, x, header="{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2), }")),
        ("shape-product-overflow.npy", "data", "shape-product-overflow.npy: the shape is too large",
         npy_bytes("<f4", (1 << 31, 1 << 31), b"")),
        ("shape-9-dims.npy", "data", "shape-9-dims.npy: more than 8 dimensions", npy_bytes("<f4", [1] * 9, f4([0]))),
        ("shape-scalar.npy", "data", "shape-scalar.npy: the array is a scalar", npy_bytes("<f4", (), f4([1]),
         header="{'descr': '<f4', 'fortran_order': False, 'shape': (), }")),
        ("zero-samples.npy", "data", "zero-samples.npy: the array holds no values", npy_bytes("<f4", (0, 2, 8, 8), b"")),
        ("truncated.npy", "data", "truncated.npy: truncated: data needs 2048 bytes from byte 128, the file has 100",
         npy_bytes("<f4", shp, x)[:228]),
        ("trailing-bytes.npy", "data", "trailing-bytes.npy: the file is longer than its header says (2176 bytes expected)",
         npy_bytes("<f4", shp, x) + b"\0"),
        ("unknown-key.npy", "data", "unknown-key.npy: malformed .npy header: unexpected key 'foo'",
         npy_bytes("<f4", shp, x, header="{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 8, 8), 'foo': 1, }")),
        ("missing-shape.npy", "data", "missing-shape.npy: malformed .npy header: missing 'shape'",
         npy_bytes("<f4", shp, x, header="{'descr': '<f4', 'fortran_order': False, }")),
        ("header-length-over.npy", "data", "header-length-over.npy: .npy header length 100000 is over 65536 bytes",
         b"\x93NUMPY\x02\x00" + struct.pack("<I", 100000) + b"{" + bytes(64)),
        ("header-unterminated.npy", "data", "header-unterminated.npy: malformed .npy header: string too long or escaped",
         npy_bytes("<f4", shp, x, header="{'descr': '<f4")),
        ("wrong-sample-size.npy", "data", "wrong-sample-size.npy: each sample has 192 values (3x8x8), the model takes 2x8x8 = 128",
         npy_bytes("<f4", (4, 3, 8, 8), bytes(4 * 4 * 3 * 64))),
        ("channels-last.npy", "data",
         "channels-last.npy: samples of shape 8x8x2 do not match the model's input 2x8x8: the same 128 "
         "values in another layout (channels last? numpy: x.transpose(0, 3, 1, 2)); "
         "accepted: [N, 2, 8, 8] or [N, 128]",
         npy_bytes("<f4", (4, 8, 8, 2), f4(X.transpose(0, 2, 3, 1)))),
        ("idx-4x16-for-8x8", "data",
         "idx-4x16-for-8x8: samples of shape 2x4x16 do not match the model's input 2x8x8",
         idx_bytes(8, [4, 2, 4, 16], bytes(4 * 128))),
        ("idx-float-type", "data", "idx-float-type: IDX data type 0x0d is not supported (unsigned byte 0x08 only)",
         idx_bytes(0x0D, [4, 2, 8, 8], bytes(4 * 512))),
        ("idx-zero-dims", "data", "idx-zero-dims: IDX header has 0 dimensions (1..8)", idx_bytes(8, [], b"")),
        ("idx-dims-truncated", "data", "idx-dims-truncated: truncated: IDX dimensions needs 12 bytes from byte 4, the file has 5",
         idx_bytes(8, [4, 16, 8], b"")[:9]),
        ("idx-claims-more", "data", "idx-claims-more: truncated: data needs 47040000 bytes from byte 16, the file has 0",
         big_idx),
        ("idx-claims-more.gz", "data", "idx-claims-more.gz: truncated: data needs 47040000 bytes, more than a ",
         gz(big_idx)),
        ("gzip-truncated.npy.gz", "data", "gzip-truncated.npy.gz: truncated",
         gz(npy_bytes("<f4", shp, x))[:300]),
        ("gzip-corrupt.npy.gz", "data", "gzip-corrupt.npy.gz: read error at byte 0",
         gz(npy_bytes("<f4", shp, x))[:10] + bytes(range(200, 256)) * 4),
        ("gzip-trailing.npy.gz", "data", "gzip-trailing.npy.gz: the file is longer than its header says",
         gz(npy_bytes("<f4", shp, x) + b"extra")),
        ("labels-float.npy", "labels", "labels-float.npy: labels must be integers (u1, i4 or i8), not float32",
         npy_bytes("<f4", (4,), f4([0, 1, 2, 0]))),
        ("labels-float64.npy", "labels", "labels-float64.npy: labels must be integers (u1, i4 or i8), not float64",
         npy_bytes("<f8", (4,), np.array([0, 1, 2, 0], "<f8").tobytes())),
        ("labels-2d.npy", "labels", "labels-2d.npy: labels must be one-dimensional (got 2 dimensions)",
         npy_bytes("<i4", (4, 2), np.zeros(8, "<i4").tobytes())),
        ("labels-negative.npy", "labels", "labels-negative.npy: label 1 is negative or out of range",
         npy_bytes("<i4", (4,), np.array([0, -1, 2, 0], "<i4").tobytes())),
        ("labels-i8-overflow.npy", "labels", "labels-i8-overflow.npy: label 2 is negative or out of range",
         npy_bytes("<i8", (4,), np.array([0, 1, 1 << 40, 0], "<i8").tobytes())),
        ("labels-count.npy", "labels", "labels-count.npy has 5 labels but",
         npy_bytes("<i4", (5,), np.array([0, 1, 2, 0, 1], "<i4").tobytes())),
        ("labels-class-range.idx", "labels", "labels-class-range.idx: label 0 is 7, the model has 3 classes",
         idx_bytes(8, [4], bytes([7, 1, 2, 0]))),
    ]


# ---- main -----------------------------------------------------------------------------------


def write_valid(out):
    write(os.path.join(out, "valid", "model.json"), dumps(base_json()))
    write(os.path.join(out, "valid", "w.safetensors"), st_bytes(base_tensors()))
    write(os.path.join(out, "valid", "inputs.npy"), npy_bytes("<f4", X.shape, f4(X)))
    y = X.copy()
    y[1, 0, 3, 3] = np.nan
    y[3, 1, 0, 0] = np.inf
    write(os.path.join(out, "valid", "nonfinite.npy"), npy_bytes("<f4", y.shape, f4(y)))
    write(os.path.join(out, "valid", "labels.npy"),
          npy_bytes("<i4", (4,), np.array([0, 1, 2, 1], "<i4").tobytes()))


def main_corpus(out):
    for sub in ("valid", "models", "data"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    write_valid(out)
    rows = []
    names = set()
    for name, want, fn in MODEL_CASES:
        assert name not in names, name
        names.add(name)
        j, t = base_json(), base_tensors()
        r = fn(j, t)
        d = os.path.join(out, "models", name)
        weights = st_bytes(t)
        text = dumps(j)
        if isinstance(r, bytes):
            weights = r
        elif isinstance(r, tuple) and len(r) == 2 and r[0] == "json":
            text = r[1]
        write(os.path.join(d, "model.json"), text)
        write(os.path.join(d, "w.safetensors"), weights)
        for cmd in ("run", "inspect"):
            rows.append(("models/" + name, cmd, "1", want))
    for fname, cmd, want, data in data_cases():
        write(os.path.join(out, "data", fname), data)
        rows.append(("data/" + fname, cmd, "1", want))
    with open(os.path.join(out, "expected.tsv"), "w") as f:
        f.write("# path\tcommand\tstatus\tstderr substring (generated by make_corpus.py)\n")
        for r in rows:
            assert "\t" not in "".join(r) and "\n" not in "".join(r)
            f.write("\t".join(r) + "\n")
    nm = len(MODEL_CASES)
    nd = len(data_cases())
    print("make_corpus: %d model cases, %d data cases, %d checks" % (nm, nd, len(rows)))


def main_big(out):
    """Cases over the limits that are too large to commit."""
    rows = []
    j, t = base_json(), base_tensors()
    # model.json over 16 MiB
    d = os.path.join(out, "models", "json-over-16mib")
    write(os.path.join(d, "model.json"), dumps(j) + " " * (16 * 1024 * 1024))
    write(os.path.join(d, "w.safetensors"), st_bytes(t))
    rows.append(("models/json-over-16mib", "inspect", "1", "bytes, larger than the limit of 16777216 bytes"))
    # 65537 tensors
    d = os.path.join(out, "models", "st-too-many-tensors")
    write(os.path.join(d, "model.json"), dumps(j))
    h, data = st_header_of(t)
    for i in range(65537 - len(h)):
        h["z%d" % i] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    write(os.path.join(d, "w.safetensors"), st_with_header(h, data))
    rows.append(("models/st-too-many-tensors", "inspect", "1",
                 "w.safetensors: header: 65537 tensors, more than the limit of 65536"))
    # the folded weights over 2^31 floats: one 256 KiB tensor named by 8193 linear layers
    d = os.path.join(out, "models", "weights-over-limit")
    jj = base_json()
    body = [L("l%d" % i, "linear", in_features=256, out_features=256, weight="sq.w") for i in range(4096)]
    jj["backbone"] = [L("flat0", "flatten"), L("fit", "linear", in_features=128, out_features=256, weight="fit.w")]
    jj["backbone"] += [L("res%d" % k, "residual", body=body) for k in range(9)]
    jj["exits"] = []
    jj["final"] = {"head": [L("fc", "linear", in_features=256, out_features=3, weight="out.w")]}
    write(os.path.join(d, "model.json"), json.dumps(jj, separators=(",", ":")))
    write(os.path.join(d, "w.safetensors"), st_bytes([
        ("sq.w", np.zeros((256, 256), np.float32)), ("fit.w", np.zeros((256, 128), np.float32)),
        ("out.w", np.zeros((3, 256), np.float32))]))
    rows.append(("models/weights-over-limit", "inspect", "1",
                 "weight floats, more than the limit of 2147483648"))
    with open(os.path.join(out, "expected.tsv"), "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


def main_seeds(out):
    """Seeds for the fuzzers: the valid files in each harness's input format."""
    j, t = base_json(), base_tensors()
    st = st_bytes(t)
    small = json.dumps(j, separators=(",", ":")).encode()
    # (written beside the inputs a fuzzer run added there, which stay)
    write(os.path.join(out, "fuzz_safetensors", "base.safetensors"), st)
    write(os.path.join(out, "fuzz_safetensors", "meta.safetensors"),
          st_bytes(t[:3], metadata={"format": "pt", "note": "x"}))
    write(os.path.join(out, "fuzz_safetensors", "empty.safetensors"), st_bytes([]))
    # fuzz_model: u32 LE length of the JSON, the JSON, then the weights
    def model_seed(jt, wt):
        return struct.pack("<I", len(jt)) + jt + wt
    write(os.path.join(out, "fuzz_model", "base"), model_seed(small, st))
    jm = base_json()
    jm["exits"] = jm["exits"][:1]
    jm["backbone"] = [l for l in jm["backbone"] if l["name"] not in ("bn1",)]
    write(os.path.join(out, "fuzz_model", "one-exit"), model_seed(json.dumps(jm, separators=(",", ":")).encode(), st))
    mlp = {"format": "exitrt-model", "version": 1, "weights": "w.safetensors",
           "input": {"shape": [1, 4, 4]}, "num_classes": 3,
           "backbone": [L("flat", "flatten"), L("fc1", "linear", in_features=16, out_features=6, weight="a.w", bias="a.b"),
                        L("relu", "relu"), L("fc2", "linear", in_features=6, out_features=6, weight="b.w")],
           "exits": [{"name": "x", "after": "relu", "policy": {"type": "max_prob", "threshold": 0.6},
                      "head": [L("o", "linear", in_features=6, out_features=3, weight="h.w")]}],
           "final": {"head": [L("o", "linear", in_features=6, out_features=3, weight="h.w")]}}
    r = np.random.RandomState(3)
    mt = [("a.w", r.random_sample((6, 16)).astype(np.float32)), ("a.b", np.zeros(6, np.float32)),
          ("b.w", r.random_sample((6, 6)).astype(np.float32)), ("h.w", r.random_sample((3, 6)).astype(np.float32))]
    write(os.path.join(out, "fuzz_model", "mlp"), model_seed(json.dumps(mlp, separators=(",", ":")).encode(), st_bytes(mt)))
    # the transformer encoders: a token model and one of patches
    txt = st_bytes(tx_tensors())
    write(os.path.join(out, "fuzz_model", "tokens"),
          model_seed(json.dumps(tx_json(), separators=(",", ":")).encode(), txt))
    write(os.path.join(out, "fuzz_model", "patches"),
          model_seed(json.dumps(vit_json(), separators=(",", ":")).encode(), txt))
    # fuzz_data: byte 0 = flags (bit 0: gzip the rest before writing), then the file
    x = f4(X)
    seeds = {
        "npy-f4": npy_bytes("<f4", X.shape, x),
        "npy-f8": npy_bytes("<f8", (2, 3), np.array([0.5, -1e300, 1e-320, 3.4028235e38, 0, 1], "<f8").tobytes()),
        "npy-u1-v2": npy_bytes("|u1", (2, 8), bytes(range(16)), version=2),
        "npy-i8-labels": npy_bytes("<i8", (3,), np.array([0, 1, 2], "<i8").tobytes()),
        "npy-i4-labels": npy_bytes("<i4", (3, 1), np.array([0, 1, 2], "<i4").tobytes(), version=3),
        "idx3": idx_bytes(8, [2, 4, 4], bytes(range(32))),
        "idx1": idx_bytes(8, [4], bytes([0, 1, 2, 3])),
    }
    for name, b in seeds.items():
        write(os.path.join(out, "fuzz_data", name), b"\0" + b)
    write(os.path.join(out, "fuzz_data", "idx3-gz-flag"), b"\1" + seeds["idx3"])
    write(os.path.join(out, "fuzz_data", "npy-f4.gz"), b"\0" + gz(seeds["npy-f4"][:400]))
    write(os.path.join(out, "fuzz_data", "idx3.gz"), b"\0" + gz(seeds["idx3"]))


def main():
    global X
    X = valid_inputs()
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--big":
        main_big(args[1])
    elif len(args) == 2 and args[0] == "--seeds":
        main_seeds(args[1])
    elif len(args) == 1:
        main_corpus(args[0])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
