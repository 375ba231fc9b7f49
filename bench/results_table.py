#!/usr/bin/env python3
"""Prints the Markdown tables of bench/RESULTS.md from `exitrt bench --json`
files, so the tables there are the bench's own numbers, not retyped.

    python3 bench/results_table.py bench/results/cpu-fmnist-mlp3.json ...
"""
import json
import sys


def pct(counts):
    n = sum(counts)
    return "/".join(f"{100.0 * c / n:.1f}" for c in counts)


def num(v, fmt):
    return "-" if v is None else format(v, fmt)


def table(path):
    d = json.load(open(path))
    exits = ", ".join(f"{e['name']} ({e['policy']})" for e in d["exits"])
    print(f"### {d['model'].split('/')[-1]}\n")
    print(f"{d['date']}; exits: {exits}; full network {d['macs_full'] / 1e6:.3f} MMAC/sample; "
          f"{d['threads']} threads; {d['reps']} reps of {d['rep_samples']}+ samples (median); "
          f"peer: {d['peer'].get('note', 'not run')}. Every cell: `{path}`.\n")
    print("| profile | target % per exit | achieved % | thresholds | PyTorch exit mismatches (masked / compacted) |")
    print("| --- | --- | --- | --- | --- |")
    for p in d["profiles"]:
        thr = ", ".join(f"{t:.4g}" for t in p["thresholds"])
        print(f"| {p['name']} | {pct(p['targets'])} | {pct(p['achieved'])} | {thr} | "
              f"{p.get('torch_mismatch_masked', '-')} / {p.get('torch_mismatch_compacted', '-')} "
              f"of {sum(p['achieved'])} |")
    print()
    print("| batch | profile | mode | samples/s | p50 ms | p99 ms | MMAC/sample | ideal | speedup "
          "| eff | PyTorch samples/s | ÷ PyTorch same mode | ÷ PyTorch best early-exit |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
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
        eff = None if c["mode"] == "full" else c["efficiency"]
        ideal = None if c["mode"] == "full" else c["ideal_speedup"]
        print(f"| {c['batch']} | {prof} | {c['mode']} | {c['samples_per_s']:.0f} | {c['p50_ms']:.2f} "
              f"| {c['p99_ms']:.2f} | {c['macs_per_sample'] / 1e6:.3f} | {num(ideal, '.2f')} "
              f"| {c['speedup']:.2f}x | {num(eff, '.2f')} | {num(ts, '.0f')} | {num(ratio, '.2f')} "
              f"| {num(ratio_best, '.2f')} |")
    print()


for path in sys.argv[1:]:
    table(path)
