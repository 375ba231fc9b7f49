#!/usr/bin/python3
"""The PyTorch peer of `exitrt bench`: the same exported weights, the same
inputs, the same thresholds and batch sizes, timed by the same rules, in
eager PyTorch (fp32).

    torch_peer.py --model DIR --inputs X.npy [--exits E.npy] --out OUT.json
                  --profile NAME=T1,T2 [--profile ...] [--batches 64,256]
                  [--modes full,masked,compacted] [--reps 5] [--warmup 3]
                  [--rep-samples 1024] [--b1-samples N] [--threads 2]
                  [--device cpu|cuda|all] [--ort] [--no-check] [--no-nested]

The model is read from model.json and its safetensors file with json,
struct and numpy only (not models/export.py), and built as torch modules
layer by layer; batch norm stays an nn.BatchNorm2d in eval mode (the same
math as exitrt's folding, up to rounding).

Transformer encoders (models/FORMAT.md, "Transformer encoders") are built
from PyTorch's own modules, as a user of PyTorch writes them: each run of
consecutive encoder_blocks in a stage is one nn.TransformerEncoder of
nn.TransformerEncoderLayers (batch_first, dropout 0, the layer's
norm_first, activation and eps), self_attention an nn.MultiheadAttention,
the padding as src_key_padding_mask. In eval mode under inference_mode
PyTorch then takes its fast path (torch._transformer_encoder_layer_fwd)
and, for post-LN stacks with a padding mask, runs the padded batch as a
nested tensor that skips the padded tokens (enable_nested_tensor, on by
default; --no-nested turns it off). A token model's input rows ([N, 2, T,
1]: the ids, then the mask) become int64 ids for an nn.Embedding and a
boolean key-padding mask (True: padding) that travels with the tokens
between the layers; patch_embed is an nn.Conv2d, flattened to tokens.

Modes, as the two ways in the threads this project grew from:
  full       every sample through the backbone and the final head
  masked     every stage and every exit head on every sample; each sample's
             output picked by its first confident exit (torch.where)
  compacted  after each exit the samples that left are dropped by boolean
             indexing; the survivor count is read on the host (`.item()`,
             i.e. `if mask.any()`), as the forum thread does
  batch1-if  the way the public early-exit codes run (DeeBERT's and PABEE's
             evaluation): one sample at a time, and after each exit head a
             Python `if` on the policy's decision (`.item()`) that breaks
             out of the layer loop; timed over --b1-samples samples per rep
             (default: --rep-samples; 0: not run), one cell per profile
             (batch 1); fewer samples than inputs are taken evenly spread
             over the inputs, so that they meet the profile's mix of exits
Timing: per cell, `warmup` batches, then `reps` reps of ceil(rep_samples /
batch) batches cycling through the inputs; samples/s from the median rep;
p50/p99 of the per-batch latencies. Each batch starts from host memory and
ends with its exits and logits on the host (the contract of ert_infer). On
CUDA: CUDA events, a synchronize per batch, TF32 off.

--ort also times ONNX Runtime on the CPU, the full network and an
early-exit pipeline (ort_peer.py), into cells of modes "ort-full" and
"ort-pipeline".

Exit decisions: for every profile the masked, compacted and batch1-if runs
over all inputs are compared with exitrt's per-sample exits (--exits,
[profiles, N] int32, in --profile order); mismatches are counted and
reported, never hidden (--no-check skips this, for a second run of the same
settings). Prints one JSON object to --out (and a summary to stdout).
"""
import argparse
import json
import os
import struct
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------
# The model file


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name}: dtype {info['dtype']}, F32 expected")
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(raw, dtype="<f4", count=(e - b) // 4,
                                  offset=8 + n + b).reshape(info["shape"])
    return out


def pair(v, default=None):
    if v is None:
        v = default
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


class Residual(nn.Module):
    def __init__(self, body, shortcut, relu):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.relu = relu

    def forward(self, x):
        y = self.body(x) + (self.shortcut(x) if self.shortcut is not None else x)
        return torch.relu(y) if self.relu else y


class FlatLinear(nn.Linear):
    """exitrt's linear reads any per-sample shape of in_features values."""

    def forward(self, x):
        return super().forward(x.flatten(1) if x.dim() > 2 else x)


