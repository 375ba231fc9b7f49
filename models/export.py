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
  - a torchvision VisionTransformer (recognised by its attributes):
    "patch_embed" (conv_proj, class_token and encoder.pos_embedding, any
    in_channels), then its encoder layers named by module path
    ("encoder.layers.encoder_layer_0", ...: exits are keyed by these); the
    final head defaults to [token_pool (first), encoder.ln, heads]. An exit
    head on tokens starts with models/transformer.py's TokenPool, e.g.
    nn.Sequential(TokenPool("first"), nn.LayerNorm(D, eps=1e-6),
    nn.Linear(D, K)). (Transformer encoders in general: see below.)
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

Transformer encoders (models/FORMAT.md, "Transformer encoders"):

    # an image model: patches, then encoder layers
    bb = nn.Sequential()
    bb.add_module("patch", PatchEmbed(3, 64, 4, 32))       # models/transformer.py
    bb.add_module("encoder", nn.TransformerEncoder(
        nn.TransformerEncoderLayer(64, 4, 128, norm_first=True, batch_first=True), 6))
    exits = {"encoder.layers.1": (nn.Sequential(TokenPool("first"), nn.Linear(64, 10)),
                                  {"type": "entropy", "threshold": 0.5})}
    export(bb, exits, nn.Sequential(TokenPool("first"), nn.Linear(64, 10)), out_dir,
           (3, 32, 32), 10, input_norm=..., golden_inputs=x_raw[:16])

    # a text model: input_shape={"tokens": T}; inputs are rows [N, 2, T] of
    # floats, the ids then the mask (1 attended, 0 padding)
    net = BertClassifier(...)                               # models/bert.py
    backbone, exits, final = net.export_parts({"encoder.0": policy0, ...})
    export(backbone, exits, final, out_dir, {"tokens": 128}, K,
           golden_inputs=pack_tokens(ids[:16], mask[:16]))

  - nn.TransformerEncoderLayer -> encoder_block: either norm order
    (norm_first), activation relu or exact gelu (a string, F.relu/F.gelu or
    an nn.ReLU/nn.GELU module), batch_first True or False (the graph keeps
    tokens [N, T, D] between modules and transposes around a sequence-first
    layer). Its self_attn must be plain self-attention (no add_bias_kv,
    add_zero_attn, kdim/vdim of their own); the key padding mask is the
    input's, and no other attention mask can be expressed (a module that
    applies one is an unsupported module).
  - nn.TransformerEncoder: flattened like an nn.Sequential, its layers named
    "<name>.layers.<i>" (exits keyed by these; "<name>" attaches after its
    last layer, or after its norm, "<name>.norm", written as a layer_norm).
  - torchvision's EncoderBlock (ViT's; pre-LN, MLP Linear-GELU-Dropout-
    Linear-Dropout) -> encoder_block; a VisionTransformer backbone as above.
  - nn.LayerNorm over the last dimension (per token, or on a vector) ->
    layer_norm (with a weight and no bias: a bias of zeros); nn.GELU (exact)
    -> gelu; nn.Tanh -> tanh; models/transformer.py's TokenPool ->
    token_pool, PatchEmbed -> patch_embed, TokenEmbedding -> token_embed.
  - BERT-style embeddings (children word_embeddings, position_embeddings,
    token_type_embeddings, LayerNorm, dropout: Hugging Face's names, as
    models/bert.py's BertEmbeddings) -> token_embed (position rows 0..T-1,
    token type row 0 as the segment vector) then layer_norm
    ("<name>.LayerNorm"; an exit keyed by the embeddings reads the latter).
    A token model's first layer is one of these embeddings.
  - The mask: Graph.forward splits a token input into ids and mask
    (transformer.split_tokens) and passes the mask to every module that
    takes one: nn.TransformerEncoderLayer (as src_key_padding_mask) and the
    modules whose `takes_mask` is true, called as m(h, mask) (TokenPool).
Golden files of a token model hold its input rows [N, 2, T]. A layer given
the wrong kind of activation (a Linear on tokens, a head ending in tokens)
is refused, naming the layer.

The self-check: the written graph, run by the independent interpreter
below, against the network's forward (or `reference`, a function of the raw
rows giving every exit's logits: models/hf.py passes Hugging Face's own
forward, which a chain of the modules given cannot reproduce); NaN on both
sides (a sequence with no attended token) is agreement, NaN on one side
alone is not. token_pool "first" reads token 0 whatever its mask, as
PyTorch's x[:, 0] and Hugging Face's pooler do (a left-padded sequence
pools its padding token 0, as there).

Hugging Face checkpoints (BertModel, BertForSequenceClassification,
ViTModel, ViTForImageClassification, DeeBERT and PABEE exit heads): see
models/hf.py, which maps them onto the modules above.

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

try:  # models/ on sys.path (the scripts and tests), or models imported as a package
    import transformer as tx
except ImportError:  # pragma: no cover
    from . import transformer as tx

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


def _is_torchvision_vit(m):
    """torchvision's VisionTransformer (by its attributes, as the ResNet)."""
    enc = getattr(m, "encoder", None)
    return (not isinstance(m, nn.Sequential)
            and all(isinstance(getattr(m, a, None), nn.Module) for a in ("conv_proj", "heads"))
            and isinstance(getattr(m, "class_token", None), torch.Tensor)
            and isinstance(getattr(enc, "pos_embedding", None), torch.Tensor)
            and isinstance(getattr(enc, "layers", None), nn.Sequential)
            and isinstance(getattr(enc, "ln", None), nn.Module))


