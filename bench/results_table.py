#!/usr/bin/env python3
"""Prints the Markdown tables of bench/RESULTS.md from `exitrt bench --json`
files, so the tables there are the bench's own numbers, not retyped.

    python3 bench/results_table.py bench/results/cpu-fmnist-mlp3.json ...
    python3 bench/results_table.py --summary bench/results/cpu-*.json
    python3 bench/results_table.py --encoders bench/results/cpu-bert-base.json

--stages prints what each stage (with its exit head) costs in time against
its share of the MACs: from the bench's own stage costs (the JSON's
"stages", every run since they were added), else from a run with profiles
that send every sample to one exit (`--profile first=1 --profile second=0,1`).

--summary prints one table over the files: per model and batch, FULL
against PyTorch's and ONNX Runtime's full network, and COMPACTED (balanced /
early-heavy profiles) against PyTorch's best early-exit mode and ONNX
Runtime's early-exit pipeline, with COMPACTED's efficiency.

--encoders prints, per model, batch and profile (every profile that exits
some samples early), exitrt's COMPACTED against PyTorch run the way the
public early-exit codes run (DeeBERT, PABEE: one sample at a time, a Python
`if` after each exit; the peer's "batch1-if" mode) and against PyTorch's
best batched early exit (the better of its masked and compacted loops at
the same batch), with the ideal speedup, the measured speedup over FULL and
the efficiency, and FULL against PyTorch's full network.
"""
import json
import sys


def pct(counts):
    n = sum(counts)
    return "/".join(f"{100.0 * c / n:.1f}" for c in counts)


def num(v, fmt):
    return "-" if v is None else format(v, fmt)


def sps_fmt(v):
    """Samples/s: whole numbers, one decimal below 100 (encoders run a few
    samples per second)."""
    return ".1f" if v is not None and v < 100 else ".0f"