class Normalize(nn.Module):
    def __init__(self, c, scale, mean, std):
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x):
        return (x * self.scale - self.mean) / self.std


def tensor(w, name):
    return torch.from_numpy(np.array(w[name], dtype=np.float32))


# Token activations travel as a tuple (x [N, T, D], pad [N, T] bool, True
# for padding, or None: nothing padded); every other activation as a tensor.


def nrows(h):
    return h[0].shape[0] if isinstance(h, tuple) else h.shape[0]


def select(h, keep):
    """Rows `keep` (a boolean or index tensor) of an activation."""
    if isinstance(h, tuple):
        return tuple(t[keep] if t is not None else None for t in h)
    return h[keep]


class TokenInput(nn.Module):
    """Input rows [N, 2, T, 1] (ids, then mask) to (ids int64, pad)."""

    def forward(self, x):
        x = x.reshape(x.shape[0], 2, -1)
        return x[:, 0].long(), x[:, 1] == 0


class TokenEmbed(nn.Module):
    def __init__(self, L, w):
        super().__init__()
        V, D = int(L["vocab_size"]), int(L["embed_dim"])
        self.emb = nn.Embedding(V, D)
        self.emb.weight.data = tensor(w, L["weight"])
        self.register_buffer("pos", tensor(w, L["position"]) if "position" in L else None)
        self.register_buffer("seg", tensor(w, L["segment"]) if "segment" in L else None)

    def forward(self, h):
        ids, pad = h
        x = self.emb(ids)
        if self.pos is not None:
            x = x + self.pos
        if self.seg is not None:
            x = x + self.seg
        return x, pad


class PatchEmbed(nn.Module):
    def __init__(self, L, w):
        super().__init__()
        C, D = int(L["in_channels"]), int(L["embed_dim"])
        p = pair(L["patch_size"])
        self.conv = nn.Conv2d(C, D, p, stride=p, bias="bias" in L)
        self.conv.weight.data = tensor(w, L["weight"])
        if "bias" in L:
            self.conv.bias.data = tensor(w, L["bias"])
        self.register_buffer("cls", tensor(w, L["class_token"]) if "class_token" in L else None)
        self.register_buffer("pos", tensor(w, L["position"]) if "position" in L else None)

    def forward(self, x):
        x = self.conv(x).flatten(2).transpose(1, 2)  # [N, h*w, D], row-major patches
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)
        if self.pos is not None:
            x = x + self.pos
        return x, None


