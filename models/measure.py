#!/usr/bin/env python3
"""Measures a bundled model with `exitrt run` on its test split and prints
the README tables (Markdown): accuracy of every exit on every sample, the
result at the shipped thresholds, and a threshold sweep.

    /usr/bin/python3 models/measure.py build/exitrt models/fmnist-resnet [--update-readme]

With --update-readme the tables replace the text between the markers
<!-- exitrt tables begin --> and <!-- exitrt tables end --> in the model's
README.md, and the `exitrt calibrate` table (held-out accuracy, drop bound and
MACs for several accuracy targets) the text between <!-- exitrt calibrate
begin --> and <!-- exitrt calibrate end -->. Runs on the CPU backend (exit decisions and MACs do not depend on
the device; throughput is not reported here).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import sweep_values  # noqa: E402

BEGIN, END = "<!-- exitrt tables begin -->", "<!-- exitrt tables end -->"
CAL_BEGIN, CAL_END = "<!-- exitrt calibrate begin -->", "<!-- exitrt calibrate end -->"
DROPS = (0, 0.25, 0.5, 1, 2)


def run(exe, model_dir, thresholds, mode="compacted"):
    cmd = [exe, "run", model_dir, "--device", "cpu", "--threads", "1", "--mode", mode, "--json"]
    for name, v in thresholds.items():
        cmd += ["--threshold", f"{name}={v!r}"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr.decode()}{r.stdout.decode()}")
    return json.loads(r.stdout)


def forcing(exits, j):
    """Every sample to exit j (len(exits): the final head)."""
    out = {}
    for i, e in enumerate(exits):
        ent = e["policy"]["type"] == "entropy"
        if i < j:
            out[e["name"]] = 0.0 if ent else 1.0
        elif i == j:
            out[e["name"]] = 1000.0 if ent else 0.0
    return out


def tables(exe, model_dir):
    model = json.load(open(os.path.join(model_dir, "model.json")))
    exits = model["exits"]
    names = [e["name"] for e in exits] + [model["final"]["name"]]
    lines = []
    full = run(exe, model_dir, {}, mode="full")
    ver = subprocess.run([exe, "--version"], stdout=subprocess.PIPE,
                         check=False).stdout.decode().strip() or "exitrt"
    lines.append(f"Measured with `exitrt run {os.path.basename(model_dir)} --device cpu` "
                 f"({ver.replace('(', '').replace(')', '')}) on the "
                 f"{full['samples']:,} test images; the full network executes "
                 f"{full['macs_full'] // full['samples']:,} MACs per sample.\n")
    lines.append("**Every exit on every sample** (exits before it disabled, it always taken):\n")
    lines.append("| exit | after | policy | accuracy % |")
    lines.append("| --- | --- | --- | --- |")
    for j, n in enumerate(names):
        if j < len(exits):
            r = run(exe, model_dir, forcing(exits, j))
            if r["exits"][j]["taken"] != r["samples"]:
                # a max_prob/margin/confidence score of exactly 1.0 cannot be
                # kept from exiting at an earlier exit: say so
                note = (f" (of the {r['exits'][j]['taken']:,} samples that reach it: "
                        f"{r['samples'] - r['exits'][j]['taken']:,} leave earlier with a "
                        "score of exactly 1, which no threshold holds back)")
            else:
                note = ""
            lines.append(f"| {n} | {exits[j]['after']} | {exits[j]['policy']['type']} | "
                         f"{100 * r['exits'][j]['accuracy']:.2f}{note} |")
        else:
            lines.append(f"| {n} | (last layer) | - | {100 * full['accuracy']:.2f} |")
    shipped = run(exe, model_dir, {})
    lines.append("\n**At the shipped thresholds** (" +
                 ", ".join(f"{e['name']} {e['policy']['type']} {e['policy']['threshold']:g}"
                           for e in exits) + "):\n")
    lines.append("| exit | share % | accuracy of its samples % |")
    lines.append("| --- | --- | --- |")
    for e in shipped["exits"]:
        acc = "-" if e["taken"] == 0 else f"{100 * e['accuracy']:.2f}"
        lines.append(f"| {e['name']} | {100 * e['share']:.2f} | {acc} |")
    lines.append(f"\noverall accuracy **{100 * shipped['accuracy']:.2f}%** (final exit alone "
                 f"{100 * full['accuracy']:.2f}%), MACs executed **{shipped['macs_ratio']:.3f}** "
                 f"of the full network's (compute saved {100 * shipped['compute_saved']:.1f}%).\n")
    kinds = sorted({e["policy"]["type"] for e in exits})
    if len(kinds) == 1:
        lines.append(f"**Sweep** (one {kinds[0]} threshold for every early exit):\n")
        lines.append("| threshold | accuracy % | " + " | ".join(f"{n} %" for n in names) +
                     " | MACs / full |")
        lines.append("| --- " * (len(names) + 3) + "|")
        for t in sweep_values(kinds[0]):
            r = run(exe, model_dir, {e["name"]: t for e in exits})
            lines.append(f"| {t:g} | {100 * r['accuracy']:.2f} | " +
                         " | ".join(f"{100 * e['share']:.1f}" for e in r["exits"]) +
                         f" | {r['macs_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def calibrate_table(exe, model_dir, seed=0):
    """exitrt calibrate at each target in DROPS: held-out figures."""
    name = os.path.basename(os.path.normpath(model_dir))
    out = []
    for d in DROPS:
        cmd = [exe, "calibrate", model_dir, "--device", "cpu", "--threads", "1",
               "--max-drop", str(d), "--seed", str(seed), "--json"]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr.decode()}{r.stdout.decode()}")
        out.append((d, json.loads(r.stdout)))
    first = out[0][1]
    h, c = first["heldout"], first["calibration"]
    conf = h["confidence"]
    lines = [f"Measured with `exitrt calibrate {name} --max-drop D --seed {seed}` on the "
             f"{c['samples'] + h['samples']:,} test images: the thresholds are searched on "
             f"{c['samples']:,} of them and every figure below is on the other "
             f"{h['samples']:,}, which the search never saw. Drop = the final exit's "
             f"accuracy minus the early-exit run's, in points; the bound holds with "
             f"probability {conf:g} (one-sided Clopper-Pearson on the samples only one of "
             "the two gets right, `exitrt calibrate --help`).\n",
             "| D (points) | thresholds | accuracy % | final exit alone % | drop | "
             f"drop bound ({100 * conf:g}%) | MACs / full |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def row(label, thr, f):
        t = ", ".join(f"{k} {v:.4g}" for k, v in thr.items())
        return (f"| {label} | {t} | {100 * f['accuracy']:.2f} | {100 * f['accuracy_final']:.2f} "
                f"| {100 * f['drop']:.2f} | {100 * f['drop_upper']:.2f} | {f['macs_ratio']:.3f} |")
    for d, j in out:
        lines.append(row(f"{d:g}", j["thresholds"], j["heldout"]))
    lines.append(row("model.json", first["model_json"]["thresholds"], first["model_json"]))
    return "\n".join(lines) + "\n"


def replace_between(path, begin, end, text):
    readme = open(path).read()
    if begin not in readme:
        readme = readme.rstrip("\n") + f"\n\n## Thresholds from `exitrt calibrate`\n\n{begin}\n{end}\n"
    b, e = readme.index(begin) + len(begin), readme.index(end)
    open(path, "w").write(readme[:b] + "\n" + text + readme[e:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("exitrt")
    ap.add_argument("model_dir")
    ap.add_argument("--update-readme", action="store_true")
    a = ap.parse_args()
    exe = os.path.abspath(a.exitrt)
    text = tables(exe, a.model_dir)
    cal = calibrate_table(exe, a.model_dir)
    print(text)
    print(cal)
    if a.update_readme:
        path = os.path.join(a.model_dir, "README.md")
        replace_between(path, BEGIN, END, text)
        replace_between(path, CAL_BEGIN, CAL_END, cal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
