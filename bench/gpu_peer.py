#!/usr/bin/python3
"""The GPU peers of `exitrt bench`: what a PyTorch user would run on the
GPU, each variant timed, the best one reported. A drop-in for
bench/torch_peer.py (the same command line and JSON, so `exitrt bench
--peer` runs it when ERT_TORCH_PEER points here), for CUDA:

    ERT_TORCH_PEER=bench/gpu_peer.py ERT_PYTHON=python3 \\
        exitrt bench MODEL --device cuda --peer --peer-runs 1 ...

Variants (--variants, or $ERT_GPU_PEER_VARIANTS, a comma list; default
all), in this order (most telling first; for an encoder hf-sdpa comes
right after eager), each on the modes it fits:
  eager        at --precision (torch_peer.py's modules and loops): full,
               masked (every head, outputs selected with torch.where),
               compacted (boolean indexing after an `.item()`)
  compile      torch.compile (default mode) of every stage and head module,
               the loops as above: full, masked, compacted (index_select);
               convnets in channels_last; encoders without nested tensors
               (which do not compile), as all the compiled variants
  hf-sdpa      BERT-like encoders: Hugging Face's BertModel with SDPA
               attention carrying the same weights, the exits' heads on
               its layers' outputs: full, masked, compacted (index_select)
  eager-cl     convnets: eager in channels_last
  eager-isel   compacted with the survivors gathered by index_select on
               their indices (after the `.item()`), the other way a user
               writes the loop
  compile-ro   torch.compile(mode="reduce-overhead") (CUDA graphs) of the
               whole full and masked forward (static shapes)
  compile-max  torch.compile(mode="max-autotune-no-cudagraphs") of the
               whole full forward (minutes of autotuning on a big model:
               last, and only within the budget)
Precision (--precision, or $ERT_GPU_PEER_PRECISION; default fp32), for
every variant, as exitrt's engine setting of the same name: fp32 (TF32 off
for matmul and cuDNN: exact float32 products), tf32 (TF32 tensor cores on
for both, torch.backends' allow_tf32), bf16 (the forward under
torch.autocast(dtype=torch.bfloat16), TF32 off; exit scores then come from
bf16 logits where autocast leaves them in bf16).

Before any variant is timed, its exit decisions over all the inputs are
checked against exitrt's (--exits), per profile and mode, with
tests/common/tolerance.h's flip allowance (a percentage of the rows, + 1);
a variant that differs by more is reported and left out of "best". The
check also runs each compiled variant at the shapes it will meet, so its
compilation stays out of the timing.

Each (batch, mode, profile) cell keeps the fastest valid variant: its
samples/s is what exitrt's JSON and table show as PyTorch's (exitrt bench
takes "PyTorch's best early exit" as the better of the masked and
compacted cells). Every variant's figure, its decision check and why a
variant did not run are written to $ERT_GPU_PEER_OUT (a JSON file, when
set; --variants-out overrides) and summarised on stdout.

Budget: variants start only while less than --budget seconds
($ERT_GPU_PEER_BUDGET, default 150) have passed since the start, and a
variant still running at --hard seconds (default: the budget + 30) is
stopped there (an alarm), so that a slow compile cannot eat the device
call; those left or stopped say so, and the cells already timed count.

Timing (as torch_peer.py): per cell `warmup` batches, then `reps` reps of
ceil(rep_samples / batch) batches cycling through the inputs, samples/s
from the median rep, CUDA events; each batch starts in pinned host memory
and ends with its exits and logits on the host. Cells are timed variant by
variant (not interleaved like torch_peer.py's).

--device cpu runs the same on the CPU (for a dry run without a GPU: slow,
and torch.compile may be missing; such variants say why they did not run).
"""
import contextlib
import copy
import json
import os
import signal
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "cuda"))
import torch_peer as tp  # noqa: E402

ALL = ["eager", "compile", "hf-sdpa", "eager-cl", "eager-isel", "compile-ro", "compile-max"]


class OutOfTime(Exception):
    pass


def out_of_time(signum, frame):
    raise OutOfTime("the peer's hard limit (--hard) passed while it ran")