def _vit_parts(vit):
    """A torchvision VisionTransformer as a layer list: patch_embed (conv_proj,
    class token, position embedding), the encoder's layers by module path,
    and the default final head's items [(layer name, module path, module)]:
    token 0 (the class token), the encoder's final layer norm (per token, so it may
    follow the pooling) and the heads."""
    if not isinstance(vit.conv_proj, nn.Conv2d):
        raise ExportError(f"backbone: VisionTransformer conv_proj "
                          f"({type(vit.conv_proj).__name__}): a convolutional stem is not "
                          "supported, only the Conv2d patchifier")
    top = [("patch_embed", tx.VitPatchEmbed(vit))]
    top += [(f"encoder.layers.{n}", b) for n, b in vit.encoder.layers.named_children()]
    pool = tx.TokenPool("first")
    final_items = [("token_pool", "token_pool", pool), ("encoder.ln", "encoder.ln", vit.encoder.ln),
                   ("heads", "heads", vit.heads)]
    return top, final_items, nn.Sequential(pool, vit.encoder.ln, vit.heads)


def backbone_layers(backbone):
    """The backbone's top-level layer list [(name, module)] and a map from
    every name an exit may be keyed by to the index of the layer it attaches
    after (-1: before the first layer). Also returns the default final head,
    None or (items [(layer name, module path, module)], module): a
    torchvision ResNet's fc, a torchvision ViT's [token_pool, encoder.ln,
    heads]."""
    default_final = None
    if isinstance(backbone, nn.Sequential):
        top = list(backbone.named_children())
    elif _is_torchvision_resnet(backbone):
        top = [(a, getattr(backbone, a)) for a in
               ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                "layer3", "layer4", "avgpool"]]
        top.append(("flatten", nn.Flatten(1)))
        default_final = ([("fc", "", backbone.fc)], backbone.fc)
    elif _is_torchvision_vit(backbone):
        top, items, mod = _vit_parts(backbone)
        default_final = (items, mod)
    else:
        raise ExportError(f"backbone: {type(backbone).__name__} is neither an "
                          "nn.Sequential nor a torchvision ResNet or VisionTransformer; "
                          "wrap its layers in an nn.Sequential")
    layers, where = [], {}

    def add(name, m):
        if isinstance(m, nn.Sequential):
            for cn, c in m.named_children():
                add(f"{name}.{cn}", c)
        elif isinstance(m, nn.TransformerEncoder):
            # its layers one by one (an exit may follow any), then its norm
            for i, c in enumerate(m.layers):
                add(f"{name}.layers.{i}", c)
            if m.norm is not None:
                add(f"{name}.norm", m.norm)
        elif not isinstance(m, nn.Identity):
            layers.append((name, m))
        where[name] = len(layers) - 1

    for name, m in top:
        add(name, m)
    if not layers:
        raise ExportError("backbone: no layers")
    return layers, where, default_final


def _token_input(m):
    """Whether module m reads a token input [N, 2, T] (a token model's first
    layer): models/transformer.py's TokenEmbedding, or BERT-style embeddings
    (word_embeddings, position_embeddings, LayerNorm children)."""
    return _is_module(m, "TokenEmbedding") or _is_bert_embeddings(m)


def _is_module(m, cls_name):
    """isinstance against models/transformer.py's class of that name, also
    when the caller imported that file under another module name."""
    c = getattr(tx, cls_name)
    return isinstance(m, c) or (type(m).__name__ == cls_name
                                and type(m).__module__.split(".")[-1] == "transformer")


def _is_bert_embeddings(m):
    ch = dict(m.named_children())
    return (isinstance(ch.get("word_embeddings"), nn.Embedding)
            and isinstance(ch.get("position_embeddings"), nn.Embedding)
            and isinstance(ch.get("LayerNorm"), nn.LayerNorm))


def _kpm(mask):
    return None if mask is None else ~mask


def call(m, h, mask):
    """Runs module m on h as the exporter's graph does: the mask (token
    models: [N, T] bool, True where attended; None otherwise) goes to the
    modules that take one (models/transformer.py's `takes_mask`, and
    nn.TransformerEncoderLayer's key padding mask); an nn.Sequential or
    nn.TransformerEncoder runs child by child; a layer that is not
    batch_first gets its input transposed (and its output transposed back):
    between modules, tokens are always [N, T, D]."""
    if isinstance(m, nn.Sequential):
        for c in m:
            h = call(c, h, mask)
        return h
    if isinstance(m, nn.TransformerEncoder):
        for c in m.layers:
            h = call(c, h, mask)
        return m.norm(h) if m.norm is not None else h
    if isinstance(m, nn.TransformerEncoderLayer):
        if m.self_attn.batch_first:
            return m(h, src_key_padding_mask=_kpm(mask))
        return m(h.transpose(0, 1), src_key_padding_mask=_kpm(mask)).transpose(0, 1)
    if getattr(m, "takes_mask", False):
        return m(h, mask)
    return m(h)


