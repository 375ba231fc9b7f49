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

onnxruntime comes from PyPI, in the virtual environment .ci/deps makes
(.venv at the repository's root, made with --system-site-packages so that
Debian's torch and numpy stay visible); torch_peer.py adds its
site-packages to sys.path.
"""
import glob
import io
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

POLICY = {"entropy": 1, "max_prob": 2, "margin": 3, "confidence_head": 4}

# Transformer encoders are not exported: the stages pass (tokens, padding
# mask) pairs, which Stage and Head below do not carry, and torch.onnx has
# no symbolic for the fused encoder layer PyTorch runs in inference mode.
TRANSFORMER_NOTE = ("the ONNX Runtime peer does not export transformer encoders (token or "
                    "patch inputs)")


def import_ort():
    """onnxruntime, from this python or the repository's .venv; (module, why)."""
    try:
        import onnxruntime
        return onnxruntime, None
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for sp in glob.glob(os.path.join(root, ".venv", "lib", "python3*", "site-packages")):
        if sp not in sys.path:
            sys.path.append(sp)
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


def export(module, example, n_out):
    f = io.BytesIO()
    outs = [f"y{k}" for k in range(n_out)]
    torch.onnx.export(module, example, f, input_names=["x"], output_names=outs,
                      dynamic_axes={"x": {0: "n"}, **{o: {0: "n"} for o in outs}},
                      opset_version=13, do_constant_folding=True)
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


class OrtPeer:
    def __init__(self, ort, M, threads, spin):
        if M.transformer:
            raise ValueError(TRANSFORMER_NOTE)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        prov = ["CPUExecutionProvider"]
        c, h, w = M.shape
        x = torch.zeros(2, c, h, w)
        self.M = M
        with torch.no_grad():
            self.full = ort.InferenceSession(export(Full(M), x, 1), so, providers=prov)
            self.stages, self.heads = [], []
            for s in range(M.E):
                self.stages.append(ort.InferenceSession(export(Stage(M, s), x, 1), so,
                                                        providers=prov))
                x = Stage(M, s)(x)
                n_out = 2 if M.has_conf[s] else 1
                self.heads.append(ort.InferenceSession(export(Head(M, s), x, n_out), so,
                                                       providers=prov))

    def run_full(self, x):
        z = self.full.run(None, {"x": x})[0]
        return z, np.full(x.shape[0], self.M.E - 1, dtype=np.int32)

    def run_pipeline(self, x, thr):
        M = self.M
        n = x.shape[0]
        out = np.empty((n, M.K), dtype=np.float32)
        ex = np.full(n, M.E - 1, dtype=np.int32)
        idx = np.arange(n)
        h = x
        for s in range(M.E):
            h = self.stages[s].run(None, {"x": h})[0]
            r = self.heads[s].run(None, {"x": h})
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
                if h.shape[0] == 0:
                    break
        return out, ex


def sweep(ort, M, x, profiles, args, out, decisions, exits):
    """Appends the ort-full and ort-pipeline cells (device cpu) to out and
    each profile's pipeline decision check to decisions."""
    n = x.shape[0]
    maxb = max(args.batches)
    xs = np.ascontiguousarray(x[np.arange(n + maxb) % n])
    peers = [(spin, OrtPeer(ort, M, args.threads, spin)) for spin in (True, False)]
    # decisions over all inputs, pipeline, in batches of 256
    for p, (pname, thr) in enumerate(profiles):
        ex = np.concatenate([peers[0][1].run_pipeline(x[b:b + 256], thr)[1]
                             for b in range(0, n, 256)])
        d = next((d for d in decisions if d["profile"] == pname), None)
        if d is not None:
            d["counts_ort"] = np.bincount(ex, minlength=M.E).tolist()
            if exits is not None:
                d["mismatch_ort"] = int(np.sum(ex != exits[p]))
    for batch in args.batches:
        nb = (args.rep_samples + batch - 1) // batch
        t0 = time.perf_counter()
        jobs = [("ort-full", None, None)] + [("ort-pipeline", pn, thr) for pn, thr in profiles]
        for mode, pname, thr in jobs:
            best = None
            for spin, peer in peers:
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
                            "exit_counts": [int(v) for v in counts], "spinning": spin}
            out.append(best)
        print(f"ort_peer: cpu batch {batch} done ({time.perf_counter() - t0:.1f}s)", flush=True)