def encoders(paths):
    print("| model | batch | profile | ideal | exitrt COMPACTED samples/s | speedup over FULL | eff "
          "| PyTorch batch1-if samples/s | ÷ PyTorch batch1-if "
          "| PyTorch best batched EE samples/s | ÷ PyTorch best batched EE "
          "| exitrt FULL samples/s | ÷ PyTorch FULL |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in paths:
        d = json.load(open(path))
        name = d["model"].rstrip("/").split("/")[-1]
        for b in sorted({c["batch"] for c in d["cells"]}):
            cells = [c for c in d["cells"] if c["batch"] == b]
            full = next((c for c in cells if c["mode"] == "full"), None)
            for c in cells:
                if c["mode"] != "compacted" or c["exit_counts"][-1] == sum(c["exit_counts"]):
                    continue  # every sample at the final head: no early exit to compare
                b1s = c.get("torch_b1if_samples_per_s")
                best = c.get("torch_best_ee_samples_per_s")
                sps = c["samples_per_s"]
                fts = full.get("torch_samples_per_s") if full else None
                print(f"| {name} | {b} | {c['profile']} | {c['ideal_speedup']:.2f} "
                      f"| {sps:{sps_fmt(sps)}} | {c['speedup']:.2f}x | {c['efficiency']:.2f} "
                      f"| {num(b1s, sps_fmt(b1s))} | {num(sps / b1s if b1s else None, '.2f')} "
                      f"| {num(best, sps_fmt(best))} | {num(sps / best if best else None, '.2f')} "
                      f"| {num(full['samples_per_s'] if full else None, sps_fmt(full and full['samples_per_s']))} "
                      f"| {num(full['samples_per_s'] / fts if fts else None, '.2f')} |")
    print()


def table(path):
    d = json.load(open(path))
    exits = ", ".join(f"{e['name']} ({e['policy']})" for e in d["exits"])
    print(f"### {d['model'].split('/')[-1]}\n")
    print(f"{d['date']}; exits: {exits}; full network {d['macs_full'] / 1e6:.3f} MMAC/sample; "
          f"{d['threads']} threads; {d['reps']} reps of {d['rep_samples']}+ samples (median); "
          f"peer: {d['peer'].get('note', 'not run')}. Every cell: `{path}`.\n")
    b1 = any(c.get("torch_b1if_samples_per_s") for c in d["cells"])
    print("| profile | target % per exit | achieved % | thresholds | PyTorch exit mismatches "
          f"(masked / compacted{' / batch1-if' if b1 else ''}) |")
    print("| --- | --- | --- | --- | --- |")
    for p in d["profiles"]:
        thr = ", ".join(f"{t:.4g}" for t in p["thresholds"])
        mm = [p.get("torch_mismatch_masked"), p.get("torch_mismatch_compacted")]
        if b1:
            mm.append(p.get("torch_mismatch_b1if"))
        print(f"| {p['name']} | {pct(p['targets'])} | {pct(p['achieved'])} | {thr} | "
              f"{' / '.join(num(v, 'd') for v in mm)} of {sum(p['achieved'])} |")
    print()
    print("| batch | profile | mode | samples/s | p50 ms | p99 ms | MMAC/sample | ideal | speedup "
          "| eff | PyTorch samples/s | ÷ PyTorch same mode | ÷ PyTorch best early-exit "
          + ("| PyTorch batch1-if samples/s | ÷ PyTorch batch1-if " if b1 else "")
          + "| ONNX Runtime samples/s | ÷ ONNX Runtime |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          + ("| ---: | ---: " if b1 else "") + "| ---: | ---: |")
    seen_full = set()
    for c in d["cells"]:
        if c["mode"] == "full":
            if c["batch"] in seen_full:
                continue
            seen_full.add(c["batch"])
            prof = "(any)"
        else:
            prof = c["profile"]
        ts, best = c.get("torch_samples_per_s"), c.get("torch_best_ee_samples_per_s")
        ratio = c["samples_per_s"] / ts if ts else None
        ratio_best = c["samples_per_s"] / best if best and c["mode"] != "full" else None
        ort = c.get("ort_samples_per_s")
        ratio_ort = c["samples_per_s"] / ort if ort else None
        eff = None if c["mode"] == "full" else c["efficiency"]
        ideal = None if c["mode"] == "full" else c["ideal_speedup"]
        b1cols = ""
        if b1:
            b1s = c.get("torch_b1if_samples_per_s")
            b1cols = (f"| {num(b1s, sps_fmt(b1s))} "
                      f"| {num(c['samples_per_s'] / b1s if b1s else None, '.2f')} ")
        print(f"| {c['batch']} | {prof} | {c['mode']} | {c['samples_per_s']:{sps_fmt(c['samples_per_s'])}} "
              f"| {c['p50_ms']:.2f} "
              f"| {c['p99_ms']:.2f} | {c['macs_per_sample'] / 1e6:.3f} | {num(ideal, '.2f')} "
              f"| {c['speedup']:.2f}x | {num(eff, '.2f')} | {num(ts, sps_fmt(ts))} | {num(ratio, '.2f')} "
              f"| {num(ratio_best, '.2f')} {b1cols}| {num(ort, '.0f')} | {num(ratio_ort, '.2f')} |")
    print()
    drift = d.get("drift")
    if drift:
        move = drift["after"] / drift["before"] - 1
        print(f"Drift: FULL at batch {drift['batch']} ran {drift['before']:.0f} samples/s before "
              f"the peers and {drift['after']:.0f} after ({100 * move:+.1f}%).\n")


def summary(paths):
    print("| model | batch | FULL samples/s | ÷ PyTorch | ÷ ORT | COMPACTED bal. / early samples/s "
          "| ÷ PyTorch best EE | ÷ ORT pipeline | eff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in paths:
        d = json.load(open(path))
        name = d["model"].rstrip("/").split("/")[-1]
        for b in sorted({c["batch"] for c in d["cells"]}):
            cells = [c for c in d["cells"] if c["batch"] == b]
            full = next(c for c in cells if c["mode"] == "full")
            comp = [next((c for c in cells if c["mode"] == "compacted" and c["profile"] == p), None)
                    for p in ("balanced", "early-heavy")]
            comp = [c for c in comp if c]

            def ratio(c, key):
                v = c.get(key)
                return c["samples_per_s"] / v if v else None

            def pair(f):
                return " / ".join(f(c) for c in comp)
            print(f"| {name} | {b} | {full['samples_per_s']:.0f} "
                  f"| {num(ratio(full, 'torch_samples_per_s'), '.2f')} "
                  f"| {num(ratio(full, 'ort_samples_per_s'), '.2f')} "
                  f"| {pair(lambda c: format(c['samples_per_s'], '.0f'))} "
                  f"| {pair(lambda c: num(ratio(c, 'torch_best_ee_samples_per_s'), '.2f'))} "
                  f"| {pair(lambda c: num(ratio(c, 'ort_samples_per_s'), '.2f'))} "
                  f"| {pair(lambda c: format(c['efficiency'], '.2f'))} |")
    print()


def stages(paths):
    print("| model | batch | up to exit | MMAC/sample (cumulative) | µs/sample (cumulative) "
          "| this stage: share of MACs | share of time | µs per MMAC |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for path in paths:
        d = json.load(open(path))
        name = d["model"].rstrip("/").split("/")[-1]
        names = [e["name"] for e in d["exits"]]
        if d.get("stages"):
            st, E = d["stages"], len(names)
            for i in range(0, len(st) - E + 1, E):  # one backend and batch
                last = st[i + E - 1]
                for s in st[i:i + E]:
                    m, t = s["macs_per_sample"], s["us_per_sample"]
                    dm = s["mac_share"] * last["macs_per_sample"] / 1e6
                    dt = s["time_share"] * last["us_per_sample"]
                    print(f"| {name} | {s['batch']} | {s['exit']} | {m / 1e6:.3f} | {t:.1f} "
                          f"| {100 * s['mac_share']:.1f}% | {100 * s['time_share']:.1f}% "
                          f"| {dt / dm if dm > 0 else 0.0:.1f} |")
            continue
        for b in sorted({c["batch"] for c in d["cells"]}):
            # every sample to exit k: the profile whose achieved counts put
            # all (or nearly all) samples at one exit, the cheapest first
            pts = []
            for c in d["cells"]:
                if c["batch"] != b or c["mode"] != "compacted":
                    continue
                n = sum(c["exit_counts"])
                k = max(range(len(names)), key=lambda i: c["exit_counts"][i])
                if c["exit_counts"][k] >= 0.95 * n:
                    pts.append((c["macs_per_sample"], 1e6 / c["samples_per_s"], names[k]))
            best = {}
            for m, t, k in pts:  # one point per exit: the faster of equal profiles
                if m not in best or t < best[m][1]:
                    best[m] = (m, t, k)
            pts = sorted(best.values())
            total_m, total_t = pts[-1][0], pts[-1][1]
            pm = pt = 0.0
            for m, t, k in pts:
                print(f"| {name} | {b} | {k} | {m / 1e6:.3f} | {t:.1f} | {100 * (m - pm) / total_m:.1f}% "
                      f"| {100 * (t - pt) / total_t:.1f}% | {(t - pt) / ((m - pm) / 1e6):.1f} |")
                pm, pt = m, t
    print()


if sys.argv[1:2] == ["--encoders"]:
    encoders(sys.argv[2:])
elif sys.argv[1:2] == ["--summary"]:
    summary(sys.argv[2:])
elif sys.argv[1:2] == ["--stages"]:
    stages(sys.argv[2:])
else:
    for path in sys.argv[1:]:
        table(path)
