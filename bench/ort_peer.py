"""The ONNX Runtime peer of `exitrt bench` (CPU), used by torch_peer.py --ort.

The same weights as the PyTorch peer (torch_peer.MultiExit), exported with
torch.onnx and run by onnxruntime's CPU execution provider, twice:
  ort-full      the full network (normalisation, every stage, the final
                head) as one session
  ort-pipeline  early exit as a user of ONNX Runtime writes it: one session
                per stage and one per exit head (its confidence head as a
                second output); after each exit the survivors are gathered
                in NumPy (boolean indexing) and only they enter the next stage
Each session is configured as for a pipeline of small sessions: sequential
execution, all graph optimisations, `threads` intra-op threads; every cell is
timed with thread spinning on and off (session.intra_op.allow_spinning) and
the better of the two is kept (spinning threads of one session steal the
cores the next one needs). Timing: as the PyTorch peer (from host arrays to
host arrays, median rep).

Transformer encoders are exported as the graph Hugging Face's BERT exports
(see "Transformer encoders" below; the padding mask is a second input "m"
of every stage and head past the first); their graphs are timed as
exported and again after onnxruntime.transformers' optimizer (fused
Attention, SkipLayerNormalization, BiasGelu), each with spinning on and
off, and each cell keeps the best of the four. Both variants' exit
decisions are checked; "mismatch_ort" is the larger count.

onnxruntime comes from PyPI, in the virtual environment .ci/deps makes
(.venv at the repository's root, made with --system-site-packages so that
Debian's torch and numpy stay visible); import_ort adds its
site-packages to sys.path. The transformer optimizer also needs the onnx
package there (.ci/deps installs it).
"""
import glob
import io
import os
import site
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

POLICY = {"entropy": 1, "max_prob": 2, "margin": 3, "confidence_head": 4}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPSET = 17  # LayerNormalization as one op


def import_ort():
    """onnxruntime, from this python or the repository's .venv; (module, why)."""
    try:
        import onnxruntime
        return onnxruntime, None
    except ImportError:
        pass
    for sp in glob.glob(os.path.join(ROOT, ".venv", "lib", "python3*", "site-packages")):
        if sp not in sys.path:
            site.addsitedir(sp)  # appended, with its .pth files
    try:
        import onnxruntime
        return onnxruntime, None
    except ImportError as e:
        return None, (f"onnxruntime not found ({e}); .ci/deps installs it into .venv")


class Full(nn.Module):
    def __init__(self, M):
        super().__init__()
        self.M = M

    def forward(self, x):
        h = self.M.norm(x)
        for st in self.M.stages:
            h = st(h)
        return self.M.heads[-1](h).reshape(x.shape[0], -1)


class Stage(nn.Module):
    def __init__(self, M, s):
        super().__init__()
        self.M, self.s = M, s

    def forward(self, x):
        return self.M.stages[self.s](self.M.norm(x) if self.s == 0 else x)


class Head(nn.Module):
    def __init__(self, M, s):
        super().__init__()
        self.M, self.s = M, s

    def forward(self, h):
        z = self.M.heads[self.s](h).reshape(h.shape[0], -1)
        if self.M.has_conf[self.s]:
            return z, self.M.confs[self.s](h).reshape(h.shape[0], -1)
        return z



# ---------------------------------------------------------------------------
# Transformer encoders, written out as the graph a user exports for ONNX
# Runtime: Hugging Face BERT's attention (separate Q, K and V projections,
# scores divided by sqrt(head_dim), the padding as an additive mask
# (1 - mask) * -10000), the pattern onnxruntime's graph optimiser and its
# transformer optimizer fuse into one Attention op. The padding mask
# travels beside the tokens as a float [n, T] input "m" (1 real, 0 padding)
# that the pipeline slices in NumPy; a model with patch inputs has none.
# PyTorch's fused encoder layer (what torch_peer times) has no ONNX
# symbolic, so the modules' weights are read into this graph instead.


