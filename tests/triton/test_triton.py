#!/usr/bin/env python3
"""exitrt served by Triton Inference Server, end to end.

Starts the tritonserver that the nvidia-pytriton wheel bundles (CPU only, on
127.0.0.1) with libtriton_exitrt.so and a temporary model repository built
from the config.pbtxt docs/SERVING.md shows: models/fmnist-mlp3 in modes
compacted, refill, full and masked, models/fmnist-resnet in compacted and
refill. Sends the Fashion-MNIST test images from 8 concurrent clients in
requests of random sizes (some asking for LOGITS) and checks every answer
against `exitrt run --predictions/--logits` with the same thresholds: exit
and class exactly, score to 1e-5 relative, logits to 1e-5 of the row's
scale. Then: each kind of bad request gets an error and the next request is
served; configs naming a missing model, a bad threshold or mismatched dims
leave that model UNAVAILABLE with one log line while the others serve; the
server's statistics and the exitrt metrics count what was sent; SIGTERM
shuts the server down cleanly (status 0, each instance logs its exit
counters, which match the answers).

Exit status 77 (skipped, with the reason) when tritonclient or the server
wheel is not installed (.ci/deps puts both into .venv).

usage: test_triton.py --exitrt EXITRT --backends DIR --source DIR --work DIR
                      [--limit N] [--seed S]
"""
import argparse
import csv
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CLIENTS = 8
MAX_ROWS = 64  # the documented config's max_batch_size
THRESHOLDS = {"fmnist-mlp3": "exit1=0.9,exit2=0.8", "fmnist-resnet": None}


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--exitrt", required=True)
    p.add_argument("--backends", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--limit", type=int, default=0, help="images per model (default all)")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg, flush=True)
    return cond


def reference(exitrt, model_dir, mode, thresholds, n, work, tag):
    """exitrt run's predictions and logits for the first n images."""
    pred, logits = os.path.join(work, f"{tag}.csv"), os.path.join(work, f"{tag}.npy")
    cmd = [exitrt, "run", model_dir, "--device", "cpu", "--mode", mode, "--limit", str(n),
           "--predictions", pred, "--logits", logits]
    for t in (thresholds or "").split(","):
        if t:
            cmd += ["--threshold", t]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    import numpy as np
    rows = list(csv.DictReader(open(pred)))
    return (np.array([int(r["exit"]) for r in rows], np.int32),
            np.array([int(r["class"]) for r in rows], np.int32),
            np.array([float(r["score"]) for r in rows], np.float64),
            np.load(logits))


def compare(name, ref, exits, classes, scores, logits, idx):
    """Checks answers at image indices idx against the reference."""
    import numpy as np
    rexit, rclass, rscore, rlogits = ref
    bad_e = np.nonzero(exits != rexit[idx])[0]
    bad_c = np.nonzero(classes != rclass[idx])[0]
    rs = rscore[idx]
    bad_s = np.nonzero(np.abs(scores - rs) > 1e-5 * np.maximum(np.abs(rs), 1e-6))[0]
    ok = check(len(bad_e) == 0, f"{name}: {len(bad_e)} exits differ from exitrt run "
               f"(first at image {idx[bad_e[0]] if len(bad_e) else -1})")
    ok &= check(len(bad_c) == 0, f"{name}: {len(bad_c)} classes differ from exitrt run")
    ok &= check(len(bad_s) == 0, f"{name}: {len(bad_s)} scores differ by more than 1e-5 relative")
    if logits is not None:
        li = [i for i, row in zip(idx, logits) if row is not None]
        got = np.array([row for row in logits if row is not None])
        if len(li):
            want = rlogits[li]
            scale = np.maximum(1.0, np.abs(want).max(axis=1, keepdims=True))
            worst = float((np.abs(got - want) / scale).max())
            ok &= check(worst <= 1e-5, f"{name}: logits differ by {worst:.2e} of the row's scale")
    return ok


def drive(url, model, x, sizes_rng, want_logits_every=3):
    """Sends images x from CLIENTS threads in requests of random sizes.
    Returns (requests sent, requests answered, exits, classes, scores,
    logits rows (None where not asked), errors)."""
    import numpy as np
    import tritonclient.http as http
    n = len(x)
    chunks, a = [], 0
    while a < n:
        b = min(n, a + int(sizes_rng.integers(1, MAX_ROWS + 1)))
        chunks.append((a, b))
        a = b
    order = sizes_rng.permutation(len(chunks))
    jobs = queue.Queue()
    for j, k in enumerate(order):
        jobs.put((j, chunks[k]))
    exits = np.full(n, -1, np.int32)
    classes = np.full(n, -1, np.int32)
    scores = np.full(n, np.nan, np.float64)
    logits = [None] * n
    counts = {"sent": 0, "answered": 0}
    errors = []
    lock = threading.Lock()

    def worker():
        client = http.InferenceServerClient(url, connection_timeout=60, network_timeout=120)
        try:
            while True:
                try:
                    j, (a, b) = jobs.get_nowait()
                except queue.Empty:
                    return
                inp = http.InferInput("INPUT", [b - a, 1, 28, 28], "FP32")
                inp.set_data_from_numpy(x[a:b])
                names = ["CLASS", "EXIT", "SCORE"]
                if j % want_logits_every == 0:
                    names.append("LOGITS")
                outs = [http.InferRequestedOutput(o) for o in names]
                with lock:
                    counts["sent"] += 1
                try:
                    r = client.infer(model, [inp], outputs=outs)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"{model} rows {a}..{b}: {e}")
                    continue
                c, e_, s = r.as_numpy("CLASS"), r.as_numpy("EXIT"), r.as_numpy("SCORE")
                lg = r.as_numpy("LOGITS")
                with lock:
                    counts["answered"] += 1
                    if c is None or c.shape != (b - a, 1) or e_.shape != (b - a, 1):
                        errors.append(f"{model} rows {a}..{b}: outputs of shape "
                                      f"{None if c is None else c.shape}")
                        continue
                    if ("LOGITS" in names) != (lg is not None):
                        errors.append(f"{model} rows {a}..{b}: LOGITS "
                                      f"{'missing' if lg is None else 'not asked for'}")
                    classes[a:b] = c[:, 0]
                    exits[a:b] = e_[:, 0]
                    scores[a:b] = s[:, 0]
                    if lg is not None:
                        for i in range(b - a):
                            logits[a + i] = lg[i]
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts["sent"], counts["answered"], exits, classes, scores, logits, errors