class PerToken(nn.Module):
    """A module applied to each token's features (or to a plain tensor)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, h):
        if isinstance(h, tuple):
            return self.m(h[0]), h[1]
        return self.m(h.flatten(1) if h.dim() > 2 else h)


def attention(A, w):
    D, H = int(A["embed_dim"]), int(A["num_heads"])
    m = nn.MultiheadAttention(D, H, dropout=0.0, bias=True, batch_first=True)
    m.in_proj_weight.data = tensor(w, A["in_weight"])
    m.in_proj_bias.data = tensor(w, A["in_bias"]) if "in_bias" in A else torch.zeros(3 * D)
    m.out_proj.weight.data = tensor(w, A["out_weight"])
    m.out_proj.bias.data = tensor(w, A["out_bias"]) if "out_bias" in A else torch.zeros(D)
    return m


class SelfAttention(nn.Module):
    def __init__(self, L, w):
        super().__init__()
        self.attn = attention(L, w)

    def forward(self, h):
        x, pad = h
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0], pad


def encoder_layer(L, w):
    A, N1, N2 = L["attention"], L["norm1"], L["norm2"]
    D, F = int(A["embed_dim"]), int(L["linear1"]["out_features"])
    act = L.get("activation", "relu")
    m = nn.TransformerEncoderLayer(D, int(A["num_heads"]), F, dropout=0.0, activation=act,
                                   layer_norm_eps=float(N1.get("eps", 1e-5)), batch_first=True,
                                   norm_first=bool(L.get("norm_first", False)))
    m.self_attn = attention(A, w)
    for norm, N in ((m.norm1, N1), (m.norm2, N2)):
        norm.eps = float(N.get("eps", 1e-5))
        if "weight" in N:
            norm.weight.data = tensor(w, N["weight"])
            norm.bias.data = tensor(w, N["bias"])
    for lin, J in ((m.linear1, L["linear1"]), (m.linear2, L["linear2"])):
        lin.weight.data = tensor(w, J["weight"])
        if "bias" in J:
            lin.bias.data = tensor(w, J["bias"])
        else:
            lin.bias.data.zero_()
    return m


class Encoder(nn.Module):
    """A run of encoder_blocks as one nn.TransformerEncoder."""

    NESTED = True  # enable_nested_tensor (--no-nested: off)

    def __init__(self, layers):
        super().__init__()
        self.enc = nn.TransformerEncoder(layers[0], 1, enable_nested_tensor=Encoder.NESTED)
        self.enc.layers = nn.ModuleList(layers)
        self.enc.num_layers = len(layers)

    def forward(self, h):
        x, pad = h
        y = self.enc(x, src_key_padding_mask=pad)
        if y.shape[1] != x.shape[1]:
            # the nested path pads back to the batch's longest sequence only
            y = torch.nn.functional.pad(y, (0, 0, 0, x.shape[1] - y.shape[1]))
        return y, pad


class TokenPool(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, h):
        x, pad = h
        if self.mode == "first":
            return x[:, 0]
        if pad is None:
            return x.mean(dim=1)
        m = (~pad).to(x.dtype).unsqueeze(-1)
        return (x * m).sum(dim=1) / m.sum(dim=1)


def build_layer(L, w):
    t = L["type"]
    if t == "conv2d":
        kh, kw = pair(L["kernel_size"])
        m = nn.Conv2d(int(L["in_channels"]), int(L["out_channels"]), (kh, kw),
                      stride=pair(L.get("stride"), 1), padding=pair(L.get("padding"), 0),
                      dilation=pair(L.get("dilation"), 1), groups=int(L.get("groups", 1)),
                      bias="bias" in L)
        m.weight.data = tensor(w, L["weight"])
        if "bias" in L:
            m.bias.data = tensor(w, L["bias"])
        return m
    if t == "batchnorm2d":
        m = nn.BatchNorm2d(int(L["num_features"]), eps=float(L.get("eps", 1e-5)))
        m.weight.data = tensor(w, L["weight"])
        m.bias.data = tensor(w, L["bias"])
        m.running_mean.data = tensor(w, L["running_mean"])
        m.running_var.data = tensor(w, L["running_var"])
        return m
    if t == "relu":
        return nn.ReLU()
    if t == "sigmoid":
        return nn.Sigmoid()
    if t == "maxpool2d":
        k = pair(L["kernel_size"])
        return nn.MaxPool2d(k, stride=pair(L.get("stride"), k), padding=pair(L.get("padding"), 0))
    if t == "avgpool2d":
        k = pair(L["kernel_size"])
        return nn.AvgPool2d(k, stride=pair(L.get("stride"), k), padding=pair(L.get("padding"), 0),
                            count_include_pad=True)
    if t == "global_avgpool":
        return nn.AdaptiveAvgPool2d(1)
    if t == "flatten":
        return nn.Flatten(1)
    if t == "linear":
        m = FlatLinear(int(L["in_features"]), int(L["out_features"]), bias="bias" in L)
        m.weight.data = tensor(w, L["weight"])
        if "bias" in L:
            m.bias.data = tensor(w, L["bias"])
        return m
    if t == "dropout":
        return nn.Identity()
    if t == "gelu":
        return PerToken(nn.GELU())
    if t == "tanh":
        return PerToken(nn.Tanh())
    if t == "layer_norm":
        D = int(L["normalized_shape"])
        m = nn.LayerNorm(D, eps=float(L.get("eps", 1e-5)))
        if "weight" in L:
            m.weight.data = tensor(w, L["weight"])
            m.bias.data = tensor(w, L["bias"])
        return PerToken(m)
    if t == "token_embed":
        return TokenEmbed(L, w)
    if t == "patch_embed":
        return PatchEmbed(L, w)
    if t == "self_attention":
        return SelfAttention(L, w)
    if t == "encoder_block":
        return Encoder([encoder_layer(L, w)])
    if t == "token_pool":
        return TokenPool(L.get("mode", "first"))
    if t == "residual":
        sc = L.get("shortcut") or []
        return Residual(build_list(L["body"], w), build_list(sc, w) if sc else None,
                        L.get("activation", "relu") == "relu")
    raise ValueError(f"layer '{L.get('name')}': type {t} is not supported by the peer")


def build_list(layers, w):
    """nn.Sequential of the layers; a run of encoder_blocks is one Encoder."""
    mods = []
    for L in layers:
        if L["type"] == "encoder_block" and mods and isinstance(mods[-1], Encoder):
            mods[-1] = Encoder(list(mods[-1].enc.layers) + [encoder_layer(L, w)])
        else:
            mods.append(build_layer(L, w))
    return nn.Sequential(*mods)


TOKEN_LAYERS = {"token_embed", "patch_embed", "self_attention", "encoder_block", "token_pool",
                "layer_norm", "gelu", "tanh"}


POLICY = {"entropy": 1, "max_prob": 2, "margin": 3, "confidence_head": 4}


class MultiExit(nn.Module):
    """stages[s] runs the backbone up to exit s; heads[s] is exit s's head
    (the final head last); confs[s] its confidence layers or None."""

    def __init__(self, path):
        super().__init__()
        if os.path.isdir(path):
            path = os.path.join(path, "model.json")
        with open(path) as f:
            j = json.load(f)
        d = os.path.dirname(path)
        w = read_safetensors(os.path.join(d, j["weights"]))
        inp = j["input"]
        self.tokens = int(inp.get("tokens", 0))
        if self.tokens:
            self.shape = (2, self.tokens, 1)
            self.norm = TokenInput()
        else:
            c, h, wd = inp["shape"]
            mean = inp.get("mean", [0.0])
            std = inp.get("std", [1.0])
            mean = mean * c if len(mean) == 1 else mean
            std = std * c if len(std) == 1 else std
            self.shape = (c, h, wd)
            self.norm = Normalize(c, inp.get("scale", 1.0), mean, std)
        self.K = int(j["num_classes"])
        layers = list(j["backbone"]) + list(j["final"]["head"])
        for e in j["exits"]:
            layers += list(e["head"]) + list(e.get("confidence") or [])
        self.transformer = any(L["type"] in TOKEN_LAYERS for L in layers)
        names = [L["name"] for L in j["backbone"]]
        stages, heads, confs, self.kinds, self.exit_names = [], [], [], [], []
        begin = 0
        for e in j["exits"]:
            end = names.index(e["after"]) + 1
            stages.append(build_list(j["backbone"][begin:end], w))
            heads.append(build_list(e["head"], w))
            confs.append(build_list(e["confidence"], w) if e.get("confidence") else None)
            self.kinds.append(POLICY[e["policy"]["type"]])
            self.exit_names.append(e["name"])
            begin = end
        stages.append(build_list(j["backbone"][begin:], w))
        heads.append(build_list(j["final"]["head"], w))
        confs.append(None)
        self.kinds.append(0)
        self.exit_names.append(j["final"].get("name", "final"))
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.confs = nn.ModuleList([cf if cf is not None else nn.Identity() for cf in confs])
        self.has_conf = [cf is not None for cf in confs]
        self.E = len(stages)
        self.eval()


# ---------------------------------------------------------------------------
# Exit policies: exitrt's formulas (src/policy.h), float32


def policy_exits(kind, z, conf, thr):
    """Boolean [n]: whether each row leaves at an exit of this kind."""
    finite = torch.isfinite(z).all(dim=1)
    if kind == POLICY["confidence_head"]:
        s = conf.reshape(-1)
    else:
        top = torch.topk(z, min(2, z.shape[1]), dim=1).values
        m = top[:, :1]
        d = z - m
        e = torch.exp(d)
        s_ = e.sum(dim=1)
        if kind == POLICY["entropy"]:
            s = torch.clamp_min(torch.log(s_) - (e * d).sum(dim=1) / s_, 0.0)
        elif kind == POLICY["margin"]:
            s = ((1.0 - torch.exp(top[:, 1] - top[:, 0])) / s_ if z.shape[1] > 1
                 else torch.ones_like(s_))
        else:
            s = 1.0 / s_
    ok = finite & torch.isfinite(s)
    return ok & ((s < thr) if kind == POLICY["entropy"] else (s >= thr))


def run_full(M, x):
    h = M.norm(x)
    for st in M.stages:
        h = st(h)
    z = M.heads[-1](h).reshape(x.shape[0], -1)
    return z, torch.full((x.shape[0],), M.E - 1, dtype=torch.int32, device=x.device)


def run_masked(M, x, thr):
    """Every stage and head on every row; each row's output by its first
    confident exit, selected by mask."""
    n = x.shape[0]
    h = M.norm(x)
    out = None
    ex = torch.full((n,), M.E - 1, dtype=torch.int32, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    for s in range(M.E):
        h = M.stages[s](h)
        z = M.heads[s](h).reshape(n, -1).float()  # autocast: bf16 logits
        if s == M.E - 1:
            out = z if out is None else torch.where(done[:, None], out, z)
            break
        conf = M.confs[s](h) if M.has_conf[s] else None
        take = policy_exits(M.kinds[s], z, conf, thr[s]) & ~done
        out = z if out is None else torch.where(take[:, None], z, out)
        ex = torch.where(take, torch.full_like(ex, s), ex)
        done = done | take
    return out, ex


def run_compacted(M, x, thr):
    """Survivors boolean-indexed after each exit; the host reads whether
    anyone left (a sync per exit, as the forum thread's .item())."""
    n = x.shape[0]
    h = M.norm(x)
    out = torch.empty((n, M.K), dtype=torch.float32, device=x.device)
    ex = torch.full((n,), M.E - 1, dtype=torch.int32, device=x.device)
    idx = torch.arange(n, device=x.device)
    for s in range(M.E):
        h = M.stages[s](h)
        z = M.heads[s](h).reshape(nrows(h), -1).float()  # autocast: bf16 logits
        if s == M.E - 1:
            out[idx] = z
            break
        conf = M.confs[s](h) if M.has_conf[s] else None
        take = policy_exits(M.kinds[s], z, conf, thr[s])
        if take.any().item():
            out[idx[take]] = z[take]
            ex[idx[take]] = s
            keep = ~take
            h, idx = select(h, keep), idx[keep]
            if idx.shape[0] == 0:
                break
    return out, ex


def run_b1if(M, x, thr):
    """Batch 1, DeeBERT's and PABEE's loop: after each exit head, a Python
    `if` on the decision (a host sync), then break or go on."""
    h = M.norm(x)
    for s in range(M.E):
        h = M.stages[s](h)
        z = M.heads[s](h).reshape(1, -1)
        if s == M.E - 1:
            break
        conf = M.confs[s](h) if M.has_conf[s] else None
        if policy_exits(M.kinds[s], z, conf, thr[s]).item():
            break
    return z, torch.full((1,), s, dtype=torch.int32)


def run_b1if_rows(M, x, thr):
    """run_b1if over each row of x in turn (results as the batched modes')."""
    outs = [run_b1if(M, x[i:i + 1], thr) for i in range(x.shape[0])]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def infer(M, mode, x, thr):
    if mode == "full":
        return run_full(M, x)
    if mode == "masked":
        return run_masked(M, x, thr)
    if mode == "batch1-if":
        return run_b1if(M, x, thr) if x.shape[0] == 1 else run_b1if_rows(M, x, thr)
    return run_compacted(M, x, thr)


# ---------------------------------------------------------------------------
# Timing


class Cell:
    def __init__(self, mode, profile):
        self.mode, self.profile = mode, profile
        self.rep_s, self.lat_s = [], []
        self.counts = None


def median(v):
    return float(np.median(np.asarray(v)))


def pct(v, q):
    """Nearest rank, as the C side (calib_percentile)."""
    a = np.sort(np.asarray(v))
    r = int(np.ceil(q * len(a)))
    return float(a[min(max(r, 1), len(a)) - 1])


def run_batches(M, dev, xs, n, batch, nb, cell, thr, timed, first):
    """nb batches of `batch` rows from host memory, results back on the host."""
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    if cuda:
        ev0 = torch.cuda.Event(enable_timing=True)
        ev1 = torch.cuda.Event(enable_timing=True)
        r0 = torch.cuda.Event(enable_timing=True)
        r1 = torch.cuda.Event(enable_timing=True)
        r0.record()
    counts = np.zeros(M.E, dtype=np.int64)
    for k in range(nb):
        start = (k * batch) % n
        if cell.mode == "batch1-if" and nb < n:
            start = k * n // nb  # spread over the inputs: the profile's mix of exits
        xb = xs[start:start + batch]
        if cuda:
            ev0.record()
        else:
            tb = time.perf_counter()
        z, ex = infer(M, cell.mode, xb.to(dev), thr)
        z, ex = z.cpu(), ex.cpu()
        if cuda:
            ev1.record()
            ev1.synchronize()
            lat = ev0.elapsed_time(ev1) / 1e3
        else:
            lat = time.perf_counter() - tb
        if timed:
            cell.lat_s.append(lat)
            if first:
                counts += np.bincount(ex.numpy(), minlength=M.E)
    if timed:
        if cuda:
            r1.record()
            r1.synchronize()
            cell.rep_s.append(r0.elapsed_time(r1) / 1e3)
        else:
            cell.rep_s.append(time.perf_counter() - t0)
        if first:
            cell.counts = counts


def sweep_device(M, dev, x, profiles, args, out):
    n = x.shape[0]
    maxb = max(args.batches)
    # rows wrap, as in the bench: any start in [0, n) reads batch rows
    reps_idx = np.arange(n + maxb) % n
    xs = torch.from_numpy(np.ascontiguousarray(x[reps_idx]))
    if dev.type == "cuda":
        xs = xs.pin_memory()
    Mdev = M.to(dev)
    modes = args.modes
    thr_of = dict(profiles)
    # (batch, batches per rep, batch1-if): each batch size, then batch1-if
    sweeps = [(batch, (args.rep_samples + batch - 1) // batch, False) for batch in args.batches]
    if b1if_on(args, profiles):
        sweeps.append((1, args.b1_samples, True))
    for batch, nb, b1if in sweeps:
        if b1if:  # one sample at a time, a cell per profile
            cells = [Cell("batch1-if", pname) for pname, _ in profiles]
        else:
            cells = [Cell("full", None)]
            for pname, thr in profiles:
                for mode in ("masked", "compacted"):
                    if mode in modes:
                        cells.append(Cell(mode, pname))
        t0 = time.perf_counter()
        with torch.inference_mode():
            for rep in range(-1, args.reps):
                for c in cells:
                    thr = thr_of.get(c.profile)
                    k = nb if rep >= 0 else args.warmup
                    if k > 0:
                        run_batches(Mdev, dev, xs, n, batch, k, c, thr, rep >= 0, rep == 0)
        for c in cells:
            out.append({"device": dev.type, "profile": c.profile, "batch": batch,
                        "mode": c.mode, "reps": len(c.rep_s),
                        "samples_per_rep": nb * batch,
                        "samples_per_s": nb * batch / median(c.rep_s),
                        "p50_ms": 1e3 * pct(c.lat_s, 0.50), "p99_ms": 1e3 * pct(c.lat_s, 0.99),
                        "exit_counts": [int(v) for v in c.counts]})
        what = "batch1-if" if b1if else f"batch {batch}"
        print(f"torch_peer: {dev.type} {what} done ({time.perf_counter() - t0:.1f}s)", flush=True)


def b1if_on(args, profiles):
    return args.b1_samples > 0 and bool(profiles) and ("masked" in args.modes or
                                                         "compacted" in args.modes)


def check_decisions(M, x, profiles, exits, b1if):
    """Each profile's exits over all inputs (masked, compacted and, with b1if,
    batch1-if; CPU) against exitrt's."""
    res = []
    n = x.shape[0]
    xt = torch.from_numpy(x)
    modes = ("masked", "compacted") + (("batch1-if",) if b1if else ())
    with torch.inference_mode():
        for p, (pname, thr) in enumerate(profiles):
            d = {"profile": pname}
            for mode in modes:
                ex = np.concatenate([infer(M, mode, xt[b:b + 256], thr)[1].numpy()
                                     for b in range(0, n, 256)])
                d[f"counts_{mode}"] = np.bincount(ex, minlength=M.E).tolist()
                if exits is not None:
                    d[f"mismatch_{mode}"] = int(np.sum(ex != exits[p]))
            res.append(d)
    return res


def peer_parser(description, device_default):
    """The command line every peer of `exitrt bench --peer` takes
    (torch_peer.py, gpu_peer.py); a peer adds its own options."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--exits")
    ap.add_argument("--out", required=True)
    ap.add_argument("--profile", action="append", default=[])
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--modes", default="full,masked,compacted")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rep-samples", type=int, default=1024)
    ap.add_argument("--b1-samples", type=int, default=None,
                    help="samples per rep of batch1-if (default: --rep-samples; 0: off)")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the exit-decision check against --exits")
    ap.add_argument("--no-nested", action="store_true",
                    help="nn.TransformerEncoder without nested tensors")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default=device_default, choices=["cpu", "cuda", "all"])
    return ap


def peer_setup(ap, who):
    """Parses the command line, sets torch's threads (TF32 off), loads the
    model, the inputs, exitrt's exits and the profiles, each checked against
    the model; exits naming `who` on a mismatch. Returns (args, M, x, exits,
    profiles)."""
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.modes = args.modes.split(",")
    if args.b1_samples is None:
        args.b1_samples = args.rep_samples
    Encoder.NESTED = not args.no_nested
    warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    M = MultiExit(args.model)
    x = np.load(args.inputs).astype(np.float32, copy=False)
    if x.shape[1:] != M.shape:
        sys.exit(f"{who}: inputs {x.shape}, the model takes [N, {M.shape}]")
    exits = np.load(args.exits) if args.exits else None
    profiles = []
    for p in args.profile:
        name, _, ts = p.partition("=")
        thr = [float(t) for t in ts.split(",") if t != ""]
        if len(thr) != M.E - 1:
            sys.exit(f"{who}: profile {name}: {len(thr)} thresholds, the model has "
                     f"{M.E - 1} early exits")
        profiles.append((name, thr))
    if exits is not None and exits.shape != (len(profiles), x.shape[0]):
        sys.exit(f"{who}: exits {exits.shape}, expected {(len(profiles), x.shape[0])}")
    return args, M, x, exits, profiles


def main():
    ap = peer_parser("the PyTorch peer of exitrt bench", "cpu")
    ap.add_argument("--ort", action="store_true",
                    help="also time ONNX Runtime on the CPU (ort_peer.py)")
    args, M, x, exits, profiles = peer_setup(ap, "torch_peer")

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            sys.exit("torch_peer: --device cuda, but torch sees no CUDA device")

    decisions = [] if args.no_check else check_decisions(M, x, profiles, exits,
                                                          b1if_on(args, profiles))
    for d in decisions:
        bad = {k[9:]: v for k, v in d.items() if k.startswith("mismatch_") and v}
        if bad:
            print(f"torch_peer: profile {d['profile']}: exit decisions differ from exitrt's on "
                  + ", ".join(f"{v} ({k})" for k, v in bad.items())
                  + f" of {x.shape[0]} samples", flush=True)
    cells = []
    for dev in devices:
        sweep_device(M, dev, x, profiles, args, cells)
    ort_note = None
    if args.ort and any(d.type == "cpu" for d in devices):
        import ort_peer
        ort, why = ort_peer.import_ort()
        if ort is None:
            ort_note = f"not run: {why}"
        else:
            try:
                more = ort_peer.sweep(ort, M, x, profiles, args, cells, decisions, exits)
                ort_note = f"ONNX Runtime {ort.__version__}, CPU, {args.threads} threads{more}"
            except Exception as e:  # a model the exporter or ORT refuses: say so
                ort_note = f"failed: {type(e).__name__}: {e}"
        print(f"torch_peer: ONNX Runtime: {ort_note}", flush=True)
    res = {"format": "exitrt-torch-peer", "version": 1, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "devices": [d.type for d in devices],
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
           "tf32": False, "cells": cells, "decisions": decisions, "ort": ort_note,
           "nested_tensors": Encoder.NESTED if M.transformer else None,
           "b1_samples": args.b1_samples if b1if_on(args, profiles) else 0}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