def attend(mha, x, bias):
    """nn.MultiheadAttention mha (batch first) on x [n, T, D]; bias
    [n, 1, 1, T] or None."""
    D, H = mha.embed_dim, mha.num_heads
    dh = D // H
    W, b = mha.in_proj_weight, mha.in_proj_bias
    n, T = x.shape[0], x.shape[1]

    def heads(t):
        return t.reshape(n, T, H, dh).permute(0, 2, 1, 3)

    q = heads(nn.functional.linear(x, W[:D], b[:D]))
    k = heads(nn.functional.linear(x, W[D:2 * D], b[D:2 * D]))
    v = heads(nn.functional.linear(x, W[2 * D:], b[2 * D:]))
    s = torch.matmul(q, k.transpose(-1, -2)) / float(np.sqrt(dh))
    if bias is not None:
        s = s + bias
    p = torch.softmax(s, dim=-1)
    c = torch.matmul(p, v).permute(0, 2, 1, 3).reshape(n, T, D)
    return mha.out_proj(c)


def encoder_layer(L, x, bias):
    """nn.TransformerEncoderLayer L's math (post- or pre-LN) on x."""
    def ff(t):
        return L.linear2(L.activation(L.linear1(t)))

    if L.norm_first:
        x = x + attend(L.self_attn, L.norm1(x), bias)
        return x + ff(L.norm2(x))
    x = L.norm1(x + attend(L.self_attn, x, bias))
    return L.norm2(x + ff(x))


def run_tokens(tp, seq, h, m):
    """seq (a stage or head of torch_peer.MultiExit) on h; m the float
    padding mask or None. Returns h after seq."""
    bias = None
    for mod in seq:
        if isinstance(mod, tp.Encoder):
            if bias is None and m is not None:
                bias = (1.0 - m[:, None, None, :]) * -10000.0
            for L in mod.enc.layers:
                h = encoder_layer(L, h, bias)
        elif isinstance(mod, tp.SelfAttention):
            if bias is None and m is not None:
                bias = (1.0 - m[:, None, None, :]) * -10000.0
            h = attend(mod.attn, h, bias)
        elif isinstance(mod, tp.TokenEmbed):
            h = mod.emb(h)
            if mod.pos is not None:
                h = h + mod.pos
            if mod.seg is not None:
                h = h + mod.seg
        elif isinstance(mod, tp.PatchEmbed):
            h = mod(h)[0]
        elif isinstance(mod, tp.TokenPool):
            if mod.mode == "first":
                h = h[:, 0]
            elif m is None:
                h = h.mean(dim=1)
            else:
                h = (h * m.unsqueeze(-1)).sum(dim=1) / m.sum(dim=1, keepdim=True)
        elif isinstance(mod, tp.PerToken):
            h = mod.m(h if h.dim() == 3 else (h.flatten(1) if h.dim() > 2 else h))
        else:
            h = mod(h)
    return h


def token_input(x):
    """Input rows [n, 2, T, 1] to (ids int64 [n, T], mask float [n, T])."""
    x = x.reshape(x.shape[0], 2, -1)
    return x[:, 0].long(), x[:, 1]


class TxFull(nn.Module):
    def __init__(self, tp, M):
        super().__init__()
        self.tp, self.M = tp, M

    def forward(self, x):
        M = self.M
        if M.tokens:
            h, m = token_input(x)
        else:
            h, m = M.norm(x), None
        for st in M.stages:
            h = run_tokens(self.tp, st, h, m)
        return run_tokens(self.tp, M.heads[-1], h, m).reshape(x.shape[0], -1)


class TxStage(nn.Module):
    """Stage s: inputs x (the model's input for stage 0, else the tokens
    [n, T, D]) and, for a padded token model past stage 0, m."""

    def __init__(self, tp, M, s):
        super().__init__()
        self.tp, self.M, self.s = tp, M, s

    def forward(self, x, m=None):
        M = self.M
        if self.s == 0:
            x, m = token_input(x) if M.tokens else (M.norm(x), None)
        return run_tokens(self.tp, M.stages[self.s], x, m)


class TxHead(nn.Module):
    def __init__(self, tp, M, s):
        super().__init__()
        self.tp, self.M, self.s = tp, M, s

    def forward(self, x, m=None):
        M, s = self.M, self.s
        z = run_tokens(self.tp, M.heads[s], x, m).reshape(x.shape[0], -1)
        if M.has_conf[s]:
            return z, run_tokens(self.tp, M.confs[s], x, m).reshape(x.shape[0], -1)
        return z