class Graph:
    """A resolved multi-exit network: layers [(name, module)], exits in
    backbone order [dict(name, key, after (index of the layer the key names,
    where forward() runs the exit, as in training), at (index of the
    computing layer whose output the exit reads at inference: the "after"
    written), head, policy, confidence)], final head module or None."""

    def __init__(self, backbone, exits, final_head):
        self.layers, where, default_final = backbone_layers(backbone)
        self.backbone = backbone
        self.tokens = _token_input(self.layers[0][1])
        self.final_name = "final"
        self.final_items = None
        if final_head is None and default_final is not None:
            self.final_items, final_head = default_final
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
        ms = [self.backbone] + [m for _, m in self.layers]
        for e in self.exits:
            ms.append(e["head"])
            if e["confidence"] is not None:
                ms.append(e["confidence"])
        if self.final is not None:
            ms.append(self.final)
        return ms

    def forward(self, x, detach_confidence=False):
        """Runs every exit on every sample: (names, [logits [N,K]] in exit
        order with the final head last, [confidence [N,1] or None]). x: the
        normalised images, or a token model's rows [N, 2, T] (ids, then the
        mask), whose mask goes to every layer that takes one (call())."""
        by_layer = {e["after"]: e for e in self.exits}
        logits, confs = [], []
        mask = tx.split_tokens(x)[1] if self.tokens else None
        h = x
        for i, (_, m) in enumerate(self.layers):
            h = call(m, h, mask)
            e = by_layer.get(i)
            if e is not None:
                logits.append(call(e["head"], h, mask).reshape(h.shape[0], -1))
                c = e["confidence"]
                if c is not None:
                    c = call(c, h.detach() if detach_confidence else h, mask)
                    c = c.reshape(h.shape[0], -1)
                confs.append(c)
        z = call(self.final, h, mask) if self.final is not None else h
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
    def __init__(self, tokens=None):
        self.tensors = {}
        self.tokens = tokens  # T of a token model (position tables are cut to it)

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
        return self.validate(out, where)

    def validate(self, out, where):
        """A written layer list's batch norms follow a conv, its names are
        unique and 1..63 bytes."""
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
        tx_layers = self.transformer_module(lname, path, m, prefix, here)
        if tx_layers is not None:
            return tx_layers
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


    # -- transformer encoders (FORMAT.md, "Transformer encoders")

    def transformer_module(self, lname, path, m, prefix, here):
        """The layers of a transformer module, or None when m is not one."""
        if isinstance(m, nn.TransformerEncoder):
            for i, c in enumerate(m.layers):
                if not (isinstance(c, nn.TransformerEncoderLayer) or _is_vit_block(c)):
                    raise ExportError(f"{here}: layer {i} is a {type(c).__name__}, not an "
                                      "nn.TransformerEncoderLayer")
            out = [self.encoder_block(f"{lname}.layers.{i}", f"{path}.layers.{i}" if path
                                      else f"layers.{i}", c, prefix,
                                      f"{here} layer {i}")
                   for i, c in enumerate(m.layers)]
            if m.norm is not None:
                out.extend(self.transformer_module(f"{lname}.norm", f"{path}.norm" if path
                                                   else "norm", m.norm, prefix, here) or [])
            return out
        if isinstance(m, nn.TransformerEncoderLayer) or _is_vit_block(m):
            return [self.encoder_block(lname, path, m, prefix, here)]
        if _is_module(m, "TokenPool"):
            return [dict(name=lname, type="token_pool", mode=m.mode)]
        if isinstance(m, nn.LayerNorm):
            return [dict(name=lname, type="layer_norm", **self.layer_norm(path, m, prefix, here))]
        if isinstance(m, nn.GELU):
            if getattr(m, "approximate", "none") != "none":
                raise ExportError(f"{here}: GELU(approximate={m.approximate!r}); only the "
                                  "exact GELU is supported")
            return [dict(name=lname, type="gelu")]
        if isinstance(m, nn.Tanh):
            return [dict(name=lname, type="tanh")]
        if _is_module(m, "PatchEmbed"):
            conv = m.proj
            ct, pos = m.class_token, m.position
            return [self.patch_embed(lname, conv, ct, pos, prefix, path, here,
                                     (f"{path}.proj" if path else "proj",
                                      f"{path}.class_token" if path else "class_token",
                                      f"{path}.position" if path else "position"))]
        if _is_module(m, "VitPatchEmbed"):
            vit = m.vit[0]
            return [self.patch_embed(lname, vit.conv_proj, vit.class_token.reshape(-1),
                                     vit.encoder.pos_embedding.reshape(
                                         vit.encoder.pos_embedding.shape[-2:]),
                                     prefix, path, here,
                                     ("conv_proj", "class_token", "encoder.pos_embedding"))]
        if _is_module(m, "TokenEmbedding"):
            layer = self.token_embed(lname, m.word, prefix, f"{path}.word" if path else "word",
                                     here)
            if m.position is not None:
                layer["position"] = self.position(prefix, path, "position", m.position, here)
            if m.segment is not None:
                layer["segment"] = self.tensor(prefix, path, "segment", m.segment)
            return [layer]
        if _is_bert_embeddings(m):
            ch = dict(m.named_children())
            extra = sorted(set(ch) - {"word_embeddings", "position_embeddings",
                                      "token_type_embeddings", "LayerNorm", "dropout"})
            if extra:
                raise ExportError(f"{here}: BERT-style embeddings with children {extra} "
                                  "that the format has no place for")
            sub = lambda n: f"{path}.{n}" if path else n  # noqa: E731
            layer = self.token_embed(lname, ch["word_embeddings"], prefix,
                                     sub("word_embeddings"), here)
            pe = ch["position_embeddings"]
            self.check_embedding(pe, here)
            layer["position"] = self.position(prefix, sub("position_embeddings"), "weight",
                                              pe.weight, here)
            tt = ch.get("token_type_embeddings")
            if tt is not None:
                self.check_embedding(tt, here)
                layer["segment"] = self.tensor(prefix, sub("token_type_embeddings"), "row0",
                                               tt.weight[0])
            if "dropout" in ch and not isinstance(ch["dropout"], NO_OPS + (nn.Identity,)):
                raise ExportError(f"{here}: its dropout is a {type(ch['dropout']).__name__}")
            ln = dict(name=f"{lname}.LayerNorm", type="layer_norm",
                      **self.layer_norm(sub("LayerNorm"), ch["LayerNorm"], prefix, here))
            return [layer, ln]
        if isinstance(m, (nn.MultiheadAttention, nn.TransformerDecoderLayer,
                          nn.TransformerDecoder, nn.Transformer, nn.Embedding)):
            raise ExportError(f"{here}: not supported on its own; attention runs inside an "
                              "nn.TransformerEncoderLayer (or torchvision's EncoderBlock), "
                              "embeddings inside models/transformer.py's TokenEmbedding or "
                              "BERT-style embeddings")
        return None

    def check_embedding(self, e, here):
        if e.max_norm is not None:
            raise ExportError(f"{here}: Embedding with max_norm renormalises its rows at "
                              "lookup; not supported")

    def token_embed(self, lname, word, prefix, wpath, here):
        self.check_embedding(word, here)
        v, d = word.weight.shape
        if not 1 <= v <= 1 << 24:
            raise ExportError(f"{here}: vocabulary of {v} tokens; at most 2^24")
        return dict(name=lname, type="token_embed", vocab_size=int(v), embed_dim=int(d),
                    weight=self.tensor(prefix, wpath, "weight", word.weight))

    def position(self, prefix, path, what, table, here):
        """A position table cut to the model's T rows."""
        t = self.tokens
        if t is None:
            raise ExportError(f"{here}: a token embedding in a model whose input is not "
                              "tokens (export's input_shape={'tokens': T})")
        if table.shape[0] < t:
            raise ExportError(f"{here}: {table.shape[0]} positions for {t} tokens")
        return self.tensor(prefix, path, what, table[:t])

    def patch_embed(self, lname, conv, class_token, position, prefix, path, here, paths):
        if not isinstance(conv, nn.Conv2d):
            raise ExportError(f"{here}: its projection is a {type(conv).__name__}, not a Conv2d")
        k, s = _pair(conv.kernel_size), _pair(conv.stride)
        if (k != s or _pair(conv.padding) != [0, 0] or _pair(conv.dilation) != [1, 1]
                or conv.groups != 1):
            raise ExportError(f"{here}: a patch projection needs kernel = stride, no padding, "
                              "no dilation, one group")
        cpath, tpath, ppath = paths
        layer = dict(name=lname, type="patch_embed", in_channels=conv.in_channels,
                     embed_dim=conv.out_channels, patch_size=_scalar_or_pair(k),
                     weight=self.tensor(prefix, cpath, "weight", conv.weight))
        if conv.bias is not None:
            layer["bias"] = self.tensor(prefix, cpath, "bias", conv.bias)
        if class_token is not None:
            layer["class_token"] = self.tensor(prefix, tpath, "", class_token.reshape(-1))
        if position is not None:
            layer["position"] = self.tensor(prefix, ppath, "", position)
        return layer

    def layer_norm(self, path, m, prefix, here):
        shp = tuple(m.normalized_shape)
        if len(shp) != 1:
            raise ExportError(f"{here}: LayerNorm over {list(shp)}; only over the last "
                              "dimension (one normalized_shape D)")
        f = dict(normalized_shape=int(shp[0]), eps=float(m.eps))
        w, b = m.weight, getattr(m, "bias", None)
        if w is not None:
            f["weight"] = self.tensor(prefix, path, "weight", w)
            # a LayerNorm with a weight and no bias (torch >= 2.1, bias=False)
            # is the same as a bias of zeros
            f["bias"] = self.tensor(prefix, path, "bias", b if b is not None
                                    else torch.zeros_like(w))
        elif b is not None:
            raise ExportError(f"{here}: LayerNorm with a bias and no weight")
        return f

    def linear_fields(self, path, m, prefix, here):
        if not isinstance(m, nn.Linear):
            raise ExportError(f"{here}: {path} is a {type(m).__name__}, not a Linear")
        f = dict(in_features=m.in_features, out_features=m.out_features,
                 weight=self.tensor(prefix, path, "weight", m.weight))
        if m.bias is not None:
            f["bias"] = self.tensor(prefix, path, "bias", m.bias)
        return f

    def attention(self, path, a, prefix, here):
        if not isinstance(a, nn.MultiheadAttention):
            raise ExportError(f"{here}: its attention is a {type(a).__name__}")
        if a.bias_k is not None or a.bias_v is not None or a.add_zero_attn:
            raise ExportError(f"{here}: MultiheadAttention with add_bias_kv or add_zero_attn "
                              "(extra key/value rows); not supported")
        d = a.embed_dim
        if a.kdim != d or a.vdim != d:
            raise ExportError(f"{here}: MultiheadAttention with kdim/vdim other than "
                              "embed_dim; self-attention only")
        if a.in_proj_weight is not None:
            w = a.in_proj_weight
        else:  # separate q, k, v projections of the same size: rows q, k, v
            w = torch.cat([a.q_proj_weight, a.k_proj_weight, a.v_proj_weight], 0)
        f = dict(embed_dim=int(d), num_heads=int(a.num_heads),
                 in_weight=self.tensor(prefix, path, "in_weight", w))
        if a.in_proj_bias is not None:
            f["in_bias"] = self.tensor(prefix, path, "in_bias", a.in_proj_bias)
        f["out_weight"] = self.tensor(prefix, path, "out_weight", a.out_proj.weight)
        if a.out_proj.bias is not None:
            f["out_bias"] = self.tensor(prefix, path, "out_bias", a.out_proj.bias)
        return f

    def encoder_block(self, lname, path, m, prefix, here):
        """nn.TransformerEncoderLayer or torchvision's EncoderBlock ->
        encoder_block."""
        sub = lambda n: f"{path}.{n}" if path else n  # noqa: E731
        if isinstance(m, nn.TransformerEncoderLayer):
            act = m.activation
            if act is F.relu or isinstance(act, nn.ReLU):
                act_name = "relu"
            elif act is F.gelu or (isinstance(act, nn.GELU)
                                   and getattr(act, "approximate", "none") == "none"):
                act_name = "gelu"
            else:
                raise ExportError(f"{here}: activation {act!r}; relu or the exact gelu only")
            return dict(name=lname, type="encoder_block", norm_first=bool(m.norm_first),
                        activation=act_name,
                        attention=self.attention(sub("self_attn"), m.self_attn, prefix, here),
                        norm1=self.layer_norm(sub("norm1"), m.norm1, prefix, here),
                        linear1=self.linear_fields(sub("linear1"), m.linear1, prefix, here),
                        linear2=self.linear_fields(sub("linear2"), m.linear2, prefix, here),
                        norm2=self.layer_norm(sub("norm2"), m.norm2, prefix, here))
        # torchvision's EncoderBlock: pre-LN; mlp = Linear, GELU, Dropout, Linear, Dropout
        ch = dict(m.named_children())
        mlp = list(ch["mlp"].children())
        kinds = [type(c).__name__ for c in mlp]
        if (len(mlp) != 5 or not isinstance(mlp[0], nn.Linear) or not isinstance(mlp[1], nn.GELU)
                or getattr(mlp[1], "approximate", "none") != "none"
                or not isinstance(mlp[2], NO_OPS) or not isinstance(mlp[3], nn.Linear)
                or not isinstance(mlp[4], NO_OPS)):
            raise ExportError(f"{here}: its mlp is {kinds}; Linear, GELU, Dropout, Linear, "
                              "Dropout expected")
        mnames = [n for n, _ in ch["mlp"].named_children()]
        return dict(name=lname, type="encoder_block", norm_first=True, activation="gelu",
                    attention=self.attention(sub("self_attention"), ch["self_attention"],
                                             prefix, here),
                    norm1=self.layer_norm(sub("ln_1"), ch["ln_1"], prefix, here),
                    linear1=self.linear_fields(sub(f"mlp.{mnames[0]}"), mlp[0], prefix, here),
                    linear2=self.linear_fields(sub(f"mlp.{mnames[3]}"), mlp[3], prefix, here),
                    norm2=self.layer_norm(sub("ln_2"), ch["ln_2"], prefix, here))


