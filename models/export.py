"""Export a multi-exit PyTorch network to an exitrt model directory
(model.json + model.safetensors, and optionally golden.safetensors), as
models/FORMAT.md (version 1) describes.

    export(backbone, exits, final_head, out_dir, input_shape, num_classes,
           input_norm=dict(scale=1/255, mean=[0.2860], std=[0.3530]),
           name="my-model", golden_inputs=x_raw)

Exits are described as Distiller's attach_exits does, keyed by the name of
the backbone layer after which they attach:

    exits = {"layer1": (head, {"type": "entropy", "threshold": 0.5}, None),
             "layer2": (head2, {"type": "confidence_head", "threshold": 0.9,
                                "name": "early2"}, conf_head)}

A value is (head, policy) or (head, policy, confidence_module_or_None), or a
dict with keys head, policy, confidence. The policy dict holds "type" and
"threshold", and optionally "name" (default exit1, exit2, ... in backbone
order). Types: entropy, max_prob, margin, confidence_head, and patience
(PABEE: leaves once the predicted class was the same at the last k exits,
this one included; its threshold is that k, an integer >= 1, written to
model.json as an integer).

Where an exit reads (the rule models/FORMAT.md states for the loader too):
Dropout computes nothing at inference and is not written, so an exit keyed
by a Dropout (or by an Identity, or by a Sequential ending in them) reads
the output of the nearest computing layer before it, and its "after" names
that layer. Batch norm is folded into the convolution before it, so an exit
may follow the BatchNorm2d but not sit between the two. After that
resolution every exit needs its own layer, not the last computing one (the
final head's place), and not before the first (the network's input): a
network with an exit there is refused with ExportError at export, not
written for the loader to refuse.

The backbone's layer list ("top-level layers" in FORMAT.md):
  - an nn.Sequential: its children, in order. A child that is itself an
    nn.Sequential (a ResNet stage such as torchvision's layer1) is flattened
    into the list; its layers are named with their PyTorch module path
    ("layer1.0", "layer1.1", ...). An exit keyed by the Sequential's name
    ("layer1") attaches after its last layer; an exit keyed by a nested path
    ("layer1.1") attaches after that layer.
  - a torchvision ResNet (recognised by its attributes): conv1, bn1, relu,
    maxpool, layer1..layer4 (flattened as above), avgpool and a flatten; the
    final head defaults to its fc.
Anything else is rejected.

Supported modules: Conv2d (zeros padding), BatchNorm2d (written with its
running statistics; the loader folds it into the preceding convolution),
ReLU, Sigmoid, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1) (global_avgpool),
Flatten, Linear, Dropout/Dropout2d and Identity (not written: no-ops at
inference),
nn.Sequential (flattened), and residual blocks: torchvision BasicBlock and
Bottleneck, or any block with their structure, i.e. children conv1, bn1,
conv2, bn2 [, conv3, bn3], ReLU modules named relu/relu1/relu2/relu3, and an
optional downsample (or shortcut) module, whose forward is
relu(bn2(conv2(relu(bn1(conv1(x))))) [...] + downsample(x)). A block's
forward is not inspected: after writing, the exporter runs the written
graph with an independent interpreter and compares it with the PyTorch
modules, so a block whose forward differs is caught and reported.
An unsupported module raises ExportError naming its path and type.

Needs only torch and numpy (works with torch 1.13 and 2.x); safetensors is
written by hand.
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT_VERSION = 1
GOLDEN_VERSION = "1"
POLICIES = ("entropy", "max_prob", "margin", "confidence_head", "patience")
MAX_EXITS = 16  # the final head included
# Modules that compute nothing at inference: not written (an exit keyed by
# one reads the computing layer before it). nn.Identity is left out of the
# layer list altogether.
NO_OPS = (nn.Dropout, nn.Dropout2d)


class ExportError(ValueError):
    pass


# ---------------------------------------------------------------------------
# safetensors


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: array} as float32 safetensors: 8-byte LE header length,
    JSON header (padded with spaces to a multiple of 8), then the data in
    header order."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name], dtype="<f4"))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """(tensors {name: float32 array}, metadata dict) of a safetensors file
    written by write_safetensors (F32 only)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name}: dtype {info['dtype']}")
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw, dtype="<f4", count=(e - b) // 4,
                                  offset=8 + n + b).reshape(info["shape"])
    return out, meta