def export(module, example, inputs, n_out):
    """module traced with the example tensors (named `inputs`) to ONNX
    bytes, every input and output batch-dynamic."""
    f = io.BytesIO()
    outs = [f"y{k}" for k in range(n_out)]
    torch.onnx.export(module, example, f, input_names=inputs, output_names=outs,
                      dynamic_axes={o: {0: "n"} for o in inputs + outs},
                      opset_version=OPSET, do_constant_folding=True)
    return f.getvalue()


def policy_exits(kind, z, conf, thr):
    """exitrt's policies (src/policy.h) in NumPy float32, as torch_peer's."""
    finite = np.isfinite(z).all(axis=1)
    if kind == POLICY["confidence_head"]:
        s = conf.reshape(-1)
    else:
        m = z.max(axis=1, keepdims=True)
        d = z - m
        e = np.exp(d)
        s_ = e.sum(axis=1)
        if kind == POLICY["entropy"]:
            s = np.maximum(np.log(s_) - (e * d).sum(axis=1) / s_, np.float32(0))
        elif kind == POLICY["margin"]:
            if z.shape[1] > 1:
                top2 = np.partition(z, -2, axis=1)[:, -2:]
                s = (1.0 - np.exp(top2[:, 0] - top2[:, 1])) / s_
            else:
                s = np.ones_like(s_)
        else:
            s = 1.0 / s_
    with np.errstate(invalid="ignore"):
        ok = finite & np.isfinite(s)
        return ok & ((s < thr) if kind == POLICY["entropy"] else (s >= thr))


def export_graphs(M):
    """The ONNX bytes of M's full network, its stages and its exit heads,
    with each one's input names: {"full": (bytes, names), "stages": [...],
    "heads": [...]}."""
    tp = sys.modules[type(M).__module__]  # torch_peer, as it was loaded
    g = {"stages": [], "heads": []}
    if M.tokens:
        x = torch.zeros(2, *M.shape)
        x[:, 1] = 1.0  # every token real
    else:
        x = torch.zeros(2, *M.shape)
    with torch.no_grad():
        if not M.transformer:
            g["full"] = (export(Full(M), (x,), ["x"], 1), ["x"])
            for s in range(M.E):
                g["stages"].append((export(Stage(M, s), (x,), ["x"], 1), ["x"]))
                x = Stage(M, s)(x)
                n_out = 2 if M.has_conf[s] else 1
                g["heads"].append((export(Head(M, s), (x,), ["x"], n_out), ["x"]))
            return g
        m = torch.ones(2, M.tokens) if M.tokens else None
        g["full"] = (export(TxFull(tp, M), (x,), ["x"], 1), ["x"])
        for s in range(M.E):
            st = TxStage(tp, M, s)
            ex, names = ((x,), ["x"]) if s == 0 or m is None else ((x, m), ["x", "m"])
            g["stages"].append((export(st, ex, names, 1), names))
            x = st(*ex)
            ex, names = ((x,), ["x"]) if m is None else ((x, m), ["x", "m"])
            n_out = 2 if M.has_conf[s] else 1
            g["heads"].append((export(TxHead(tp, M, s), ex, names, n_out), names))
    return g


def fuse_files(paths, kind, heads, dim):
    """Each ONNX file through onnxruntime.transformers' optimizer (its
    fusions alone, opt_level 0: the session then optimises at its highest
    level), written beside it as .fused.onnx; returns the Attention ops it
    made."""
    import onnx
    from onnxruntime.transformers import optimizer
    fused = 0
    for p in paths:
        o = optimizer.optimize_model(onnx.load(p), model_type=kind, num_heads=heads,
                                     hidden_size=dim, opt_level=0, use_gpu=False)
        fused += o.get_fused_operator_statistics().get("Attention", 0)
        o.save_model_to_file(p[:-5] + ".fused.onnx")
    return fused


