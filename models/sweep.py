#!/usr/bin/env python3
"""PyTorch-side threshold sweep of an exported multi-exit model.

Reads <model dir>/model.json and the per-exit test logits a training script
saved (<model dir>/test_logits.npz), applies the exit policies exactly as
models/FORMAT.md and src/policy.h define them (float32), and prints
  - each exit's accuracy,
  - a sweep with one threshold for every early exit: overall accuracy, exit
    shares and the MACs executed relative to the full network (counted as
    src/plan.h counts them: rows entering each stage x (stage + head MACs)),
  - the per-exit thresholds that execute the fewest MACs while staying
    within `--tolerance` points of the final exit's accuracy.
These are PyTorch-side numbers; the README tables are measured with
`exitrt run`.

    /usr/bin/python3 models/sweep.py models/fmnist-resnet
"""
import itertools
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export as ex  # noqa: E402


def policy_scores(kind, z, conf=None):
    """Scores [N] of logits z [N,K] in float32, as src/policy.h computes
    them; NaN where a logit (or the confidence) is not finite."""
    if kind == "confidence_head":
        c = np.asarray(conf, dtype=np.float32).reshape(-1)
        return np.where(np.isfinite(c), c, np.float32(np.nan))
    z = np.asarray(z, dtype=np.float32)
    bad = ~np.isfinite(z).all(1)
    z = np.where(np.isfinite(z), z, np.float32(0))
    srt = np.sort(z, axis=1)
    m, m2 = srt[:, -1:], srt[:, -2:-1] if z.shape[1] > 1 else None
    d = z - m
    e = np.exp(d)
    s = e.sum(1, dtype=np.float32)
    t = (e * d).sum(1, dtype=np.float32)
    if kind == "entropy":
        out = np.maximum(np.log(s) - t / s, np.float32(0))
    elif kind == "margin":
        out = ((np.float32(1) - np.exp(m2 - m)[:, 0]) / s if m2 is not None
               else np.ones_like(s))
    else:  # max_prob, and the final head's score
        out = np.float32(1) / s
    return np.where(bad, np.float32(np.nan), out).astype(np.float32)


def exits_mask(kind, score, thr):
    """Whether each row exits (NaN never does)."""
    with np.errstate(invalid="ignore"):
        if kind == "entropy":
            return np.isfinite(score) & (score < np.float32(thr))
        return np.isfinite(score) & (score >= np.float32(thr))


def simulate(masks, preds, labels, macs):
    """masks: [E-1] bool [N] (early exits), preds [E, N]. Returns (accuracy
    %, exit counts [E], MACs ratio executed / full)."""
    n = len(labels)
    taken = np.full(n, len(preds) - 1)
    left = np.ones(n, bool)
    for i, m in enumerate(masks):
        go = left & m
        taken[go] = i
        left &= ~go
    counts = np.bincount(taken, minlength=len(preds))
    acc = 100.0 * np.mean(preds[taken, np.arange(n)] == labels)
    entering = n - np.concatenate([[0], np.cumsum(counts)[:-1]])
    executed = float(np.sum(entering * (np.asarray(macs["stage"]) + np.asarray(macs["head"]))))
    return acc, counts, executed / (n * macs["full"])


def candidates(kind):
    if kind == "entropy":
        return [round(v, 3) for v in np.concatenate(
            [np.arange(0.0, 0.1, 0.01), np.arange(0.1, 1.0, 0.025), np.arange(1.0, 2.01, 0.1)])]
    return [round(v, 3) for v in np.concatenate(
        [np.arange(0.5, 0.95, 0.01), np.arange(0.95, 0.999, 0.005), [0.999, 1.0]])]