def _is_vit_block(m):
    """torchvision's EncoderBlock, by its children (ln_1, self_attention,
    dropout, ln_2, mlp)."""
    ch = dict(m.named_children())
    return (set(ch) == {"ln_1", "self_attention", "dropout", "ln_2", "mlp"}
            and isinstance(ch["self_attention"], nn.MultiheadAttention)
            and isinstance(ch["ln_1"], nn.LayerNorm) and isinstance(ch["ln_2"], nn.LayerNorm)
            and isinstance(ch["mlp"], nn.Sequential))


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
    """Raw inputs -> what the network reads: images (x * scale - mean) /
    std; a token model's rows [N, 2, T] unchanged ([N, T]: ids alone, every
    token attended)."""
    if "tokens" in inp:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        if x.dim() == 2:
            x = torch.stack([x, torch.ones_like(x)], 1)
        return x
    c = x.shape[1]
    scale = float(inp.get("scale", 1.0))
    mean = np.broadcast_to(np.asarray(inp.get("mean", [0.0]), dtype=np.float32), (c,))
    std = np.broadcast_to(np.asarray(inp.get("std", [1.0]), dtype=np.float32), (c,))
    x = torch.as_tensor(x, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)
    return (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)


def _tokens_in(h, ty):
    """A token activation [N, T, D+1] -> (features [N, T, D], mask [N, T]
    bool), FORMAT.md's "Token activations" row."""
    if h.dim() != 3:
        raise ExportError(f"layer type {ty} reads tokens; given {list(h.shape[1:])}")
    return h[..., :-1], h[..., -1] != 0