def flip_allowance(n):
    """tolerance.h's rule: ERT_TOL_FLIP_PERCENT % of the rows, + 1."""
    try:
        import compare_predictions
        p = compare_predictions.tolerances()["ERT_TOL_FLIP_PERCENT"]
    except (ImportError, OSError, SystemExit):
        p = 1.0
    return int(n * p / 100 + 1)


# ---------------------------------------------------------------------------
# The loops, on any object with torch_peer.MultiExit's attributes


def run_compacted_isel(M, x, thr):
    """compacted, the survivors gathered with index_select on their indices
    after the host reads whether anyone left."""
    n = x.shape[0]
    h = M.norm(x)
    out = torch.empty((n, M.K), dtype=torch.float32, device=x.device)
    ex = torch.full((n,), M.E - 1, dtype=torch.int32, device=x.device)
    idx = torch.arange(n, device=x.device)
    for s in range(M.E):
        h = M.stages[s](h)
        z = M.heads[s](h).reshape(tp.nrows(h), -1).float()  # autocast: bf16 logits
        if s == M.E - 1:
            out.index_copy_(0, idx, z)
            break
        conf = M.confs[s](h) if M.has_conf[s] else None
        take = tp.policy_exits(M.kinds[s], z, conf, thr[s])
        if take.any().item():
            gone = take.nonzero().squeeze(1)
            out.index_copy_(0, idx.index_select(0, gone), z.index_select(0, gone))
            ex.index_fill_(0, idx.index_select(0, gone), s)
            keep = (~take).nonzero().squeeze(1)
            if keep.shape[0] == 0:
                break
            if isinstance(h, tuple):
                h = tuple(t.index_select(0, keep) if t is not None else None for t in h)
            else:
                h = h.index_select(0, keep)
            idx = idx.index_select(0, keep)
    return out, ex


class View:
    """MultiExit's attributes with other stage/head modules."""

    def __init__(self, M, stages=None, heads=None, norm=None):
        for k in ("confs", "has_conf", "kinds", "E", "K", "shape", "tokens", "transformer"):
            setattr(self, k, getattr(M, k))
        self.norm = norm if norm is not None else M.norm
        self.stages = stages if stages is not None else M.stages
        self.heads = heads if heads is not None else M.heads


class Variant:
    """fn(mode, x, thr) -> (logits, exits) for the modes it supports."""

    def __init__(self, name, modes, fn, prep=None, note=""):
        self.name, self.modes, self.fn = name, modes, fn
        self.prep = prep or (lambda x: x)
        self.note = note


def loops(V, compacted):
    def fn(mode, x, thr):
        if mode == "full":
            return tp.run_full(V, x)
        if mode == "masked":
            return tp.run_masked(V, x, thr)
        return compacted(V, x, thr)
    return fn


_dense = []


def dense_copy(M, dev, model_dir):
    """The model with its encoders built without nested tensors (padded
    tokens computed), once."""
    if not _dense:
        was = tp.Encoder.NESTED
        tp.Encoder.NESTED = False
        try:
            _dense.append(tp.MultiExit(model_dir).to(dev))
        finally:
            tp.Encoder.NESTED = was
    return _dense[0]