def bad_requests(url, model, x, ref, tally):
    """Each kind of bad request gets an error; a good one right after is
    served and right. Returns (sent, errors seen, good requests answered)."""
    import numpy as np
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException
    client = http.InferenceServerClient(url, connection_timeout=30, network_timeout=60)

    def inp(shape, dtype, name="INPUT"):
        i = http.InferInput(name, shape, {np.float32: "FP32", np.int32: "INT32",
                                          np.float64: "FP64"}[dtype])
        i.set_data_from_numpy(np.zeros(shape, dtype))
        return i

    def raw(body, headers):
        req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", body, headers)
        try:
            urllib.request.urlopen(req, timeout=30)
            return None
        except urllib.error.HTTPError as e:
            return e.read().decode(errors="replace")

    hdr = json.dumps({"inputs": [{"name": "INPUT", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                  "parameters": {"binary_data_size": 40}}]}).encode()
    cases = [
        ("wrong dtype", lambda: client.infer(model, [inp([2, 1, 28, 28], np.int32)]), "FP32"),
        ("wrong dtype FP64", lambda: client.infer(model, [inp([1, 1, 28, 28], np.float64)]),
         "FP32"),
        ("wrong shape", lambda: client.infer(model, [inp([2, 1, 28, 27], np.float32)]),
         "unexpected shape"),
        ("too many rows", lambda: client.infer(model, [inp([MAX_ROWS + 1, 1, 28, 28],
                                                           np.float32)]), "batch-size"),
        ("unknown input", lambda: client.infer(model, [inp([1, 1, 28, 28], np.float32, "IMG")]),
         "IMG"),
        ("unknown output", lambda: client.infer(model, [inp([1, 1, 28, 28], np.float32)],
                                                outputs=[http.InferRequestedOutput("PROBS")]),
         "PROBS"),
        ("short data", lambda: raw(hdr + b"\0" * 40, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(hdr))}), "byte size"),
    ]
    sent = errs = good = 0
    for k, (label, call, expect) in enumerate(cases):
        sent += 1
        msg = None
        try:
            r = call()
            msg = r if isinstance(r, str) else None
        except InferenceServerException as e:
            msg = e.message()
        if check(msg is not None and expect in msg,
                 f"{model}: {label}: expected an error naming '{expect}', got {msg!r}"):
            errs += 1
        # then a good request, alone (refill: its rows wait for the flusher)
        a, b = 100 + 3 * k, 103 + 3 * k
        gi = http.InferInput("INPUT", [b - a, 1, 28, 28], "FP32")
        gi.set_data_from_numpy(x[a:b])
        sent += 1
        t0 = time.time()
        try:
            r = client.infer(model, [gi])
        except InferenceServerException as e:
            check(False, f"{model}: after '{label}': a good request failed: {e}")
            continue
        dt = time.time() - t0
        check(dt < 5.0, f"{model}: after '{label}': a lone request took {dt:.1f} s")
        good += 1
        idx = np.arange(a, b)
        compare(f"{model} after '{label}'", ref, r.as_numpy("EXIT")[:, 0],
                r.as_numpy("CLASS")[:, 0], r.as_numpy("SCORE")[:, 0].astype(np.float64), None,
                idx)
        tally_add(tally, model, r.as_numpy("EXIT")[:, 0], requests=1)
    client.close()
    return sent, errs, good