def _tokens_out(x, mask):
    return torch.cat([x, mask.to(x.dtype).unsqueeze(-1)], -1)


def _layer_norm(x, L, t):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + L.get("eps", 1e-5))
    if "weight" in L:
        y = y * t(L["weight"]) + t(L["bias"])
    return y


def _linear(x, L, t):
    y = x @ t(L["weight"]).T
    return y + t(L["bias"]) if "bias" in L else y


def _attention(x, mask, A, t):
    """FORMAT.md's self_attention on features x [N, T, D] with mask [N, T]:
    written out (matmuls and a softmax), not PyTorch's MultiheadAttention."""
    n, tt, d = x.shape
    nh = A["num_heads"]
    hd = d // nh
    qkv = x @ t(A["in_weight"]).T
    if "in_bias" in A:
        qkv = qkv + t(A["in_bias"])
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(n, tt, nh, hd).transpose(1, 2)
               for i in range(3))
    # a padded key takes no part (its score -inf, its value never read: a
    # NaN there, from an invalid id, has no effect); with no attended key
    # the softmax is NaN, as PyTorch's
    keep = mask[:, None, None, :]
    s = torch.where(keep, q @ k.transpose(-1, -2) / math.sqrt(hd), torch.tensor(-math.inf))
    s = s - s.max(-1, keepdim=True).values
    p = torch.exp(s)
    p = p / p.sum(-1, keepdim=True)
    v = torch.where(mask[:, None, :, None], v, torch.zeros(()))
    o = (p @ v).transpose(1, 2).reshape(n, tt, d) @ t(A["out_weight"]).T
    return o + t(A["out_bias"]) if "out_bias" in A else o


def _act(x, name):
    if name == "relu":
        return torch.clamp(x, min=0)
    return x * (1 + torch.erf(x / math.sqrt(2))) / 2  # gelu, exact