def sweep_values(kind):
    if kind == "entropy":
        return [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    return [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999]


def analyse(model_dir, tolerance=0.5, max_ratio=0.70):
    model = json.load(open(os.path.join(model_dir, "model.json")))
    data = np.load(os.path.join(model_dir, "test_logits.npz"))
    logits, labels = data["logits"], data["labels"]
    exits = model["exits"]
    names = [e["name"] for e in exits] + [model["final"]["name"]]
    macs = ex.model_macs(model)
    preds = logits.argmax(2)
    accs = [100.0 * np.mean(p == labels) for p in preds]
    kinds = [e["policy"]["type"] for e in exits]
    scores = [policy_scores(k, logits[i], data[f"conf{i}"] if f"conf{i}" in data else None)
              for i, k in enumerate(kinds)]
    res = dict(model=model, names=names, macs=macs, accs=accs, kinds=kinds)

    # One threshold for every early exit (all exits of one policy type).
    rows = []
    if len(set(kinds)) == 1 and kinds:
        for thr in sweep_values(kinds[0]):
            masks = [exits_mask(k, s, thr) for k, s in zip(kinds, scores)]
            rows.append((thr,) + simulate(masks, preds, labels, macs))
    res["sweep"] = rows

    # Per-exit thresholds: the fewest MACs within tolerance of the final exit.
    target = accs[-1] - tolerance
    per = [[(t, exits_mask(k, s, t)) for t in candidates(k)] for k, s in zip(kinds, scores)]
    best = None
    for combo in itertools.product(*per):
        acc, counts, ratio = simulate([m for _, m in combo], preds, labels, macs)
        if acc >= target and (best is None or ratio < best[2] - 1e-12 or
                              (abs(ratio - best[2]) <= 1e-12 and acc > best[0])):
            best = (acc, counts, ratio, [t for t, _ in combo])
    res["best"] = best
    res["target"] = target
    res["meets_ratio"] = best is not None and best[2] <= max_ratio
    return res


def report(model_dir, tolerance=0.5, conservative=0.1):
    r = analyse(model_dir, tolerance)
    m, names = r["model"], r["names"]
    print(f"## {m['name']} (PyTorch, test split, {len(np.load(os.path.join(model_dir, 'test_logits.npz'))['labels'])} images)")
    print("MACs per sample: stages " + ", ".join(str(v) for v in r["macs"]["stage"]) +
          "; heads " + ", ".join(str(v) for v in r["macs"]["head"]) +
          f"; full network {r['macs']['full']}")
    print("| exit | policy | accuracy % |\n| --- | --- | --- |")
    for n, k, a in zip(names, r["kinds"] + ["(final)"], r["accs"]):
        print(f"| {n} | {k} | {a:.2f} |")
    if r["sweep"]:
        print(f"\n| threshold ({r['kinds'][0]}, all early exits) | accuracy % | " +
              " | ".join(f"{n} %" for n in names) + " | MACs / full |")
        print("| --- " * (len(names) + 3) + "|")
        n = sum(r["sweep"][0][2])
        for thr, acc, counts, ratio in r["sweep"]:
            print(f"| {thr:g} | {acc:.2f} | " +
                  " | ".join(f"{100.0 * c / n:.1f}" for c in counts) + f" | {ratio:.3f} |")
    b = r["best"]
    if b is None:
        print("\nno thresholds reach the target accuracy")
    else:
        acc, counts, ratio, thr = b
        n = sum(counts)
        print(f"\nsuggested thresholds (fewest MACs with accuracy >= final - {tolerance}"
              f" = {r['target']:.2f}%): " +
              ", ".join(f"{nm}={t:g}" for nm, t in zip(names, thr)) +
              f" -> accuracy {acc:.2f}%, exits " +
              ", ".join(f"{nm} {100.0 * c / n:.1f}%" for nm, c in zip(names, counts)) +
              f", MACs {100.0 * ratio:.1f}% of full" +
              ("" if r["meets_ratio"] else " (above the 70% goal)"))
    if conservative is not None and conservative < tolerance:
        # the edge of the tolerance is fitted to the test split; a tighter
        # one leaves room for what the split does not show
        c = analyse(model_dir, conservative)["best"]
        if c is not None:
            acc, counts, ratio, thr = c
            n = sum(counts)
            print(f"conservative (accuracy >= final - {conservative}): " +
                  ", ".join(f"{nm}={t:g}" for nm, t in zip(names, thr)) +
                  f" -> accuracy {acc:.2f}%, exits " +
                  ", ".join(f"{nm} {100.0 * c_ / n:.1f}%" for nm, c_ in zip(names, counts)) +
                  f", MACs {100.0 * ratio:.1f}% of full")
    sys.stdout.flush()
    return r


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--conservative", type=float, default=0.1)
    a = ap.parse_args()
    report(a.model_dir, a.tolerance, a.conservative)