# ---------------------------------------------------------------------------
# The graph: the backbone's layer list and the exits attached to it


def exit_spec(spec):
    """(head, policy dict, confidence module or None) of one exits value."""
    if isinstance(spec, dict):
        return spec["head"], dict(spec["policy"]), spec.get("confidence")
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        return spec[0], dict(spec[1]), (spec[2] if len(spec) == 3 else None)
    raise ExportError("an exit must be (head, policy[, confidence]) or a dict "
                      "with head, policy and confidence")


def _is_torchvision_resnet(m):
    need = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
            "layer4", "avgpool", "fc"]
    return (not isinstance(m, nn.Sequential)
            and all(isinstance(getattr(m, a, None), nn.Module) for a in need))


def backbone_layers(backbone):
    """The backbone's top-level layer list [(name, module)] and a map from
    every name an exit may be keyed by to the index of the layer it attaches
    after (-1: before the first layer). Also returns the default final head
    (a torchvision ResNet's fc)."""
    default_final = None
    if isinstance(backbone, nn.Sequential):
        top = list(backbone.named_children())
    elif _is_torchvision_resnet(backbone):
        top = [(a, getattr(backbone, a)) for a in
               ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                "layer3", "layer4", "avgpool"]]
        top.append(("flatten", nn.Flatten(1)))
        default_final = ("fc", backbone.fc)
    else:
        raise ExportError(f"backbone: {type(backbone).__name__} is neither an "
                          "nn.Sequential nor a torchvision ResNet; wrap its "
                          "layers in an nn.Sequential")
    layers, where = [], {}

    def add(name, m):
        if isinstance(m, nn.Sequential):
            for cn, c in m.named_children():
                add(f"{name}.{cn}", c)
        elif not isinstance(m, nn.Identity):
            layers.append((name, m))
        where[name] = len(layers) - 1

    for name, m in top:
        add(name, m)
    if not layers:
        raise ExportError("backbone: no layers")
    return layers, where, default_final


class Graph:
    """A resolved multi-exit network: layers [(name, module)], exits in
    backbone order [dict(name, key, after (index of the layer the key names,
    where forward() runs the exit, as in training), at (index of the
    computing layer whose output the exit reads at inference: the "after"
    written), head, policy, confidence)], final head module or None."""

    def __init__(self, backbone, exits, final_head):
        self.layers, where, default_final = backbone_layers(backbone)
        self.final_name = "final"
        if final_head is None and default_final is not None:
            final_head = default_final[1]
        self.final = final_head
        found = []
        for key, spec in (exits or {}).items():
            head, policy, conf = exit_spec(spec)
            if key not in where:
                raise ExportError(
                    f"exit at '{key}': no backbone layer of that name (layers: "
                    f"{', '.join(sorted(where))})")
            found.append((where[key], key, head, policy, conf))
        found.sort(key=lambda t: t[0])
        # What exitrt runs (module docstring, "Where an exit reads")
        computing = [i for i, (_, m) in enumerate(self.layers) if not isinstance(m, NO_OPS)]
        if not computing:
            raise ExportError("backbone: no computing layer (Dropout only)")
        last = computing[-1]
        noop = "Dropout computes nothing at inference"
        self.exits = []
        seen_at, seen_names = {}, set()
        for i, (idx, key, head, policy, conf) in enumerate(found):
            name = policy.pop("name", None) or f"exit{i + 1}"
            at = max((j for j in computing if j <= idx), default=-1)
            if at < 0:
                raise ExportError(
                    f"exit at '{key}': no computing layer before it (Dropout and Identity "
                    "compute nothing at inference), so it "
                    "would read the network's input; an exit attaches after a "
                    "backbone layer")
            lname = self.layers[at][0]
            via = f" ('{key}' reads its output: {noop})" if idx != at else ""
            if at in seen_at:
                raise ExportError(f"exits at '{seen_at[at]}' and '{key}' attach after "
                                  f"the same layer '{lname}'{via}; at most one exit "
                                  "per layer")
            if at == last:
                tail = (f" (only Dropout follows it: {noop})"
                        if last < len(self.layers) - 1 else "")
                raise ExportError(f"exit at '{key}': after the last computing backbone "
                                  f"layer '{lname}'{tail}; that is the final head's place")
            nxt = next(j for j in computing if j > at)
            if (isinstance(self.layers[at][1], nn.Conv2d)
                    and isinstance(self.layers[nxt][1], nn.BatchNorm2d)):
                bn = self.layers[nxt][0]
                raise ExportError(
                    f"exit at '{key}': between Conv2d '{lname}' and BatchNorm2d '{bn}', "
                    "which exitrt folds into the convolution (its output without the "
                    f"batch norm is never computed); attach the exit after '{bn}'")
            if name in seen_names or name == self.final_name:
                raise ExportError(f"exit name '{name}' used twice")
            seen_at[at] = key
            seen_names.add(name)
            self.exits.append(dict(name=name, key=key, after=idx, at=at, head=head,
                                   policy=policy, confidence=conf))
        if len(self.exits) + 1 > MAX_EXITS:
            raise ExportError(f"{len(self.exits)} early exits; at most "
                              f"{MAX_EXITS - 1}")

    def modules(self):
        ms = [m for _, m in self.layers]
        for e in self.exits:
            ms.append(e["head"])
            if e["confidence"] is not None:
                ms.append(e["confidence"])
        if self.final is not None:
            ms.append(self.final)
        return ms

    def forward(self, x, detach_confidence=False):
        """Runs every exit on every sample: (names, [logits [N,K]] in exit
        order with the final head last, [confidence [N,1] or None])."""
        by_layer = {e["after"]: e for e in self.exits}
        logits, confs = [], []
        h = x
        for i, (_, m) in enumerate(self.layers):
            h = m(h)
            e = by_layer.get(i)
            if e is not None:
                logits.append(e["head"](h).reshape(h.shape[0], -1))
                c = e["confidence"]
                if c is not None:
                    c = c(h.detach() if detach_confidence else h)
                    c = c.reshape(h.shape[0], -1)
                confs.append(c)
        z = self.final(h) if self.final is not None else h
        logits.append(z.reshape(z.shape[0], -1))
        confs.append(None)
        return [e["name"] for e in self.exits] + [self.final_name], logits, confs


