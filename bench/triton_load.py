#!/usr/bin/env python3
"""Load figures for exitrt served by Triton Inference Server.

Starts the tritonserver that .ci/deps installs into .venv (nvidia-pytriton)
with libtriton_exitrt.so and the config.pbtxt docs/SERVING.md shows (one CPU
instance, threads 2, max_batch_size 64, dynamic batching), one model per
(model, mode). For each cell (model, mode, concurrency) C closed-loop
clients send requests of --rows Fashion-MNIST test images for --seconds
and the cell reports images/s and the p50/p99 request latency seen by the
clients. Beside each model, `exitrt run MODEL --device cpu --batch 64
--threads 2` on the same machine (best of --run-reps), in the same mode.

The clients run in this machine's Python (tritonclient over HTTP, in
min(C, 2) processes of threads) and share the cores with the server: on a
small machine they take part of the CPU the server could use, which the
figures include.

--layouts COUNTxTHREADS,... serves each model in several instance layouts
(instance_group count x the threads parameter; default 1x2, the documented
config), side by side in the same server.

usage: bench/triton_load.py [--build build] [--seconds 5] [--rows 16]
                            [--concurrency 1,8,32] [--models fmnist-mlp3,fmnist-resnet]
                            [--modes compacted,refill] [--layouts 1x2,2x1] [--json FILE]
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE, "tests", "triton"))
import harness  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.path.join(SOURCE, "build"))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rows", type=int, default=16, help="images per request")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--models", default="fmnist-mlp3,fmnist-resnet")
    p.add_argument("--modes", default="compacted,refill")
    p.add_argument("--layouts", default="1x2",
                   help="instance layouts COUNTxTHREADS, comma separated")
    p.add_argument("--run-reps", type=int, default=3)
    p.add_argument("--json")
    return p.parse_args()


def client_proc(url, model, rows, threads, seconds, start_at, q):
    """threads closed-loop clients until start_at + seconds: (images,
    latencies of the requests that started in the window)."""
    import threading
    import numpy as np
    import tritonclient.http as http
    x = harness.load_idx_images(harness.sample_data(os.path.join(SOURCE, "models",
                                                                 "fmnist-mlp3")))
    lat, counts, errors = [], [0], []
    lock = threading.Lock()

    def worker(k):
        client = http.InferenceServerClient(url, connection_timeout=60, network_timeout=120)
        outs = [http.InferRequestedOutput(o) for o in ("CLASS", "EXIT", "SCORE")]
        i = (k * 997 * rows) % (len(x) - rows)
        mine, n = [], 0
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        while True:
            t0 = time.time()
            if t0 >= end:
                break
            inp = http.InferInput("INPUT", [rows, 1, 28, 28], "FP32")
            inp.set_data_from_numpy(x[i:i + rows])
            try:
                client.infer(model, [inp], outputs=outs)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
                break
            t1 = time.time()
            if t1 <= end:
                mine.append(t1 - t0)
                n += rows
            i = (i + rows) % (len(x) - rows)
        client.close()
        with lock:
            lat.extend(mine)
            counts[0] += n

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put((counts[0], lat, errors))


def cpu_seconds(pid):
    """user + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cell(url, model, rows, conc, seconds, server_pid=None):
    procs = min(conc, 2)
    per = [conc // procs + (1 if k < conc % procs else 0) for k in range(procs)]
    q = mp.Queue()
    start_at = time.time() + 1.5  # the processes load the images first
    ps = [mp.Process(target=client_proc, args=(url, model, rows, t, seconds, start_at, q))
          for t in per]
    for p in ps:
        p.start()
    cpu0 = None
    if server_pid:
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = cpu_seconds(server_pid)
        time.sleep(seconds)
        cpu1 = cpu_seconds(server_pid)
    images, lat, errors = 0, [], []
    for _ in ps:
        n, la, er = q.get()
        images += n
        lat += la
        errors += er
    for p in ps:
        p.join()
    lat.sort()

    def pct(p):
        return 1e3 * lat[min(len(lat) - 1, max(0, int(round(p * len(lat))) - 1))] if lat else None
    return {"images_per_s": images / seconds, "requests": len(lat), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "errors": errors[:3],
            # the server's share of the machine's CPU time during the cell
            "server_cpu_share": (cpu1 - cpu0) / (seconds * os.cpu_count())
            if cpu0 is not None else None}


def exitrt_run(exitrt, model, mode, reps):
    best = 0.0
    for _ in range(reps):
        out = subprocess.run([exitrt, "run", os.path.join(SOURCE, "models", model), "--device",
                              "cpu", "--mode", mode, "--batch", "64", "--threads", "2", "--json"],
                             check=True, capture_output=True, text=True).stdout
        best = max(best, json.loads(out)["samples_per_s"])
    return best


def main():
    args = parse_args()
    why = harness.ensure_client(SOURCE)
    if why:
        sys.exit(f"triton_load: {why}")
    binary, libs = harness.find_tritonserver()
    if binary is None:
        sys.exit(f"triton_load: {libs}")
    exitrt = os.path.join(args.build, "exitrt")
    backends = os.path.join(args.build, "triton", "backends")
    models = args.models.split(",")
    modes = args.modes.split(",")
    concs = [int(c) for c in args.concurrency.split(",")]
    work = tempfile.mkdtemp(prefix="exitrt-triton-load-")
    repo = os.path.join(work, "repo")
    doc = harness.serving_config(SOURCE)
    layouts = [tuple(int(v) for v in lay.split("x")) for lay in args.layouts.split(",")]
    documented = "instance_group [ { kind: KIND_CPU, count: 1 } ]"
    names = []
    for m in models:
        for mode in modes:
            for count, threads in layouts:
                name = f"{m}-{mode}-{count}x{threads}"
                # the model's own thresholds, like exitrt run without --threshold
                config = harness.variant(
                    doc, name, mode, {"thresholds": "", "threads": str(threads)},
                    {documented: f"instance_group [ {{ kind: KIND_CPU, count: {count} }} ]"})
                harness.add_model(repo, name, config, os.path.join(SOURCE, "models", m))
                names.append(name)
    server = harness.Server(binary, libs, repo, backends, os.path.join(work, "server.log"), names)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "commit": subprocess.run(["git", "-C", SOURCE, "describe", "--always", "--dirty",
                                         "--abbrev=12"], capture_output=True,
                                        text=True).stdout.strip(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
                          f"load average {os.getloadavg()[0]:.1f} at start",
               "rows_per_request": args.rows, "seconds_per_cell": args.seconds, "cells": []}
    try:
        server.wait_ready()
        import importlib.metadata as md
        results["tritonclient"] = md.version("tritonclient")
        results["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(default)")
        for m in models:
            for mode in modes:
                ref = exitrt_run(exitrt, m, mode, args.run_reps)
                for c in concs:
                    # the layouts of one cell back to back, so they see the same machine
                    for count, threads in layouts:
                        name = f"{m}-{mode}-{count}x{threads}"
                        if c == concs[0]:
                            cell(server.url, name, args.rows, 4, 1.0)  # warm up
                        r = cell(server.url, name, args.rows, c, args.seconds, server.proc.pid)
                        r.update(model=m, mode=mode, concurrency=c, instances=count,
                                 threads=threads, exitrt_run_images_per_s=ref,
                                 ratio=r["images_per_s"] / ref)
                        results["cells"].append(r)
                        print(f"{m:14} {mode:9} {count}x{threads} C={c:<3} "
                              f"{r['images_per_s']:8.0f} img/s  "
                              f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                              f"exitrt run {ref:8.0f} img/s  ({100 * r['ratio']:.0f}%)  "
                              f"server CPU {100 * r['server_cpu_share']:.0f}%"
                              f"{'  errors: ' + str(r['errors']) if r['errors'] else ''}",
                              flush=True)
    finally:
        rc = server.stop()
        results["server_exit"] = rc
        results["load_average_end"] = os.getloadavg()[0]
    ver = [ln for ln in server.log_text().splitlines() if "server_version" in ln]
    results["tritonserver"] = ver[0].split("|")[2].strip() if ver else "?"
    print(f"tritonserver {results['tritonserver']}, exit status {rc}; load average "
          f"{results['load_average_end']:.1f} at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
