#!/usr/bin/env python3
"""compare_predictions.py WANT_PREFIX GOT_PREFIX LABEL [--want-note TEXT]

Compares two `exitrt run` outputs of the same model and samples, each given
as a prefix P with P.csv (--predictions), P.npy (--logits) and P.json
(--json, for the thresholds and the host waits). WANT is the reference (the
CPU backend), GOT the run under test (the CUDA backend).

The rule is tests/common/tolerance.h's, whose numbers this script reads from
that file, so the C tests and the device check apply the same one:
  - an exit may differ only where the earlier of the two exits' score lies
    within ERT_TOL_THRESHOLD * (1 + |threshold|) of its threshold (a flip),
    and at most ERT_TOL_FLIP_PERCENT % of the rows (+1) may flip;
  - where the exits agree: scores within ERT_TOL_THRESHOLD * (1 + |score|),
    logits within ERT_TOL_LOGIT * (|want| + row max) + 1e-6, and the same
    class unless the two top logits are within that tolerance (a tie).

--want-note TEXT: the run under test must also report an engine note
(`engine_note` in its JSON) holding TEXT, e.g. "graphs: on" for a run with
--graph-buckets: a run that fell back to the wait-based path computes the
same predictions, so without this its comparison would pass and say nothing
about the graphs.

Prints one line, "PASS ..." or "FAIL ...", with the counts (rows, flips,
ties, worst logit error relative to the row's scale, host waits); exits 0
on PASS, 1 on FAIL.
"""
import csv
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOL_H = os.path.join(HERE, "..", "common", "tolerance.h")


def tolerances(path=TOL_H):
    text = open(path).read()
    out = {}
    for name in ("ERT_TOL_THRESHOLD", "ERT_TOL_LOGIT", "ERT_TOL_FLIP_PERCENT"):
        m = re.search(r"#define\s+%s\s+([0-9.eE+-]+)f?" % name, text)
        if not m:
            raise SystemExit(f"FAIL compare: {name} not found in {path}")
        out[name] = float(m.group(1))
    return out


def load_npy(path):
    """A float32 [N, K] .npy as a list of rows (numpy when there, else by hand)."""
    try:
        import numpy as np
        return np.load(path).astype("float64").tolist()
    except ImportError:
        import ast
        import struct
        raw = open(path, "rb").read()
        hlen = struct.unpack_from("<H", raw, 8)[0]
        hdr = ast.literal_eval(raw[10:10 + hlen].decode("latin1"))
        n, k = hdr["shape"]
        vals = struct.unpack_from("<%df" % (n * k), raw, 10 + hlen)
        return [list(vals[i * k:(i + 1) * k]) for i in range(n)]


def load(prefix):
    rows = list(csv.DictReader(open(prefix + ".csv")))
    logits = load_npy(prefix + ".npy")
    rep = json.load(open(prefix + ".json"))
    return rows, logits, rep


def compare(want_prefix, got_prefix, label, tol, want_note=None):
    T, L, P = tol["ERT_TOL_THRESHOLD"], tol["ERT_TOL_LOGIT"], tol["ERT_TOL_FLIP_PERCENT"]
    wr, wl, wrep = load(want_prefix)
    gr, gl, grep = load(got_prefix)
    if len(wr) != len(gr) or len(wl) != len(gr):
        return False, f"{len(wr)} reference rows, {len(gr)} rows under test"
    thr = {e["index"]: e["threshold"] for e in wrep["exits"]}
    flips = ties = 0
    worst = 0.0
    bad = []
    for i, (w, g) in enumerate(zip(wr, gr)):
        we, ge = int(w["exit"]), int(g["exit"])
        if we != ge:
            early, ex = (w, we) if we < ge else (g, ge)
            t = thr.get(ex)
            s = float(early["score"])
            if t is None or abs(s - t) > T * (1 + abs(t)):
                bad.append(f"row {i}: exit {ge}, reference {we} (score {s:.9g}, threshold {t})")
            flips += 1
            continue
        ws, gs = float(w["score"]), float(g["score"])
        if abs(gs - ws) > T * (1 + abs(ws)):
            bad.append(f"row {i}: score {gs:.9g}, reference {ws:.9g}")
        scale = max(abs(v) for v in wl[i])
        for k, (a, b) in enumerate(zip(gl[i], wl[i])):
            err = abs(a - b)
            worst = max(worst, err / (scale + 1e-30))
            if err > L * (abs(b) + scale) + 1e-6:
                bad.append(f"row {i} logit {k}: {a:.9g}, reference {b:.9g}")
                break
        if w["class"] != g["class"]:
            top = sorted(wl[i], reverse=True)
            if len(top) > 1 and top[0] - top[1] <= L * (abs(top[0]) + scale) + 1e-6:
                ties += 1
            else:
                bad.append(f"row {i}: class {g['class']}, reference {w['class']}")
    n = len(gr)
    if want_note is not None and want_note not in grep.get("engine_note", ""):
        bad.append(f"the engine note does not say '{want_note}'")
    if flips > n * P / 100 + 1:
        bad.append(f"{flips} flips of {n} rows: more than {P:g}% + 1")
    waits = grep.get("host_waits")
    note = grep.get("engine_note", "")
    msg = (f"{n} rows, {flips} threshold flips, {ties} class ties, worst logit error "
           f"{worst:.2g} of the row's scale, host_waits {waits}, accuracy {grep.get('accuracy')} "
           f"(reference {wrep.get('accuracy')}), macs_ratio {grep.get('macs_ratio')}")
    if note:
        msg += f", note: {note}"
    if bad:
        return False, msg + "; " + "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
    return True, msg


def main():
    args = sys.argv[1:]
    want_note = None
    if len(args) == 5 and args[3] == "--want-note":
        want_note = args[4]
        args = args[:3]
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    want, got, label = args
    try:
        ok, msg = compare(want, got, label, tolerances(), want_note)
    except (OSError, ValueError, KeyError) as e:
        ok, msg = False, f"cannot compare: {e}"
    print(f"{'PASS' if ok else 'FAIL'} {label}: {msg}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