def tally_add(tally, model, exits, requests):
    t = tally.setdefault(model, {"requests": 0, "rows": 0, "exits": {}})
    t["requests"] += requests
    t["rows"] += len(exits)
    for e in exits:
        t["exits"][int(e)] = t["exits"].get(int(e), 0) + 1


def main():
    args = parse_args()
    why = harness.ensure_client(args.source)
    if why:
        print("skipped:", why)
        return harness.SKIP
    binary, libs = harness.find_tritonserver()
    if binary is None:
        print("skipped:", libs)
        return harness.SKIP
    import numpy as np

    t_start = time.time()
    total_sent = total_answered = total_checked = 0
    bad_sent = bad_refused = good_after = 0
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    models_dir = os.path.join(args.source, "models")
    doc_config = harness.serving_config(args.source)

    # the served models: (name, exitrt model, mode)
    served = []
    for base in ("fmnist-mlp3", "fmnist-resnet"):
        modes = ("compacted", "refill", "full", "masked") if base == "fmnist-mlp3" \
            else ("compacted", "refill")
        for mode in modes:
            name = f"{base}-{mode}"
            mdir = os.path.join(models_dir, base)
            if base == "fmnist-mlp3":
                # the documented layout: the model's files in the version folder
                cfg = harness.variant(doc_config, name, mode,
                                      {"thresholds": THRESHOLDS[base]})
                harness.add_model(repo, name, cfg, mdir)
            else:
                # model_path: an absolute path to the model directory, no thresholds
                cfg = harness.variant(doc_config, name, mode, {"model_path": os.path.abspath(mdir),
                                                               "thresholds": ""})
                harness.add_model(repo, name, cfg)
            served.append((name, base, mode))
    # the documented config itself, unchanged
    harness.add_model(repo, "fmnist-mlp3", doc_config, os.path.join(models_dir, "fmnist-mlp3"))
    # configs that must not load
    mlp = os.path.join(models_dir, "fmnist-mlp3")
    harness.add_model(repo, "bad-missing", harness.variant(
        doc_config, "bad-missing", params={"model_path": "no-such-model"}))
    harness.add_model(repo, "bad-threshold", harness.variant(
        doc_config, "bad-threshold", params={"thresholds": "exit1=1.5"}), mlp)
    harness.add_model(repo, "bad-exit", harness.variant(
        doc_config, "bad-exit", params={"thresholds": "exit7=0.5"}), mlp)
    harness.add_model(repo, "bad-dims", harness.variant(
        doc_config, "bad-dims", replace={"dims: [ 1, 28, 28 ]": "dims: [ 1, 28, 27 ]"}), mlp)
    harness.add_model(repo, "bad-mode", harness.variant(doc_config, "bad-mode",
                                                        params={"mode": "eager"}), mlp)

    # the images and exitrt run's answers
    x_all = harness.load_idx_images(harness.sample_data(mlp))
    n = min(len(x_all), args.limit) if args.limit > 0 else len(x_all)
    x = np.ascontiguousarray(x_all[:n])
    refs = {}
    for name, base, mode in served:
        key = (base, mode)
        if key not in refs:
            refs[key] = reference(args.exitrt, os.path.join(models_dir, base), mode,
                                  THRESHOLDS[base], n, work, f"ref-{base}-{mode}")
    refs_doc = refs[("fmnist-mlp3", "compacted")]
    print(f"references from exitrt run: {len(refs)} ({time.time() - t_start:.1f} s)", flush=True)

    log_path = os.path.join(work, "tritonserver.log")
    server = harness.Server(binary, libs, repo, os.path.abspath(args.backends), log_path,
                            [m for m, _, _ in served] + ["fmnist-mlp3"])
    tally = {}
    try:
        t_ready = server.wait_ready()
        print(f"tritonserver ready in {t_ready:.1f} s on {server.url}", flush=True)
        rng = np.random.default_rng(args.seed)
        for name, base, mode in served + [("fmnist-mlp3", "fmnist-mlp3", "compacted")]:
            t0 = time.time()
            sent, answered, exits, classes, scores, logits, errors = drive(server.url, name, x,
                                                                           rng)
            dt = time.time() - t0
            check(not errors, f"{name}: {len(errors)} failed requests, first: "
                              f"{errors[0] if errors else ''}")
            check(sent == answered, f"{name}: {sent} requests sent, {answered} answered")
            missing = int((exits < 0).sum())
            check(missing == 0, f"{name}: {missing} images without an answer")
            ok = compare(name, refs[(base, mode)], exits, classes, scores, logits,
                         np.arange(n))
            nlog = sum(1 for r in logits if r is not None)
            print(f"{name}: {sent} requests, {answered} answered, {n} images "
                  f"({nlog} with logits) {'match' if ok else 'DIFFER FROM'} exitrt run "
                  f"({n / dt:.0f} images/s)", flush=True)
            total_sent += sent
            total_answered += answered
            total_checked += n if ok else 0
            tally_add(tally, name, exits, requests=answered)

        # bad requests, on a batch mode and on refill
        for name in ("fmnist-mlp3-compacted", "fmnist-mlp3-refill"):
            sent, errs, good = bad_requests(server.url, name, x, refs_doc, tally)
            print(f"{name}: {errs} bad requests refused with the expected error, {good} good "
                  f"requests after them served", flush=True)
            bad_sent += sent - good
            bad_refused += errs
            good_after += good

        # configs that must not load: the error names the problem; the rest serve on
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException
        client = http.InferenceServerClient(server.url)
        expect = {"bad-missing": "no-such-model", "bad-threshold": "out of range",
                  "bad-exit": "exit7", "bad-dims": "do not match", "bad-mode": "eager"}
        for bad, text in expect.items():
            try:
                client.load_model(bad)
                check(False, f"{bad}: loaded")
            except InferenceServerException as e:
                check(text in e.message() and "exitrt" in e.message(),
                      f"{bad}: load error does not name '{text}': {e.message()}")
            check(not client.is_model_ready(bad), f"{bad}: ready")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        for bad in expect:
            check(index.get(bad, {}).get("state") == "UNAVAILABLE",
                  f"{bad}: state {index.get(bad)}")
        log = server.log_text()
        for bad, text in expect.items():
            lines = [ln for ln in log.splitlines() if f"failed to load '{bad}' version" in ln]
            check(len(lines) == 1 and text in lines[0],
                  f"{bad}: expected one log line naming '{text}', got {lines}")
        for name, _, _ in served:
            check(client.is_model_ready(name), f"{name}: not ready after the bad loads")
        sent, errs, good = bad_requests(server.url, "fmnist-mlp3-refill", x, refs_doc, tally)
        bad_sent += sent - good
        bad_refused += errs
        good_after += good
        print(f"bad configs: {len(expect)} refused (UNAVAILABLE, one log line each); the "
              f"others still serve", flush=True)

        # statistics: every answered request counted
        for name in tally:
            st = client.get_inference_statistics(name)["model_stats"][0]
            inf = st["inference_stats"]
            check(int(inf["success"]["count"]) == tally[name]["requests"],
                  f"{name}: statistics count {inf['success']['count']} successes, "
                  f"{tally[name]['requests']} answered")
            check(int(st["inference_count"]) == tally[name]["rows"],
                  f"{name}: statistics count {st['inference_count']} rows, "
                  f"{tally[name]['rows']} answered")
            check(int(st["execution_count"]) >= 1 and st.get("batch_stats"),
                  f"{name}: no batch statistics")
        # exit counters as metrics
        metrics = server.metrics()
        for name, t in tally.items():
            base = "fmnist-mlp3" if "mlp3" in name else "fmnist-resnet"
            names = ["exit1", "exit2", "final"] if base == "fmnist-mlp3" else None
            got = {}
            for ln in metrics.splitlines():
                if ln.startswith("exitrt_exit_samples_total{") and f'model="{name}"' in ln:
                    ex = ln.split('exit="')[1].split('"')[0]
                    got[ex] = got.get(ex, 0) + int(float(ln.rsplit(" ", 1)[1]))
            if names:
                want = {names[e]: c for e, c in t["exits"].items()}
                check(all(got.get(k, 0) == v for k, v in want.items()) and
                      sum(got.values()) == t["rows"],
                      f"{name}: metrics count exits {got}, answers {want}")
            else:
                check(sum(got.values()) == t["rows"], f"{name}: metrics count "
                      f"{sum(got.values())} samples, {t['rows']} answered")
        client.close()
    finally:
        rc = server.stop()
    log = server.log_text()
    check(rc == 0, f"tritonserver exited with {rc} after SIGTERM")
    for bad in ("Signal (11)", "Signal (6)", "Segmentation fault", "Aborted", "double free",
                "corrupted", "terminate called"):
        check(bad not in log, f"the server log has '{bad}'")
    # each instance's exit counters, logged at shutdown, match the answers
    for name, t in tally.items():
        lines = [ln for ln in log.splitlines() if f"exitrt: instance {name}_0_0:" in ln]
        if not check(len(lines) == 1, f"{name}: {len(lines)} counter lines at shutdown"):
            continue
        ln = lines[0]
        check(f" {t['rows']} samples" in ln,
              f"{name}: the counters line does not count {t['rows']} samples: {ln}")
        check("MACs executed" in ln, f"{name}: no MACs in the counters line: {ln}")
        if "mlp3" in name:
            names = ["exit1", "exit2", "final"]
            for e, c in t["exits"].items():
                check(f"{names[e]} {c} (" in ln,
                      f"{name}: the counters line does not count {c} at {names[e]}: {ln}")
    print(f"shutdown: status {rc}, counters logged for {len(tally)} instances", flush=True)
    print(f"load: {total_sent} requests sent from {CLIENTS} clients, {total_answered} answered, "
          f"{total_checked} images checked against exitrt run; bad requests: {bad_sent} sent, "
          f"{bad_refused} refused with the expected error, {good_after} good ones after them "
          f"answered and checked; {time.time() - t_start:.0f} s")
    if failures:
        print(f"{len(failures)} checks failed; server log: {log_path}")
        return 1
    print("triton: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