def run_layers(layers, T, h):
    """Runs a FORMAT.md layer list on h with tensors T: h is [N,C,H,W] for
    images and vectors, [N,2,T,1] for a token input, [N,T,D+1] for tokens
    (each token's features, then its mask value)."""
    t = lambda n: torch.as_tensor(np.asarray(T[n]))  # noqa: E731
    for L in layers:
        ty = L["type"]
        if ty in ("conv2d", "batchnorm2d", "maxpool2d", "avgpool2d", "global_avgpool",
                  "flatten", "linear", "residual", "relu", "sigmoid", "gelu", "tanh") \
                and h.dim() == 3:
            raise ExportError(f"layer '{L['name']}' ({ty}) given tokens")
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
        elif ty == "gelu":
            h = _act(h, "gelu")
        elif ty == "tanh":
            h = torch.tanh(h)
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
        elif ty == "patch_embed":
            if h.dim() != 4:
                raise ExportError(f"layer '{L['name']}' (patch_embed) given tokens")
            p = _pair(L["patch_size"])
            x = F.conv2d(h, t(L["weight"]), t(L["bias"]) if "bias" in L else None, p)
            x = x.flatten(2).transpose(1, 2)  # [N, h*w, D], patches row-major
            if "class_token" in L:
                x = torch.cat([t(L["class_token"]).expand(x.shape[0], 1, -1), x], 1)
            if "position" in L:
                x = x + t(L["position"])
            h = _tokens_out(x, torch.ones(x.shape[:2], dtype=torch.bool))
        elif ty == "token_embed":
            if h.dim() != 4 or h.shape[1] != 2:
                raise ExportError(f"layer '{L['name']}' (token_embed) reads the token input")
            ids, mask = h[:, 0, :, 0], h[:, 1, :, 0] != 0
            w = t(L["weight"])
            ok = (ids == torch.floor(ids)) & (ids >= 0) & (ids < w.shape[0])
            x = w[torch.where(ok, ids, torch.zeros_like(ids)).long()]
            x = torch.where(ok.unsqueeze(-1), x, torch.full_like(x, math.nan))
            if "position" in L:
                x = x + t(L["position"])
            if "segment" in L:
                x = x + t(L["segment"])
            h = _tokens_out(x, mask)
        elif ty == "layer_norm":
            if h.dim() == 3:
                x, mask = _tokens_in(h, ty)
                h = _tokens_out(_layer_norm(x, L, t), mask)
            else:
                h = _layer_norm(h.reshape(h.shape[0], -1), L, t).reshape(h.shape[0], -1, 1, 1)
        elif ty == "self_attention":
            x, mask = _tokens_in(h, ty)
            h = _tokens_out(_attention(x, mask, L, t), mask)
        elif ty == "encoder_block":
            x, mask = _tokens_in(h, ty)
            act = L["activation"]

            def ff(y):
                return _linear(_act(_linear(y, L["linear1"], t), act), L["linear2"], t)
            if L["norm_first"]:
                x = x + _attention(_layer_norm(x, L["norm1"], t), mask, L["attention"], t)
                x = x + ff(_layer_norm(x, L["norm2"], t))
            else:
                x = _layer_norm(x + _attention(x, mask, L["attention"], t), L["norm1"], t)
                x = _layer_norm(x + ff(x), L["norm2"], t)
            h = _tokens_out(x, mask)
        elif ty == "token_pool":
            x, mask = _tokens_in(h, ty)
            if L["mode"] == "first":
                v = x[:, 0]
            else:  # the padded tokens skipped (a NaN there has no effect)
                m = mask.unsqueeze(-1)
                v = torch.where(m, x, torch.zeros(())).sum(1) / m.sum(1)
            h = v.reshape(v.shape[0], -1, 1, 1)
        else:
            raise ExportError(f"layer type {ty}")
    return h


@torch.no_grad()
def run_model(model, T, x_raw):
    """Interprets a model.json dict on raw inputs: ({exit name: logits
    [N,K]}, {exit name: confidence [N,1]}), the final head included. A token
    model's raw inputs are its rows [N, 2, T]."""
    h = _normalise(x_raw, model["input"])
    n = h.shape[0]
    if "tokens" in model["input"]:
        h = h.reshape(n, 2, -1, 1)
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


def _numel(shape):
    return int(np.prod(shape[:3]))


def _is_tokens(shape):
    """Shapes are (C, H, W), or (T, D + 1, 1, "tokens") for a token
    activation (FORMAT.md: shape [T, D + 1, 1], marked as tokens)."""
    return len(shape) == 4