def fuse_transformer(g, M):
    """g with every graph through the transformer optimizer (fused Attention,
    SkipLayerNormalization, BiasGelu), or (g, why not). The optimizer needs
    the onnx package, whose typing_extensions is newer than Debian's that
    torch has loaded here: when it cannot be imported in this process, it
    runs in the repository's .venv python."""
    mha = [L.self_attn for st in M.stages for mod in st
           for L in getattr(getattr(mod, "enc", None), "layers", [])]
    mha += [mod.attn for st in M.stages for mod in st if hasattr(mod, "attn")]
    if not mha:
        return g, "no attention to fuse"
    args = ("bert" if M.tokens else "vit", mha[0].num_heads, mha[0].embed_dim)
    items = [g["full"]] + g["stages"] + g["heads"]
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for k, (b, _) in enumerate(items):
            paths.append(os.path.join(d, f"g{k}.onnx"))
            with open(paths[-1], "wb") as f:
                f.write(b)
        try:
            fused = fuse_files(paths, *args)
        except Exception as e:  # noqa: BLE001 (an onnx this python cannot load)
            py = os.path.join(ROOT, ".venv", "bin", "python")
            r = subprocess.run([py, os.path.abspath(__file__), "--fuse", d, *map(str, args)],
                               capture_output=True, text=True) if os.path.exists(py) else None
            if r is None or r.returncode != 0:
                why = (r.stderr.strip().splitlines() or ["?"])[-1] if r else f"{e}"
                return g, f"transformer optimizer not run ({why})"
            fused = int(r.stdout.split()[-1])
        if fused == 0:
            return g, "the transformer optimizer fused no attention"
        out = []
        for p, (_, names) in zip(paths, items):
            with open(p[:-5] + ".fused.onnx", "rb") as f:
                out.append((f.read(), names))
    E = len(g["stages"])
    return {"full": out[0], "stages": out[1:1 + E], "heads": out[1 + E:]}, None


class OrtPeer:
    def __init__(self, ort, M, g, threads, spin):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        prov = ["CPUExecutionProvider"]
        self.M = M

        def sess(item):
            s = ort.InferenceSession(item[0], so, providers=prov)
            return s, [i.name for i in s.get_inputs()]

        self.full = sess(g["full"])
        self.stages = [sess(i) for i in g["stages"]]
        self.heads = [sess(i) for i in g["heads"]]

    def feed(self, sess, x, m):
        s, names = sess
        return s.run(None, {"x": x, "m": m} if "m" in names else {"x": x})

    def mask(self, x):
        """The padding mask [n, T] (1 real, 0 padding) of token inputs, else None."""
        return np.ascontiguousarray(x.reshape(x.shape[0], 2, -1)[:, 1]) if self.M.tokens else None

    def run_full(self, x):
        z = self.feed(self.full, x, None)[0]
        return z, np.full(x.shape[0], self.M.E - 1, dtype=np.int32)

    def run_pipeline(self, x, thr):
        M = self.M
        n = x.shape[0]
        out = np.empty((n, M.K), dtype=np.float32)
        ex = np.full(n, M.E - 1, dtype=np.int32)
        idx = np.arange(n)
        h, m = x, self.mask(x)
        for s in range(M.E):
            h = self.feed(self.stages[s], h, m)[0]
            r = self.feed(self.heads[s], h, m)
            z = r[0]
            if s == M.E - 1:
                out[idx] = z
                break
            take = policy_exits(M.kinds[s], z, r[1] if len(r) > 1 else None, thr[s])
            if take.any():
                out[idx[take]] = z[take]
                ex[idx[take]] = s
                keep = ~take
                h, idx = h[keep], idx[keep]
                m = m[keep] if m is not None else None
                if h.shape[0] == 0:
                    break
        return out, ex


