#!/usr/bin/python3
"""Writes a transformer encoder with early exits and random (seeded) weights
in exitrt's model format (models/FORMAT.md, "Transformer encoders"), for
`exitrt bench`: its throughput depends only on routing, which the bench's
exit profiles fix, so random weights are honest there.

    /usr/bin/python3 bench/make_encoder.py OUT_DIR [--arch bert|vit] [--tiny]
                     [--samples 256] [--seed 0] [--blocks N] [--dim D] ...

--arch bert (the default) is BERT-base as DeeBERT (Xin et al. 2020) runs it:
token_embed (vocab 30522, D 768, T 128, position and one segment
embedding), layer_norm (eps 1e-12), 12 post-LN encoder_blocks (H 12,
F 3072, exact GELU), an early exit after blocks 1..11 and the final head
after block 12, each head DeeBERT's highway [token_pool first, linear D to
D, tanh, linear D to K], K 2, entropy policies. About 110 M weights
(440 MB) and 11.2 GMAC per sample: generate it into a build folder, never
commit it. Sample data: `sample_data.npy` int32 [N, 2, T] (token ids, then
the mask; FORMAT.md's token data file), every id drawn uniformly from
[1000, vocab) (BERT's unused and special ids lie below; [1, vocab) when
vocab <= 2000) (the first token too, so that samples differ from the first
block on), lengths uniform in [T/8, T] (--full-length: all T), padded tokens id 0
and mask 0;
`sample_labels.npy` int32 [N] uniform over the classes.

--arch vit is a ViT in torchvision's layout (patch_embed with a class token
and positions, pre-LN encoder_blocks, heads [token_pool first, layer_norm,
linear]) on 3x32x32 float inputs (`sample_data.npy` float32 [N, 3, 32, 32],
standard normal).

--tiny shrinks either to a seconds-scale model for tests (bert: vocab 1000,
D 64, T 16, H 4, F 128, 4 blocks; vit: D 64, H 4, F 128, 4 blocks, patch 8).
--blocks, --dim, --heads, --ffn, --tokens, --vocab, --classes override.

Weights are drawn as BERT initialises them (normal, std 0.02; layer norms 1
and 0; biases 0), so activations stay normalised through the depth. Each
exit's last linear layer is then scaled so that its logits have a standard
deviation of about 1 at the first exit rising to 3 at the final head (as a
trained network grows more confident with depth): the exits' entropies
spread over (0, ln K), so the bench's profiles can be calibrated (neither
saturated softmaxes, whose scores tie, nor near-uniform ones, whose scores
crowd within float rounding). The scale is computed from the head's
architecture (the pooled vector of a post-LN block has unit variance per
feature; the pooler's tanh output is estimated by sampling), not from a
forward pass, so writing BERT-base takes seconds.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


class Weights:
    """Tensors in the order written; one safetensors file."""

    def __init__(self, rng):
        self.rng = rng
        self.items = []

    def add(self, name, a):
        self.items.append((name, np.ascontiguousarray(a, dtype="<f4")))
        return name

    def normal(self, name, shape, std=0.02):
        a = self.rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(std)
        return self.add(name, a)

    def const(self, name, shape, v):
        return self.add(name, np.full(shape, v, dtype=np.float32))

    def write(self, path):
        header, off = {}, 0
        for name, a in self.items:
            header[name] = {"dtype": "F32", "shape": list(a.shape),
                            "data_offsets": [off, off + a.nbytes]}
            off += a.nbytes
        header["__metadata__"] = {"generator": "bench/make_encoder.py"}
        h = json.dumps(header, separators=(",", ":")).encode("utf-8")
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for _, a in self.items:
                f.write(a.tobytes())


def layer_norm(w, prefix, D, eps):
    return {"normalized_shape": D, "eps": eps, "weight": w.const(prefix + ".weight", [D], 1.0),
            "bias": w.const(prefix + ".bias", [D], 0.0)}


def linear(w, prefix, n_in, n_out, std=0.02):
    return {"in_features": n_in, "out_features": n_out,
            "weight": w.normal(prefix + ".weight", [n_out, n_in], std),
            "bias": w.const(prefix + ".bias", [n_out], 0.0)}


def encoder_block(w, name, D, H, F, norm_first, eps):
    return {"name": name, "type": "encoder_block", "norm_first": norm_first,
            "activation": "gelu",
            "attention": {"embed_dim": D, "num_heads": H,
                          "in_weight": w.normal(name + ".attn.in_weight", [3 * D, D]),
                          "in_bias": w.const(name + ".attn.in_bias", [3 * D], 0.0),
                          "out_weight": w.normal(name + ".attn.out_weight", [D, D]),
                          "out_bias": w.const(name + ".attn.out_bias", [D], 0.0)},
            "norm1": layer_norm(w, name + ".norm1", D, eps),
            "linear1": linear(w, name + ".linear1", D, F),
            "linear2": linear(w, name + ".linear2", F, D),
            "norm2": layer_norm(w, name + ".norm2", D, eps)}


def logit_std(i, E):
    """The target standard deviation of exit i's logits (of E, the final
    head last): 1 at the first exit, 3 at the final head."""
    return 1.0 + 2.0 * i / max(E - 1, 1)


def named(name, typ, fields):
    d = {"name": name, "type": typ}
    d.update(fields)
    return d


def bert_head(w, name, D, K, i, E, rng):
    # pooler: linear (std 0.02) of a unit-variance vector, then tanh; the
    # classifier's std sets the logits' spread: std_out = s * sqrt(D) * rms
    pre = rng.standard_normal(100000) * 0.02 * np.sqrt(D)
    rms = float(np.sqrt(np.mean(np.tanh(pre) ** 2)))
    s = logit_std(i, E) / (np.sqrt(D) * rms)
    return [named("pool", "token_pool", {"mode": "first"}),
            named("pooler", "linear", linear(w, name + ".pooler", D, D)),
            named("act", "tanh", {}),
            named("classifier", "linear", linear(w, name + ".classifier", D, K, s))]


def vit_head(w, name, D, K, i, E, eps):
    s = logit_std(i, E) / np.sqrt(D)  # after a layer norm: unit variance per feature
    return [named("pool", "token_pool", {"mode": "first"}),
            named("norm", "layer_norm", layer_norm(w, name + ".norm", D, eps)),
            named("classifier", "linear", linear(w, name + ".classifier", D, K, s))]


def build(a, w, rng):
    D, H, F, L, K = a.dim, a.heads, a.ffn, a.blocks, a.classes
    backbone, heads = [], []
    if a.arch == "bert":
        eps = 1e-12
        T = a.tokens
        backbone.append({"name": "embed", "type": "token_embed", "vocab_size": a.vocab,
                         "embed_dim": D, "weight": w.normal("embed.weight", [a.vocab, D]),
                         "position": w.normal("embed.position", [T, D]),
                         "segment": w.normal("embed.segment", [D])})
        backbone.append(named("embed_norm", "layer_norm", layer_norm(w, "embed_norm", D, eps)))
        for b in range(L):
            backbone.append(encoder_block(w, f"block{b + 1}", D, H, F, False, eps))
            name = f"exit{b + 1}" if b + 1 < L else "final"
            heads.append(bert_head(w, name, D, K, b, L, rng))
        inp = {"tokens": T}
    else:
        eps = 1e-6
        C, S, P = 3, a.image, a.patch
        if S % P:
            sys.exit(f"make_encoder: --image {S} is not a multiple of --patch {P}")
        T = (S // P) ** 2 + 1
        backbone.append({"name": "patch", "type": "patch_embed", "in_channels": C,
                         "embed_dim": D, "patch_size": P,
                         "weight": w.normal("patch.weight", [D, C, P, P]),
                         "bias": w.const("patch.bias", [D], 0.0),
                         "class_token": w.normal("patch.class_token", [D]),
                         "position": w.normal("patch.position", [T, D])})
        for b in range(L):
            backbone.append(encoder_block(w, f"block{b + 1}", D, H, F, True, eps))
            name = f"exit{b + 1}" if b + 1 < L else "final"
            heads.append(vit_head(w, name, D, K, b, L, eps))
        inp = {"shape": [C, S, S]}
    after = range(L - 1) if not a.exits else [int(v) - 1 for v in a.exits.split(",")]
    exits = [{"name": f"exit{b + 1}", "after": f"block{b + 1}", "head": heads[b],
              "policy": {"type": "entropy", "threshold": 0.3}} for b in after]
    return inp, backbone, exits, {"name": "final", "head": heads[-1]}, T


def sample_data(a, rng, T):
    N = a.samples
    if a.arch == "bert":
        x = np.zeros((N, 2, T), dtype=np.int32)
        lo = T if a.full_length else max(T // 8, 1)
        lengths = rng.integers(lo, T + 1, size=N)
        for i, n in enumerate(lengths):
            x[i, 0, :n] = rng.integers(1000 if a.vocab > 2000 else 1, a.vocab, size=n)
            x[i, 1, :n] = 1
    else:
        x = rng.standard_normal((N, 3, a.image, a.image), dtype=np.float32)
    y = rng.integers(0, a.classes, size=N).astype(np.int32)
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--arch", choices=["bert", "vit"], default="bert")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exits", default="",
                    help="the blocks with an early exit after them, e.g. 2,4 (default: "
                         "every block but the last)")
    ap.add_argument("--full-length", action="store_true",
                    help="bert: every sequence T tokens long (no padding)")
    for k in ("blocks", "dim", "heads", "ffn", "tokens", "vocab", "classes", "image", "patch"):
        ap.add_argument("--" + k, type=int)
    a = ap.parse_args()
    if a.arch == "bert":
        base = dict(blocks=12, dim=768, heads=12, ffn=3072, tokens=128, vocab=30522, classes=2)
        tiny = dict(blocks=4, dim=64, heads=4, ffn=128, tokens=16, vocab=1000)
    else:  # ViT-B/16's widths on 32x32 inputs with 4x4 patches (T = 65)
        base = dict(blocks=12, dim=768, heads=12, ffn=3072, image=32, patch=4, classes=10)
        tiny = dict(blocks=4, dim=64, heads=4, ffn=128, image=32, patch=8)
    if a.tiny:
        base.update(tiny)
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.dim % a.heads:
        sys.exit(f"make_encoder: --heads {a.heads} does not divide --dim {a.dim}")
    if not 2 <= a.blocks <= 16:
        sys.exit("make_encoder: --blocks must be 2..16 (an exit after each, 16 exits at most)")
    if a.exits and not all(v.isdigit() and 1 <= int(v) < a.blocks for v in a.exits.split(",")):
        sys.exit(f"make_encoder: --exits {a.exits}: blocks 1..{a.blocks - 1}, comma-separated")

    rng = np.random.default_rng(a.seed)
    w = Weights(rng)
    inp, backbone, exits, final, T = build(a, w, rng)
    os.makedirs(a.out, exist_ok=True)
    x, y = sample_data(a, rng, T)
    np.save(os.path.join(a.out, "sample_data.npy"), x)
    np.save(os.path.join(a.out, "sample_labels.npy"), y)
    size = "tiny" if a.tiny else "base"
    j = {"format": "exitrt-model", "version": 1,
         "name": f"{a.arch}-{size}-ee-random",
         "random_weights": True,
         "weights": "model.safetensors", "input": inp, "num_classes": a.classes,
         "sample_data": "sample_data.npy", "sample_labels": "sample_labels.npy",
         "backbone": backbone, "exits": exits, "final": final}
    w.write(os.path.join(a.out, "model.safetensors"))
    with open(os.path.join(a.out, "model.json"), "w") as f:
        json.dump(j, f, indent=1)
    nw = sum(t.size for _, t in w.items)
    print(f"make_encoder: {a.out}: {j['name']}, {a.blocks} blocks, D {a.dim}, H {a.heads}, "
          f"F {a.ffn}, T {T}, {nw / 1e6:.1f} M weights, {len(exits)} early exits, "
          f"{a.samples} samples")


if __name__ == "__main__":
    main()