def layer_macs(layers, shape):
    """(MACs per sample, output shape) of a layer list on input shape
    [C,H,W] (a token input: [2, T, 1]; tokens: (T, D+1, 1, "tokens")),
    counted as src/plan.h does; a layer given the wrong kind of input
    (tokens or not) raises ExportError, as the loader refuses it."""
    total = 0
    for L in layers:
        ty = L["type"]
        tok = _is_tokens(shape)
        token_layers = ("self_attention", "encoder_block", "token_pool")
        if tok and ty not in token_layers + ("layer_norm",):
            raise ExportError(f"layer '{L['name']}' ({ty}) given tokens [{shape[0]}, "
                              f"{shape[1]}, 1]; it takes no token activation")
        if not tok and ty in token_layers:
            raise ExportError(f"layer '{L['name']}' ({ty}) reads tokens; given "
                              f"{list(shape)}")
        c, hh, ww = shape[:3]
        if ty == "conv2d":
            k, s = _pair(L["kernel_size"]), _pair(L.get("stride", 1))
            p, d = _pair(L.get("padding", 0)), _pair(L.get("dilation", 1))
            ho = (hh + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
            wo = (ww + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            oc = L["out_channels"]
            total += oc * ho * wo * (c // L.get("groups", 1)) * k[0] * k[1]
            shape = (oc, ho, wo)
        elif ty in ("maxpool2d", "avgpool2d"):
            k = _pair(L["kernel_size"])
            s, p = _pair(L.get("stride", k)), _pair(L.get("padding", 0))
            shape = (c, (hh + 2 * p[0] - k[0]) // s[0] + 1, (ww + 2 * p[1] - k[1]) // s[1] + 1)
        elif ty == "global_avgpool":
            shape = (c, 1, 1)
        elif ty == "flatten":
            shape = (c * hh * ww, 1, 1)
        elif ty == "linear":
            total += L["in_features"] * L["out_features"]
            shape = (L["out_features"], 1, 1)
        elif ty == "residual":
            mb, out = layer_macs(L["body"], shape)
            ms = layer_macs(L["shortcut"], shape)[0] if L.get("shortcut") else 0
            total += mb + ms
            shape = out
        elif ty == "patch_embed":
            p = _pair(L["patch_size"])
            d = L["embed_dim"]
            ph, pw = hh // p[0], ww // p[1]
            total += d * ph * pw * c * p[0] * p[1]
            shape = (ph * pw + (1 if "class_token" in L else 0), d + 1, 1, "tokens")
        elif ty == "token_embed":
            if (c, ww) != (2, 1):
                raise ExportError(f"layer '{L['name']}' (token_embed) reads the token input "
                                  f"[2, T, 1]; given {list(shape)}")
            shape = (hh, L["embed_dim"] + 1, 1, "tokens")
        elif ty == "self_attention":
            d, tt = L["embed_dim"], c
            total += tt * 4 * d * d + 2 * tt * tt * d
        elif ty == "encoder_block":
            d, tt = L["attention"]["embed_dim"], c
            total += tt * 4 * d * d + 2 * tt * tt * d + 2 * tt * d * L["linear1"]["out_features"]
        elif ty == "token_pool":
            shape = (hh - 1, 1, 1)
        elif ty == "layer_norm":
            d = hh - 1 if tok else c * hh * ww
            if L["normalized_shape"] != d:
                raise ExportError(f"layer '{L['name']}' (layer_norm) over "
                                  f"{L['normalized_shape']} values, given {d}")
    return total, shape


def model_macs(model):
    """Per-sample MACs as src/plan.h counts them: {"stage": [backbone MACs
    of stage s], "head": [head (+ confidence) MACs of exit s, final last],
    "full": backbone + final head}."""
    inp = model["input"]
    shape = (2, inp["tokens"], 1) if "tokens" in inp else tuple(inp["shape"])
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
           golden_inputs=None, check=True, reference=None, check_inputs=None):
    """Writes out_dir/model.json and out_dir/model.safetensors, and
    out_dir/golden.safetensors when golden_inputs (raw units, [N,C,H,W] or
    [N,H,W] for C=1; a token model's rows [N,2,T], or ids [N,T]: every token
    attended) are given. input_shape is [C,H,W], or {"tokens": T} for a
    token model (then no input_norm). Returns the model.json dict.

    The modules are put in eval mode for the export and restored after. With
    check (the default) the written graph is run by an independent
    interpreter and compared with the PyTorch modules; a difference raises
    ExportError (it means a module's forward is not what its structure says).
    Rows where both sides are NaN agree (a sequence with no attended token
    is NaN in both, FORMAT.md "Token inputs").

    reference: None (the modules' forward, as export's graph calls them), or
    a function of the raw input rows (float32 numpy) giving ([logits [N,K]
    numpy] in exit order, the final head last, [confidence [N,1] or None]):
    the network's own forward where it is not a chain of the modules given
    (models/hf.py passes Hugging Face's). Golden files hold its outputs.
    check_inputs: the rows the self-check runs when no golden_inputs are
    given (default: 4 random rows, token models padded after the text).
    """
    g = Graph(backbone, exits, final_head)
    tokens = None
    if isinstance(input_shape, dict):
        if set(input_shape) != {"tokens"}:
            raise ExportError(f"input_shape {input_shape}: [C,H,W] or {{'tokens': T}}")
        tokens = int(input_shape["tokens"])
        if not 1 <= tokens <= 65536:
            raise ExportError(f"input_shape {input_shape}: T in 1..65536")
        if input_norm:
            raise ExportError("input_norm: a token model's input is not normalised")
        if not g.tokens:
            raise ExportError(f"input_shape {input_shape}: tokens, but the first backbone layer "
                              f"'{g.layers[0][0]}' ({type(g.layers[0][1]).__name__}) is no "
                              "token embedding")
        inp = {"tokens": tokens}
        c, h, w = 2, tokens, 1
    else:
        if g.tokens:
            raise ExportError(f"the first backbone layer '{g.layers[0][0]}' reads tokens; "
                              "give input_shape={'tokens': T}")
        c, h, w = (int(v) for v in input_shape)
        if not (1 <= c <= 4 and 1 <= h <= 65536 and 1 <= w <= 65536):
            raise ExportError(f"input_shape {input_shape}: [C,H,W] with C in 1..4")
        inp = {"shape": [c, h, w]}
    input_norm = dict(input_norm or {})
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
        tr = Translator(tokens)
        backbone_json, last_written = [], []
        for n, m in g.layers:
            backbone_json.extend(tr.module(n, n, m, "backbone", "backbone", False))
            # an exit after a module written as several layers (BERT's
            # embeddings: token_embed, layer_norm) reads the last of them
            last_written.append(backbone_json[-1]["name"] if backbone_json else None)
        tr.validate(backbone_json, "backbone")
        exits_json = []
        for e in g.exits:
            def seq(m, prefix, where):
                if isinstance(m, nn.Sequential):
                    return tr.sequence(tr.children(m, ""), prefix, where)
                return tr.sequence([(_short(m), "", m)], prefix, where)
            ej = {"name": e["name"], "after": last_written[e["at"]],
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
        if g.final_items is not None:
            final_json = tr.sequence(g.final_items, "final", "final head")
        elif g.final is None:
            final_json = []
        elif isinstance(g.final, nn.Sequential):
            final_json = tr.sequence(tr.children(g.final, ""), "final", "final head")
        else:
            final_json = tr.sequence([(_short(g.final), "", g.final)], "final", "final head")

        model = {"format": "exitrt-model", "version": FORMAT_VERSION, "name": name,
                 "weights": "model.safetensors", "input": inp,
                 "num_classes": int(num_classes)}
        for key, val in (("sample_data", sample_data), ("sample_labels", sample_labels)):
            if val is not None:
                if os.path.isabs(val) or ".." in val.replace("\\", "/").split("/"):
                    raise ExportError(f"{key}: {val} leaves the model directory; every path "
                                      "in model.json stays inside it (FORMAT.md)")
                model[key] = val
        model["backbone"] = backbone_json
        model["exits"] = exits_json
        model["final"] = {"name": g.final_name, "head": final_json}

        # Shapes: every head ends in K values, every confidence in one.
        shape = (c, h, w)
        afters = {e["after"]: e for e in exits_json}

        def shape_of(layers, shape, what):
            try:
                return layer_macs(layers, shape)[1]
            except ExportError as err:
                raise ExportError(f"{what}: {err}") from None

        def ends_in(layers, shape, k, what):
            out = shape_of(layers, shape, what)
            if _is_tokens(out) or _numel(out) != k:
                raise ExportError(f"{what} does not end in {k} value{'s' if k > 1 else ''}"
                                  + (" (it ends in tokens)" if _is_tokens(out) else ""))
        for L in backbone_json:
            shape = shape_of([L], shape, "backbone")
            if L["name"] in afters:
                e = afters[L["name"]]
                ends_in(e["head"], shape, num_classes, f"exit '{e['name']}': head")
                if "confidence" in e:
                    ends_in(e["confidence"], shape, 1, f"exit '{e['name']}': confidence")
        ends_in(final_json, shape, num_classes, "final head")

        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model.json"), "w") as f:
            f.write(_dumps(model))
        write_safetensors(os.path.join(out_dir, "model.safetensors"), tr.tensors,
                          {"format": "exitrt-weights", "model": name})

        x_check = None
        if golden_inputs is not None:
            x_check = np.asarray(golden_inputs, dtype=np.float32)
            if tokens is not None:
                if x_check.ndim == 2:  # ids alone: every token attended
                    x_check = np.stack([x_check, np.ones_like(x_check)], 1)
                if x_check.shape[1:] != (2, tokens):
                    raise ExportError(f"golden_inputs shape {x_check.shape}; [N,2,{tokens}] "
                                      "(ids, then mask) expected")
            else:
                if x_check.ndim == 3 and c == 1:
                    x_check = x_check[:, None]
                if x_check.shape[1:] != (c, h, w):
                    raise ExportError(f"golden_inputs shape {x_check.shape}; "
                                      f"[N,{c},{h},{w}] expected")
        elif check and check_inputs is not None:
            x_check = np.asarray(check_inputs, dtype=np.float32)
        elif check and tokens is not None:
            x_check = random_tokens(4, tokens, backbone_json[0]["vocab_size"], seed=0)
        elif check:
            gen = torch.Generator().manual_seed(0)
            x_check = (torch.rand((4, c, h, w), generator=gen) /
                       inp.get("scale", 1.0)).numpy()
        if x_check is not None:
            names = [e["name"] for e in g.exits] + [g.final_name]
            if reference is not None:
                logits, confs = reference(x_check)
                if len(logits) != len(names) or len(confs) != len(names):
                    raise ExportError(f"reference gave {len(logits)} logits and {len(confs)} "
                                      f"confidences for the {len(names)} exits {names}")
                logits = [torch.as_tensor(np.asarray(z, dtype=np.float32)) for z in logits]
                confs = [None if cc is None else torch.as_tensor(np.asarray(cc, np.float32))
                         for cc in confs]
            else:
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


def random_tokens(n, tokens, vocab, seed=0):
    """n token rows [n, 2, T] (float32): random ids in [0, vocab), each
    sequence attending to its first L tokens (L random in 1..T, sequence 0
    all T) and padded after them (ids of padding random too)."""
    g = np.random.default_rng(seed)
    ids = g.integers(0, vocab, size=(n, tokens))
    lens = g.integers(1, tokens + 1, size=n)
    lens[0] = tokens
    mask = np.arange(tokens)[None, :] < lens[:, None]
    return np.stack([ids, mask], 1).astype(np.float32)


def _short(m):
    return type(m).__name__.lower()


def _compare(what, got, want):
    if got.shape != want.shape:
        raise ExportError(f"self-check: {what}: shape {got.shape}, PyTorch gives {want.shape}")
    # NaN where both sides are NaN is agreement (a sequence with no attended
    # token, an id outside the vocabulary); NaN on one side only is not
    both = np.isnan(got) & np.isnan(want)
    got, want = np.where(both, 0.0, got), np.where(both, 0.0, want)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    fin = want[np.isfinite(want)]
    tol = 1e-3 * max(1.0, float(np.max(np.abs(fin))) if fin.size else 1.0)
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