def sweep(ort, M, x, profiles, args, out, decisions, exits):
    """Appends the ort-full and ort-pipeline cells (device cpu) to out and
    each profile's pipeline decision check to decisions (the largest
    mismatch over the graph variants); returns a note on the variants."""
    n = x.shape[0]
    maxb = max(args.batches)
    xs = np.ascontiguousarray(x[np.arange(n + maxb) % n])
    g = export_graphs(M)
    variants, note = [("exported", g)], ""
    if M.transformer:
        gf, why = fuse_transformer(g, M)
        if why is None:
            variants.append(("fused", gf))
            note = "; graphs as exported and through the transformer optimizer, the better kept"
        else:
            note = f"; graphs as exported ({why})"
    peers = [(v, spin, OrtPeer(ort, M, gv, args.threads, spin))
             for v, gv in variants for spin in (True, False)]
    # decisions over all inputs, pipeline, in batches of 256, every variant
    for p, (pname, thr) in enumerate(profiles):
        d = next((d for d in decisions if d["profile"] == pname), None)
        for v, spin, peer in peers:
            if not spin:
                continue
            ex = np.concatenate([peer.run_pipeline(x[b:b + 256], thr)[1]
                                 for b in range(0, n, 256)])
            if d is None:
                continue
            d[f"counts_ort_{v}"] = np.bincount(ex, minlength=M.E).tolist()
            if v == variants[0][0]:
                d["counts_ort"] = d[f"counts_ort_{v}"]
            if exits is not None:
                bad = int(np.sum(ex != exits[p]))
                d[f"mismatch_ort_{v}"] = bad
                d["mismatch_ort"] = max(d.get("mismatch_ort", 0), bad)
    for batch in args.batches:
        nb = (args.rep_samples + batch - 1) // batch
        t0 = time.perf_counter()
        jobs = [("ort-full", None, None)] + [("ort-pipeline", pn, thr) for pn, thr in profiles]
        for mode, pname, thr in jobs:
            best = None
            for variant, spin, peer in peers:
                def infer(xb, peer=peer, mode=mode, thr=thr):
                    return peer.run_full(xb) if mode == "ort-full" else peer.run_pipeline(xb, thr)
                rep_s, lat_s, counts = [], [], np.zeros(M.E, dtype=np.int64)
                for rep in range(-1, args.reps):
                    k = nb if rep >= 0 else args.warmup
                    r0 = time.perf_counter()
                    for j in range(k):
                        start = (j * batch) % n
                        tb = time.perf_counter()
                        _, exb = infer(xs[start:start + batch])
                        if rep >= 0:
                            lat_s.append(time.perf_counter() - tb)
                            if rep == 0:
                                counts += np.bincount(exb, minlength=M.E)
                    if rep >= 0:
                        rep_s.append(time.perf_counter() - r0)
                sps = nb * batch / float(np.median(rep_s))
                if best is None or sps > best["samples_per_s"]:
                    lat = np.sort(np.asarray(lat_s))
                    q = lambda f: float(lat[min(max(int(np.ceil(f * len(lat))), 1), len(lat)) - 1])
                    best = {"device": "cpu", "profile": pname, "batch": batch, "mode": mode,
                            "reps": len(rep_s), "samples_per_rep": nb * batch,
                            "samples_per_s": sps, "p50_ms": 1e3 * q(0.5), "p99_ms": 1e3 * q(0.99),
                            "exit_counts": [int(v) for v in counts], "spinning": spin,
                            "graphs": variant}
            out.append(best)
        print(f"ort_peer: cpu batch {batch} done ({time.perf_counter() - t0:.1f}s)", flush=True)
    mine = [c for c in out if c["mode"] in ("ort-full", "ort-pipeline")]
    spun = sum(c["spinning"] for c in mine)
    note += f"; spinning won {spun} of {len(mine)} cells"
    if len(variants) > 1:
        fused = sum(c["graphs"] == "fused" for c in mine)
        note += f", the optimizer's graphs {fused} of {len(mine)}"
    return note


if __name__ == "__main__":
    # ort_peer.py --fuse DIR KIND HEADS DIM: fuse_files on DIR/g*.onnx (see
    # fuse_transformer); prints the Attention ops made
    if len(sys.argv) == 6 and sys.argv[1] == "--fuse":
        d, kind, heads, dim = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        paths = sorted(glob.glob(os.path.join(d, "g*.onnx")))
        print(fuse_files([p for p in paths if not p.endswith(".fused.onnx")], kind, heads, dim))
    else:
        sys.exit("usage: ort_peer.py --fuse DIR KIND HEADS DIM (ort_peer is used by torch_peer.py)")