def make_variant(name, M, dev, model_dir):
    """The Variant, or a string saying why it cannot run here."""
    conv = not M.transformer
    if name == "eager":
        return Variant(name, ("full", "masked", "compacted"), loops(M, tp.run_compacted))
    if name == "eager-cl":
        if not conv:
            return "not for transformer encoders"
        Mc = copy.deepcopy(M).to(memory_format=torch.channels_last)
        return Variant(name, ("full", "masked", "compacted"), loops(Mc, tp.run_compacted),
                       prep=lambda x: x.contiguous(memory_format=torch.channels_last))
    if name == "eager-isel":
        return Variant(name, ("compacted",), loops(M, run_compacted_isel))
    if not hasattr(torch, "compile") and name.startswith("compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if name.startswith("compile") and M.transformer:
        M = dense_copy(M, dev, model_dir)  # nested tensors do not compile
    if name == "compile":
        V = View(M, stages=[torch.compile(s) for s in M.stages],
                 heads=[torch.compile(h) for h in M.heads])
        return Variant(name, ("full", "masked", "compacted"), loops(V, run_compacted_isel),
                       prep=(lambda x: x.contiguous(memory_format=torch.channels_last))
                       if conv else None)
    if name == "compile-ro":
        full = torch.compile(lambda x: tp.run_full(M, x), mode="reduce-overhead")
        masked = {}

        def fn(mode, x, thr):
            if mode == "full":
                return full(x)
            key = tuple(thr)
            if key not in masked:  # one graph per profile's thresholds
                masked[key] = torch.compile(lambda x, t=list(thr): tp.run_masked(M, x, t),
                                            mode="reduce-overhead")
            return masked[key](x)
        return Variant(name, ("full", "masked"), fn)
    if name == "compile-max":
        full = torch.compile(lambda x: tp.run_full(M, x), mode="max-autotune-no-cudagraphs")
        return Variant(name, ("full",), lambda mode, x, thr: full(x))
    if name == "hf-sdpa":
        if not M.transformer or not M.tokens:
            return "only for BERT-like token models"
        return hf_variant(M, dev, model_dir)
    return f"unknown variant {name}"


# ---------------------------------------------------------------------------
# Hugging Face BertModel with SDPA attention


class HFStage(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, h):
        x, pad = h
        ext = None
        if pad is not None:  # HF's additive mask: 0 attended, the float minimum padded
            ext = pad[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
        for L in self.layers:
            o = L(x, attention_mask=ext)
            x = o[0] if isinstance(o, tuple) else o
        return x, pad


class HFEmbed(torch.nn.Module):
    def __init__(self, emb):
        super().__init__()
        self.emb = emb

    def forward(self, h):
        ids, pad = h
        return self.emb(input_ids=ids), pad


def hf_variant(M, dev, model_dir):
    try:
        import transformers
        from transformers import BertConfig, BertModel
    except ImportError as e:
        return f"transformers missing: {e}"
    path = os.path.join(model_dir, "model.json") if os.path.isdir(model_dir) else model_dir
    j = json.load(open(path))
    w = tp.read_safetensors(os.path.join(os.path.dirname(path), j["weights"]))
    bb = j["backbone"]
    types = [L["type"] for L in bb]
    if types[:2] != ["token_embed", "layer_norm"] or any(t != "encoder_block" for t in types[2:]):
        return "the backbone is not token_embed, layer_norm, encoder_blocks (BERT's layout)"
    E, N = bb[0], bb[1]
    blocks = bb[2:]
    A = blocks[0]["attention"]
    D, H = int(A["embed_dim"]), int(A["num_heads"])
    F = int(blocks[0]["linear1"]["out_features"])
    if any(b.get("norm_first") for b in blocks) or blocks[0].get("activation") != "gelu":
        return "not post-LN GELU blocks (BERT's)"
    eps = float(blocks[0]["norm1"].get("eps", 1e-12))
    cfg = BertConfig(vocab_size=int(E["vocab_size"]), hidden_size=D, num_hidden_layers=len(blocks),
                     num_attention_heads=H, intermediate_size=F, hidden_act="gelu",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     max_position_embeddings=M.tokens, type_vocab_size=1, layer_norm_eps=eps)
    cfg._attn_implementation = "sdpa"
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    t = lambda name: tp.tensor(w, name)  # noqa: E731
    with torch.no_grad():
        em = bert.embeddings
        em.word_embeddings.weight.copy_(t(E["weight"]))
        em.position_embeddings.weight.copy_(t(E["position"]) if "position" in E
                                            else torch.zeros(M.tokens, D))
        em.token_type_embeddings.weight.copy_((t(E["segment"]) if "segment" in E
                                               else torch.zeros(D)).reshape(1, D))
        em.LayerNorm.weight.copy_(t(N["weight"]))
        em.LayerNorm.bias.copy_(t(N["bias"]))
        em.LayerNorm.eps = float(N.get("eps", 1e-12))
        for L, b in zip(bert.encoder.layer, blocks):
            a = b["attention"]
            iw, ib = t(a["in_weight"]), t(a["in_bias"]) if "in_bias" in a else torch.zeros(3 * D)
            sa = L.attention.self
            for k, lin in enumerate((sa.query, sa.key, sa.value)):
                lin.weight.copy_(iw[k * D:(k + 1) * D])
                lin.bias.copy_(ib[k * D:(k + 1) * D])
            for lin, wn, bn in ((L.attention.output.dense, a["out_weight"], a.get("out_bias")),
                                (L.intermediate.dense, b["linear1"]["weight"],
                                 b["linear1"].get("bias")),
                                (L.output.dense, b["linear2"]["weight"], b["linear2"].get("bias"))):
                lin.weight.copy_(t(wn))
                lin.bias.copy_(t(bn) if bn else torch.zeros_like(lin.bias))
            for ln, nn_ in ((L.attention.output.LayerNorm, b["norm1"]),
                            (L.output.LayerNorm, b["norm2"])):
                ln.weight.copy_(t(nn_["weight"]))
                ln.bias.copy_(t(nn_["bias"]))
                ln.eps = float(nn_.get("eps", 1e-12))
    # the stages of M: stage s ends after exit s's block (names: model.json's "after")
    after = [e["after"] for e in j["exits"]]
    names = [L["name"] for L in blocks]
    cuts = [names.index(a) + 1 for a in after] + [len(blocks)]
    stages, begin = [], 0
    for c in cuts:
        stages.append(HFStage(list(bert.encoder.layer[begin:c])))
        begin = c
    stages[0] = torch.nn.Sequential(HFEmbed(bert.embeddings), stages[0])
    V = View(M, stages=torch.nn.ModuleList(stages).to(dev), heads=M.heads)
    note = f"transformers {transformers.__version__}, attention {bert.config._attn_implementation}"
    return Variant("hf-sdpa", ("full", "masked", "compacted"), loops(V, run_compacted_isel),
                   note=note)


# ---------------------------------------------------------------------------
# Decisions and timing


PRECISION = "fp32"


def set_precision(p):
    """The process-wide switches of --precision; the autocast part is
    precision_ctx, entered around every forward."""
    global PRECISION
    PRECISION = p
    torch.backends.cuda.matmul.allow_tf32 = p == "tf32"
    torch.backends.cudnn.allow_tf32 = p == "tf32"


def precision_ctx(dev):
    if PRECISION == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decisions(var, xs_dev, profiles, exits, chunk):
    """Per profile and mode: the variant's exits over all inputs against
    exitrt's; returns {profile: {mode: mismatches}}."""
    n = xs_dev.shape[0]
    res = {}
    with torch.inference_mode(), precision_ctx(xs_dev.device):
        for p, (pname, thr) in enumerate(profiles):
            d = {}
            for mode in var.modes:
                if mode == "full":
                    continue
                ex = [var.fn(mode, var.prep(xs_dev[b:b + chunk]), thr)[1].cpu().numpy()
                      for b in range(0, n, chunk)]
                ex = np.concatenate(ex)
                d[mode] = int(np.sum(ex != exits[p])) if exits is not None else None
            res[pname] = d
    return res


def time_cell(var, mode, thr, xs, n, batch, nb, args, dev):
    cuda = dev.type == "cuda"
    rep_s, lat_s, counts = [], [], None
    with torch.inference_mode(), precision_ctx(dev):
        for rep in range(-1, args.reps):
            k = nb if rep >= 0 else args.warmup
            if cuda:
                r0, r1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                r0.record()
            t0 = time.perf_counter()
            cnt = np.zeros(64, dtype=np.int64)
            for i in range(k):
                start = (i * batch) % n
                tb = time.perf_counter()
                xb = var.prep(xs[start:start + batch].to(dev, non_blocking=True))
                z, ex = var.fn(mode, xb, thr)
                z, ex = z.cpu(), ex.cpu()
                if rep >= 0:
                    lat_s.append(time.perf_counter() - tb)
                if rep == 0:
                    cnt[:int(ex.max()) + 1] += np.bincount(ex.numpy())
            if rep < 0:
                continue
            if cuda:
                r1.record()
                r1.synchronize()
                rep_s.append(r0.elapsed_time(r1) / 1e3)
            else:
                rep_s.append(time.perf_counter() - t0)
            if rep == 0:
                counts = cnt
    return {"reps": len(rep_s), "samples_per_rep": nb * batch,
            "samples_per_s": nb * batch / tp.median(rep_s),
            "p50_ms": 1e3 * tp.pct(lat_s, 0.50), "p99_ms": 1e3 * tp.pct(lat_s, 0.99),
            "counts": counts}


def run_variant(name, entry, M, dev, args, profiles, exits, xs, xs_dev, n, allow, best, t_start):
    """Builds, checks and times one variant into entry; its valid cells
    compete for best."""
    if time.perf_counter() - t_start > args.budget:
        entry["skipped"] = f"budget: {args.budget:.0f}s used before it started"
        return
    t0 = time.perf_counter()
    var = make_variant(name, M, dev, args.model)
    if isinstance(var, str):
        entry["skipped"] = var
        return
    entry["note"] = var.note
    dec = decisions(var, xs_dev, profiles, exits, max(args.batches))
    entry["mismatches"] = dec
    entry["check_s"] = round(time.perf_counter() - t0, 1)
    cells = entry["cells"] = []  # kept as far as it got, should the alarm stop it
    for batch in args.batches:
        nb = (args.rep_samples + batch - 1) // batch
        todo = [("full", None, None)] if "full" in var.modes and "full" in args.modes else []
        todo += [(m, pn, thr) for pn, thr in profiles for m in ("masked", "compacted")
                 if m in var.modes and m in args.modes]
        for mode, pname, thr in todo:
            bad = dec.get(pname, {}).get(mode) if pname else None
            c = time_cell(var, mode, thr, xs, n, batch, nb, args, dev)
            valid = bad is None or bad <= allow
            cells.append({"batch": batch, "mode": mode, "profile": pname,
                          "samples_per_s": c["samples_per_s"], "valid": valid})
            key = (batch, mode, pname)
            if valid and (key not in best or c["samples_per_s"] > best[key][0]):
                best[key] = (c["samples_per_s"], name, c)
    entry["seconds"] = round(time.perf_counter() - t0, 1)


def main():
    ap = tp.peer_parser("the GPU peers of exitrt bench", "cuda")
    ap.add_argument("--ort", action="store_true", help="ignored: ONNX Runtime is a CPU peer")
    ap.add_argument("--variants", default=os.environ.get("ERT_GPU_PEER_VARIANTS", ",".join(ALL)))
    ap.add_argument("--budget", type=float,
                    default=float(os.environ.get("ERT_GPU_PEER_BUDGET", "150")))
    ap.add_argument("--hard", type=float, default=None)
    ap.add_argument("--variants-out", default=os.environ.get("ERT_GPU_PEER_OUT"))
    ap.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                    default=os.environ.get("ERT_GPU_PEER_PRECISION", "fp32"))
    args, M, x, exits, profiles = tp.peer_setup(ap, "gpu_peer")
    set_precision(args.precision)
    t_start = time.perf_counter()
    hard = args.hard if args.hard is not None else args.budget + 30

    if args.device == "cpu":
        dev = torch.device("cpu")
    elif torch.cuda.is_available():
        dev = torch.device("cuda")
    else:
        sys.exit("gpu_peer: torch sees no CUDA device (--device cpu for a dry run)")
    n = x.shape[0]
    maxb = max(args.batches)
    xs = torch.from_numpy(np.ascontiguousarray(x[np.arange(n + maxb) % n]))
    if dev.type == "cuda":
        xs = xs.pin_memory()
    M = M.to(dev)
    xs_dev = xs[:n].to(dev)
    allow = flip_allowance(n)

    report = {"format": "exitrt-gpu-peer", "version": 1, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
              "model": args.model, "precision": PRECISION, "tf32": PRECISION == "tf32",
              "flip_allowance": allow,
              "budget_s": args.budget, "variants": []}
    best = {}  # (batch, mode, profile) -> (sps, variant, cell)
    eager_dec = {}
    names = [v for v in args.variants.split(",") if v]
    if M.transformer and "hf-sdpa" in names and "eager" in names:
        # for an encoder Hugging Face's model is the more telling peer: right after eager
        names.remove("hf-sdpa")
        names.insert(names.index("eager") + 1, "hf-sdpa")
    for name in names:
        entry = {"name": name}
        report["variants"].append(entry)
        left = hard - (time.perf_counter() - t_start)
        if left < 1:
            entry["skipped"] = f"budget: the hard limit of {hard:.0f}s passed before it started"
        else:
            signal.signal(signal.SIGALRM, out_of_time)
            signal.alarm(int(left))
            try:
                run_variant(name, entry, M, dev, args, profiles, exits, xs, xs_dev, n, allow,
                            best, t_start)
            except Exception as e:  # a variant that fails says so; the others still run
                entry["failed"] = f"{type(e).__name__}: {str(e)[:400]}"
            finally:
                signal.alarm(0)
        if name == "eager":
            eager_dec = entry.get("mismatches", {})
        print(f"gpu_peer: {name}: " + (entry.get("skipped") or entry.get("failed")
                                       or f"{entry['seconds']}s, decisions {entry['mismatches']}"),
              flush=True)

    out_cells = []
    for (batch, mode, pname), (sps, name, c) in sorted(best.items(), key=lambda t: str(t[0])):
        counts = [int(v) for v in c["counts"][:M.E]] if c["counts"] is not None else None
        out_cells.append({"device": dev.type, "profile": pname, "batch": batch, "mode": mode,
                          "reps": c["reps"], "samples_per_rep": c["samples_per_rep"],
                          "samples_per_s": sps, "p50_ms": c["p50_ms"], "p99_ms": c["p99_ms"],
                          "exit_counts": counts, "variant": name})
    # batch1-if: the public early-exit codes' loop, eager, one sample at a time
    if args.b1_samples > 0 and profiles and time.perf_counter() - t_start < hard:
        var = Variant("eager", ("batch1-if",),
                      lambda mode, xb, thr: tp.run_b1if(M, xb, thr))
        for pname, thr in profiles:
            c = time_cell(var, "batch1-if", thr, xs, n, 1, args.b1_samples, args, dev)
            out_cells.append({"device": dev.type, "profile": pname, "batch": 1,
                              "mode": "batch1-if", "reps": c["reps"],
                              "samples_per_rep": c["samples_per_rep"],
                              "samples_per_s": c["samples_per_s"], "p50_ms": c["p50_ms"],
                              "p99_ms": c["p99_ms"], "exit_counts": None, "variant": "eager"})
    dec_out = []
    for pname, _ in profiles:
        d = {"profile": pname}
        for mode, v in eager_dec.get(pname, {}).items():
            d[f"mismatch_{mode}"] = v
        dec_out.append(d)
    res = {"format": "exitrt-torch-peer", "version": 1, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "devices": [dev.type],
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
           "precision": PRECISION, "tf32": PRECISION == "tf32",
           "cells": out_cells, "decisions": [] if args.no_check else dec_out,
           "ort": "not run: the GPU peer (bench/gpu_peer.py)",
           "nested_tensors": tp.Encoder.NESTED if M.transformer else None,
           "b1_samples": args.b1_samples, "gpu_peer": report}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    if args.variants_out:
        report["best"] = [{"batch": c["batch"], "mode": c["mode"], "profile": c["profile"],
                           "variant": c["variant"], "samples_per_s": c["samples_per_s"]}
                          for c in out_cells]
        with open(args.variants_out, "w") as f:
            json.dump(report, f, indent=1)
    won = {}
    for c in out_cells:
        won[c["variant"]] = won.get(c["variant"], 0) + 1
    print("gpu_peer: best variant per cell: " + ", ".join(f"{k} {v}" for k, v in won.items()),
          flush=True)


if __name__ == "__main__":
    main()