def forward_exits(backbone, exits, final_head, x, detach_confidence=False):
    """Every exit's logits for every sample of x (already normalised), as
    the exporter sees the network: ([logits], [confidence or None]) in exit
    order, the final head last. Training uses this too, so what is trained is
    what is exported."""
    _, logits, confs = Graph(backbone, exits, final_head).forward(
        x, detach_confidence=detach_confidence)
    return logits, confs


# ---------------------------------------------------------------------------
# Translation of modules to FORMAT.md layers


def _pair(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ExportError(f"expected a pair, got {v}")
        return [int(v[0]), int(v[1])]
    return [int(v), int(v)]


def _scalar_or_pair(v):
    p = _pair(v)
    return p[0] if p[0] == p[1] else p


class Translator:
    def __init__(self):
        self.tensors = {}

    def tensor(self, prefix, path, what, t):
        name = ".".join(p for p in (prefix, path, what) if p)
        if name in self.tensors:
            raise ExportError(f"tensor name {name} used twice")
        self.tensors[name] = t.detach().cpu().float().numpy().copy()
        return name

    def sequence(self, items, prefix, where, in_residual=False):
        """items: [(layer name, module path, module)] -> layer list."""
        out = []
        for lname, path, m in items:
            out.extend(self.module(lname, path, m, prefix, where, in_residual))
        for i, layer in enumerate(out):
            if layer["type"] == "batchnorm2d" and (
                    i == 0 or out[i - 1]["type"] != "conv2d"):
                raise ExportError(
                    f"{where}: batch norm '{layer['name']}' does not follow a "
                    "Conv2d in the same layer list; exitrt folds batch norm "
                    "into the preceding convolution")
        names = set()
        for layer in out:
            if layer["name"] in names:
                raise ExportError(f"{where}: layer name '{layer['name']}' used twice")
            if not 1 <= len(layer["name"]) <= 63:
                raise ExportError(f"{where}: layer name '{layer['name']}' must "
                                  "have 1..63 characters")
            names.add(layer["name"])
        return out

    def children(self, m, path):
        return [(n, f"{path}.{n}" if path else n, c) for n, c in m.named_children()]

    def module(self, lname, path, m, prefix, where, in_residual):
        """One module -> a list of layers (empty for Identity, several for
        a flattened Sequential)."""
        here = f"{where} module '{path or lname}' ({type(m).__name__})"
        if isinstance(m, nn.Sequential):
            out = []
            for cn, cp, c in self.children(m, path):
                out.extend(self.module(f"{lname}.{cn}", cp, c, prefix, where, in_residual))
            return out
        if isinstance(m, nn.Identity):
            return []
        if isinstance(m, nn.Conv2d):
            pm = getattr(m, "padding_mode", "zeros")
            if pm != "zeros":
                raise ExportError(f"{here}: padding_mode '{pm}'; only zeros is supported")
            k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
            pad = m.padding
            if isinstance(pad, str):
                if pad == "valid":
                    pad = 0
                else:  # "same" (PyTorch allows it with stride 1 only)
                    tot = [d[i] * (k[i] - 1) for i in range(2)]
                    if any(t % 2 for t in tot):
                        raise ExportError(f"{here}: padding='same' with an odd total "
                                          "padding is asymmetric; not supported")
                    pad = [t // 2 for t in tot]
            layer = dict(name=lname, type="conv2d", in_channels=m.in_channels,
                         out_channels=m.out_channels, kernel_size=_scalar_or_pair(k),
                         stride=_scalar_or_pair(s), padding=_scalar_or_pair(pad),
                         dilation=_scalar_or_pair(d), groups=m.groups,
                         weight=self.tensor(prefix, path, "weight", m.weight))
            if m.bias is not None:
                layer["bias"] = self.tensor(prefix, path, "bias", m.bias)
            return [layer]
        if isinstance(m, nn.BatchNorm2d):
            if not m.track_running_stats or m.running_mean is None:
                raise ExportError(f"{here}: without running statistics (track_running_stats"
                                  "=False) it normalises by batch statistics; not supported")
            c = m.num_features
            w = m.weight if m.affine else torch.ones(c)
            b = m.bias if m.affine else torch.zeros(c)
            return [dict(name=lname, type="batchnorm2d", num_features=c, eps=float(m.eps),
                         weight=self.tensor(prefix, path, "weight", w),
                         bias=self.tensor(prefix, path, "bias", b),
                         running_mean=self.tensor(prefix, path, "running_mean", m.running_mean),
                         running_var=self.tensor(prefix, path, "running_var", m.running_var))]
        if isinstance(m, nn.ReLU):
            return [dict(name=lname, type="relu")]
        if isinstance(m, nn.Sigmoid):
            return [dict(name=lname, type="sigmoid")]
        if isinstance(m, NO_OPS):
            return []  # computes nothing at inference (Graph: where exits read)
        if isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != [1, 1] or m.ceil_mode or m.return_indices:
                raise ExportError(f"{here}: dilation, ceil_mode and return_indices "
                                  "are not supported")
            stride = m.stride if m.stride is not None else m.kernel_size
            return [dict(name=lname, type="maxpool2d",
                         kernel_size=_scalar_or_pair(m.kernel_size),
                         stride=_scalar_or_pair(stride), padding=_scalar_or_pair(m.padding))]
        if isinstance(m, nn.AvgPool2d):
            pad = _pair(m.padding)
            if m.ceil_mode or m.divisor_override is not None or (
                    not m.count_include_pad and pad != [0, 0]):
                raise ExportError(f"{here}: only floor mode, no divisor_override, and "
                                  "count_include_pad=True (or no padding) are supported")
            stride = m.stride if m.stride is not None else m.kernel_size
            return [dict(name=lname, type="avgpool2d",
                         kernel_size=_scalar_or_pair(m.kernel_size),
                         stride=_scalar_or_pair(stride), padding=_scalar_or_pair(pad))]
        if isinstance(m, nn.AdaptiveAvgPool2d):
            os_ = m.output_size
            if not isinstance(os_, (tuple, list)):
                os_ = (os_, os_)
            if list(os_) != [1, 1]:
                raise ExportError(f"{here}: only output size 1 (global average "
                                  "pooling) is supported")
            return [dict(name=lname, type="global_avgpool")]
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ExportError(f"{here}: only Flatten(1, -1) is supported")
            return [dict(name=lname, type="flatten")]
        if isinstance(m, nn.Linear):
            layer = dict(name=lname, type="linear", in_features=m.in_features,
                         out_features=m.out_features,
                         weight=self.tensor(prefix, path, "weight", m.weight))
            if m.bias is not None:
                layer["bias"] = self.tensor(prefix, path, "bias", m.bias)
            return [layer]
        kind = _block_kind(m, here)
        if kind is not None:
            if in_residual:
                raise ExportError(f"{here}: a residual block inside a residual "
                                  "block; residuals do not nest")
            ch = dict(m.named_children())
            relu = [ch.get(r) for r in ("relu", "relu1", "relu2", "relu3") if r in ch]
            for r in relu:
                if not isinstance(r, nn.ReLU):
                    raise ExportError(f"{here}: its relu is a {type(r).__name__}")
            order = (["conv1", "bn1", "relu1", "conv2", "bn2"] if kind == "basic" else
                     ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3"])
            items = []
            for n in order:
                if n.startswith("relu"):
                    items.append((n, f"{path}.{n}", nn.ReLU()))
                else:
                    items.append((n, f"{path}.{n}", ch[n]))
            body = self.sequence(items, prefix, f"{where} block '{path}'", True)
            layer = dict(name=lname, type="residual", body=body, activation="relu")
            sc_name = "downsample" if "downsample" in ch else (
                "shortcut" if "shortcut" in ch else None)
            if sc_name is not None:
                sc = ch[sc_name]
                items = ([(f"{sc_name}.{cn}", cp, c)
                          for cn, cp, c in self.children(sc, f"{path}.{sc_name}")]
                         if isinstance(sc, nn.Sequential) else
                         [(sc_name, f"{path}.{sc_name}", sc)])
                short = self.sequence(items, prefix, f"{where} block '{path}' shortcut", True)
                if short:
                    layer["shortcut"] = short
            return [layer]
        raise ExportError(f"{here}: unsupported module type {type(m).__module__}."
                          f"{type(m).__name__}")


def _block_kind(m, here):
    """'basic', 'bottleneck' or None: whether m has the structure of a
    torchvision BasicBlock / Bottleneck."""
    ch = dict(m.named_children())
    if not (isinstance(ch.get("conv1"), nn.Conv2d) and isinstance(ch.get("conv2"), nn.Conv2d)
            and isinstance(ch.get("bn1"), nn.BatchNorm2d)
            and isinstance(ch.get("bn2"), nn.BatchNorm2d)):
        return None
    allowed = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "relu1",
               "relu2", "relu3", "downsample", "shortcut"}
    extra = sorted(set(ch) - allowed)
    if extra:
        raise ExportError(f"{here}: looks like a residual block but has children "
                          f"{extra} that a BasicBlock/Bottleneck does not have")
    if "conv3" in ch or "bn3" in ch:
        if not (isinstance(ch.get("conv3"), nn.Conv2d)
                and isinstance(ch.get("bn3"), nn.BatchNorm2d)):
            raise ExportError(f"{here}: a bottleneck block needs conv3 and bn3")
        return "bottleneck"
    return "basic"


# ---------------------------------------------------------------------------
# An independent interpreter of the written graph (FORMAT.md semantics), and
# shapes and MACs as src/plan.h counts them


def _normalise(x, inp):
    c = x.shape[1]
    scale = float(inp.get("scale", 1.0))
    mean = np.broadcast_to(np.asarray(inp.get("mean", [0.0]), dtype=np.float32), (c,))
    std = np.broadcast_to(np.asarray(inp.get("std", [1.0]), dtype=np.float32), (c,))
    x = torch.as_tensor(x, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)
    return (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)


def run_layers(layers, T, h):
    """Runs a FORMAT.md layer list on h [N,C,H,W] with tensors T."""
    t = lambda n: torch.as_tensor(np.asarray(T[n]))  # noqa: E731
    for L in layers:
        ty = L["type"]
        if ty == "conv2d":
            h = F.conv2d(h, t(L["weight"]), t(L["bias"]) if "bias" in L else None,
                         _pair(L.get("stride", 1)), _pair(L.get("padding", 0)),
                         _pair(L.get("dilation", 1)), L.get("groups", 1))
        elif ty == "batchnorm2d":
            h = F.batch_norm(h, t(L["running_mean"]), t(L["running_var"]), t(L["weight"]),
                             t(L["bias"]), False, 0.0, L.get("eps", 1e-5))
        elif ty == "relu":
            h = F.relu(h)
        elif ty == "sigmoid":
            h = torch.sigmoid(h)
        elif ty == "maxpool2d":
            k = _pair(L["kernel_size"])
            h = F.max_pool2d(h, k, _pair(L.get("stride", k)), _pair(L.get("padding", 0)))
        elif ty == "avgpool2d":
            k = _pair(L["kernel_size"])
            h = F.avg_pool2d(h, k, _pair(L.get("stride", k)), _pair(L.get("padding", 0)),
                             count_include_pad=True)
        elif ty == "global_avgpool":
            h = h.mean((2, 3), keepdim=True)
        elif ty == "flatten":
            h = h.reshape(h.shape[0], -1, 1, 1)
        elif ty == "linear":
            h = F.linear(h.reshape(h.shape[0], -1), t(L["weight"]),
                         t(L["bias"]) if "bias" in L else None)
            h = h.reshape(h.shape[0], -1, 1, 1)
        elif ty == "dropout":
            pass
        elif ty == "residual":
            s = run_layers(L["shortcut"], T, h) if L.get("shortcut") else h
            h = run_layers(L["body"], T, h) + s
            if L.get("activation", "relu") == "relu":
                h = F.relu(h)
        else:
            raise ExportError(f"layer type {ty}")
    return h


@torch.no_grad()
def run_model(model, T, x_raw):
    """Interprets a model.json dict on raw inputs: ({exit name: logits
    [N,K]}, {exit name: confidence [N,1]}), the final head included."""
    h = _normalise(x_raw, model["input"])
    n = h.shape[0]
    by_layer = {e["after"]: e for e in model["exits"]}
    logits, confs = {}, {}
    for L in model["backbone"]:
        h = run_layers([L], T, h)
        e = by_layer.get(L["name"])
        if e is not None:
            logits[e["name"]] = run_layers(e["head"], T, h).reshape(n, -1).numpy()
            if "confidence" in e:
                confs[e["name"]] = run_layers(e["confidence"], T, h).reshape(n, -1).numpy()
    logits[model["final"]["name"]] = run_layers(model["final"]["head"], T, h).reshape(n, -1).numpy()
    return logits, confs


def layer_macs(layers, shape):
    """(MACs per sample, output shape) of a layer list on input shape
    [C,H,W], counted as src/plan.h does."""
    total = 0
    c, hh, ww = shape
    for L in layers:
        ty = L["type"]
        if ty == "conv2d":
            k, s = _pair(L["kernel_size"]), _pair(L.get("stride", 1))
            p, d = _pair(L.get("padding", 0)), _pair(L.get("dilation", 1))
            ho = (hh + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
            wo = (ww + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            oc = L["out_channels"]
            total += oc * ho * wo * (c // L.get("groups", 1)) * k[0] * k[1]
            c, hh, ww = oc, ho, wo
        elif ty in ("maxpool2d", "avgpool2d"):
            k = _pair(L["kernel_size"])
            s, p = _pair(L.get("stride", k)), _pair(L.get("padding", 0))
            hh = (hh + 2 * p[0] - k[0]) // s[0] + 1
            ww = (ww + 2 * p[1] - k[1]) // s[1] + 1
        elif ty == "global_avgpool":
            hh = ww = 1
        elif ty == "flatten":
            c, hh, ww = c * hh * ww, 1, 1
        elif ty == "linear":
            total += L["in_features"] * L["out_features"]
            c, hh, ww = L["out_features"], 1, 1
        elif ty == "residual":
            mb, out = layer_macs(L["body"], (c, hh, ww))
            ms = layer_macs(L["shortcut"], (c, hh, ww))[0] if L.get("shortcut") else 0
            total += mb + ms
            c, hh, ww = out
    return total, (c, hh, ww)


def model_macs(model):
    """Per-sample MACs as src/plan.h counts them: {"stage": [backbone MACs
    of stage s], "head": [head (+ confidence) MACs of exit s, final last],
    "full": backbone + final head}."""
    shape = tuple(model["input"]["shape"])
    afters = [e["after"] for e in model["exits"]]
    stage, head = [], []
    cur = 0
    for L in model["backbone"]:
        m, shape = layer_macs([L], shape)
        cur += m
        if L["name"] in afters:
            e = model["exits"][afters.index(L["name"])]
            hm = layer_macs(e["head"], shape)[0]
            if "confidence" in e:
                hm += layer_macs(e["confidence"], shape)[0]
            stage.append(cur)
            head.append(hm)
            cur = 0
    stage.append(cur)
    head.append(layer_macs(model["final"]["head"], shape)[0])
    return {"stage": stage, "head": head, "full": sum(stage) + head[-1]}


# ---------------------------------------------------------------------------
# export


def _check_policy(name, policy):
    ty = policy.get("type")
    if ty not in POLICIES:
        raise ExportError(f"exit '{name}': policy type {ty!r}; one of {', '.join(POLICIES)}")
    if "threshold" not in policy:
        raise ExportError(f"exit '{name}': policy without a threshold")
    raw = policy["threshold"]
    thr = float(raw)
    if ty == "patience":
        # a streak length: the loader takes only finite integers >= 1
        if isinstance(raw, bool) or not math.isfinite(thr) or thr < 1 or not thr.is_integer():
            raise ExportError(f"exit '{name}': patience threshold {raw!r} must be an integer "
                              ">= 1 (the number of exits in a row that agree)")
        thr = int(thr)
    elif not math.isfinite(thr) or thr < 0 or (ty != "entropy" and thr > 1):
        raise ExportError(f"exit '{name}': threshold {thr} out of range for {ty}")
    extra = sorted(set(policy) - {"type", "threshold"})
    if extra:
        raise ExportError(f"exit '{name}': unknown policy fields {extra}")
    return {"type": ty, "threshold": thr}


def _norm_list(v, c, what):
    v = [float(a) for a in np.atleast_1d(np.asarray(v, dtype=np.float64))]
    if len(v) not in (1, c):
        raise ExportError(f"input_norm {what}: {len(v)} values for {c} channels")
    return v


def export(backbone, exits, final_head, out_dir, input_shape, num_classes,
           input_norm=None, name="model", sample_data=None, sample_labels=None,
           golden_inputs=None, check=True):
    """Writes out_dir/model.json and out_dir/model.safetensors, and
    out_dir/golden.safetensors when golden_inputs (raw units, [N,C,H,W] or
    [N,H,W] for C=1) are given. Returns the model.json dict.

    The modules are put in eval mode for the export and restored after. With
    check (the default) the written graph is run by an independent
    interpreter and compared with the PyTorch modules; a difference raises
    ExportError (it means a module's forward is not what its structure says).
    """
    g = Graph(backbone, exits, final_head)
    c, h, w = (int(v) for v in input_shape)
    if not (1 <= c <= 4 and 1 <= h <= 65536 and 1 <= w <= 65536):
        raise ExportError(f"input_shape {input_shape}: [C,H,W] with C in 1..4")
    input_norm = dict(input_norm or {})
    inp = {"shape": [c, h, w]}
    if "scale" in input_norm:
        inp["scale"] = float(input_norm.pop("scale"))
    if "mean" in input_norm:
        inp["mean"] = _norm_list(input_norm.pop("mean"), c, "mean")
    if "std" in input_norm:
        inp["std"] = _norm_list(input_norm.pop("std"), c, "std")
        if min(inp["std"]) <= 0:
            raise ExportError("input_norm std must be > 0")
    if input_norm:
        raise ExportError(f"input_norm: unknown keys {sorted(input_norm)}")

    modes = [(m, m.training) for m in g.modules()]
    for m, _ in modes:
        m.eval()
    try:
        tr = Translator()
        items = [(n, n, m) for n, m in g.layers]
        backbone_json = tr.sequence(items, "backbone", "backbone")
        exits_json = []
        for e in g.exits:
            def seq(m, prefix, where):
                if isinstance(m, nn.Sequential):
                    return tr.sequence(tr.children(m, ""), prefix, where)
                return tr.sequence([(_short(m), "", m)], prefix, where)
            ej = {"name": e["name"], "after": g.layers[e["at"]][0],
                  "head": seq(e["head"], f"exits.{e['name']}.head", f"exit '{e['name']}' head"),
                  "policy": _check_policy(e["name"], e["policy"])}
            if e["confidence"] is not None:
                if ej["policy"]["type"] != "confidence_head":
                    raise ExportError(f"exit '{e['name']}': a confidence module with "
                                      f"policy {ej['policy']['type']}")
                ej["confidence"] = seq(e["confidence"], f"exits.{e['name']}.confidence",
                                       f"exit '{e['name']}' confidence")
            elif ej["policy"]["type"] == "confidence_head":
                raise ExportError(f"exit '{e['name']}': policy confidence_head "
                                  "without a confidence module")
            exits_json.append(ej)
        if g.final is None:
            final_json = []
        elif isinstance(g.final, nn.Sequential):
            final_json = tr.sequence(tr.children(g.final, ""), "final", "final head")
        else:
            fname = "fc" if _is_torchvision_resnet(backbone) and final_head is None \
                else _short(g.final)
            final_json = tr.sequence([(fname, "", g.final)], "final", "final head")

        model = {"format": "exitrt-model", "version": FORMAT_VERSION, "name": name,
                 "weights": "model.safetensors", "input": inp,
                 "num_classes": int(num_classes)}
        for key, val in (("sample_data", sample_data), ("sample_labels", sample_labels)):
            if val is not None:
                if os.path.isabs(val):
                    raise ExportError(f"{key}: {val} is absolute; paths in model.json "
                                      "are relative to the model directory")
                model[key] = val
        model["backbone"] = backbone_json
        model["exits"] = exits_json
        model["final"] = {"name": g.final_name, "head": final_json}

        # Shapes: every head ends in K values, every confidence in one.
        shape = (c, h, w)
        afters = {e["after"]: e for e in exits_json}
        for L in backbone_json:
            _, shape = layer_macs([L], shape)
            if L["name"] in afters:
                e = afters[L["name"]]
                if int(np.prod(layer_macs(e["head"], shape)[1])) != num_classes:
                    raise ExportError(f"exit '{e['name']}': head does not end in "
                                      f"{num_classes} values")
                if "confidence" in e and int(np.prod(layer_macs(e["confidence"], shape)[1])) != 1:
                    raise ExportError(f"exit '{e['name']}': confidence does not end in 1 value")
        if int(np.prod(layer_macs(final_json, shape)[1])) != num_classes:
            raise ExportError(f"final head does not end in {num_classes} values")

        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model.json"), "w") as f:
            f.write(_dumps(model))
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tr.tensors,
                          {"format": "exitrt-weights", "model": name})

        x_check = None
        if golden_inputs is not None:
            x_check = np.asarray(golden_inputs, dtype=np.float32)
            if x_check.ndim == 3 and c == 1:
                x_check = x_check[:, None]
            if x_check.shape[1:] != (c, h, w):
                raise ExportError(f"golden_inputs shape {x_check.shape}; [N,{c},{h},{w}] expected")
        elif check:
            gen = torch.Generator().manual_seed(0)
            x_check = (torch.rand((4, c, h, w), generator=gen) /
                       inp.get("scale", 1.0)).numpy()
        if x_check is not None:
            with torch.no_grad():
                names, logits, confs = g.forward(_normalise(x_check, inp))
            ref = {n: z.numpy() for n, z in zip(names, logits)}
            refc = {n: cc.numpy() for n, cc in zip(names, confs) if cc is not None}
            if golden_inputs is not None:
                gt = {"input": x_check}
                gt.update({f"logits.{n}": v for n, v in ref.items()})
                gt.update({f"confidence.{n}": v for n, v in refc.items()})
                write_safetensors(os.path.join(out_dir, "golden.safetensors"), gt,
                                  {"format": "exitrt-golden", "version": GOLDEN_VERSION,
                                   "model": name})
            if check:
                il, ic = run_model(model, tr.tensors, x_check)
                for n in ref:
                    _compare(f"exit '{n}' logits", il[n], ref[n])
                for n in refc:
                    _compare(f"exit '{n}' confidence", ic[n], refc[n])
    finally:
        for m, training in modes:
            m.train(training)
    return model


def _short(m):
    return type(m).__name__.lower()


def _compare(what, got, want):
    if got.shape != want.shape:
        raise ExportError(f"self-check: {what}: shape {got.shape}, PyTorch gives {want.shape}")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    tol = 1e-3 * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    if not err <= tol:
        raise ExportError(f"self-check: {what} of the written graph differ from the "
                          f"PyTorch modules by {err:.3g}: a module's forward does not "
                          "match its exported structure")


def _dumps(model):
    """JSON with one layer per line: readable, and diffs stay small."""
    def enc(v, ind):
        pad = " " * ind
        if isinstance(v, dict):
            if all(not isinstance(x, (dict, list)) or (isinstance(x, list) and all(
                    not isinstance(y, (dict, list)) for y in x)) for x in v.values()):
                return json.dumps(v)
            items = [f'{pad}  {json.dumps(k)}: {enc(x, ind + 2)}' for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            return "[\n" + ",\n".join(pad + "  " + enc(x, ind + 2) for x in v) + "\n" + pad + "]"
        return json.dumps(v)
    return enc(model, 0) + "\n"
