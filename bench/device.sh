#!/usr/bin/env bash
# device.sh - the whole GPU check, run ON THE LENT GPU MACHINE from the repo
# root, after bench/device-pack.sh ran here and with .devlibs carried:
#
#   run(command="bench/device.sh", carry=[".devlibs"], timeout_s=600)
#   run(command="STEPS='tests cli' bench/device.sh", carry=[".devlibs"])
#
# Steps (STEPS, default all of them, in this order):
#   env       nvidia-smi, driver, nvcc, the cuDNN/cuBLAS libraries found
#   tests     test_gpu (the backend tests on the CUDA backend) and test_cpu
#   memcheck  compute-sanitizer memcheck (+ leak check) on test_gpu
#   racecheck compute-sanitizer racecheck on test_gpu (shared memory: the
#             exit kernel's warp-total scan)
#   cli       per bundled model (models/*/model.json): exitrt run --device cpu
#             and --device cuda in each mode; predictions must match (exit and
#             class exactly, score to 1e-4); host waits from the JSON report.
#             Mode "compacted-graphs" is COMPACTED with ERT_GRAPH_BUCKETS=8
#             (size-bucketed CUDA graphs, src/cuda/graph.c): host waits 0
#   graphs    the whole test_gpu suite again with ERT_GRAPH_BUCKETS=8, so
#             every COMPACTED engine of the mode tests runs through the
#             bucketed graphs (test_graphs.c runs in `tests` either way), and
#             compute-sanitizer memcheck on the graph tests alone
#   benchg    per bundled model: exitrt bench --device cuda, once wait-based
#             (--graph-buckets 0) and once bucketed (--graph-buckets 8),
#             batches BENCH_BATCHES (default 1,8,64,256,1024), JSON to the logs
#             and a side-by-side table of COMPACTED samples/s and host waits
#             in the summary (issue 7's measurement)
# Each step has its own time limit (seconds: T_TESTS, T_MEMCHECK, T_RACECHECK,
# T_CLI, T_GRAPHS, T_BENCHG) so the whole stays inside one 10-minute device
# call (when it would not, split it: STEPS='env tests' then STEPS='graphs
# benchg'); FILTER narrows the sanitizer runs (a Criterion --filter, default:
# all tests).
#
# Output in $OUT (at most 8 files come back): summary.txt (one line per
# check: PASS / FAIL / SKIP and why) and logs.tgz (every log).
#
# Findings from GPU runs: none yet -- written without a GPU; the first GPU
# session runs it and records here what it saw (versions, failures, fixes).
# Things to look at first on that run:
#   - whether the binaries built against cuDNN 9.19 / CUDA 13.0 here load with
#     the machine's pip cuDNN/cuBLAS (ldd on .devlibs/bin/test_gpu, env.txt)
#   - cudnnConvolutionBiasActivationForward with z = y and alpha2 = 0 on
#     uninitialised (possibly NaN) y: results must not be NaN (tests nonfinite)
#   - the algorithm chosen per conv (FMA math, no TF32) and the workspace
#   - host waits: MASKED 0, COMPACTED <= early exits per batch (cli step);
#     compacted-graphs 0 (if not 0, the graphs fell back: ert_engine_note()
#     says why -- the graphs tests print it when they fail)
set -uo pipefail

root=$PWD
out=${OUT:-$root/device-out}
mkdir -p "$out"
logs=$(mktemp -d)
summary=$out/summary.txt
: >"$summary"
steps=${STEPS:-env tests memcheck racecheck cli graphs benchg}
filter=${FILTER:-}
dl=$root/.devlibs
bin=$dl/bin

note() { echo "$*" | tee -a "$summary"; }
has_step() { case " $steps " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
finish() {
    (cd "$logs" && tar czf "$out/logs.tgz" .) 2>/dev/null
    rm -rf "$logs"
}
trap finish EXIT

if [ ! -x "$bin/test_gpu" ]; then
    note "FAIL setup: .devlibs/bin/test_gpu missing: run bench/device-pack.sh here and carry .devlibs"
    exit 1
fi
note "commit $(cat "$dl/commit" 2>/dev/null) (tree status at pack time in logs: tree-status)"
cp "$dl/tree-status" "$logs/" 2>/dev/null

# ---- libraries: the carried small ones, then the machine's CUDA ones ----------------
libpath=$dl/lib
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)
if [ -n "$site" ]; then
    for d in $(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | sort); do
        libpath=$libpath:$d
    done
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do
    [ -d "$d" ] && libpath=$libpath:$d
done
export LD_LIBRARY_PATH=$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# The tests open models and fixtures under the source and build paths compiled
# into them: point those paths at this checkout.
while read -r kind path; do
    [ -n "$path" ] || continue
    if [ "$kind" = source ] && [ ! -e "$path" ]; then
        mkdir -p "$(dirname "$path")" && ln -s "$root" "$path"
    elif [ "$kind" = build ] && [ ! -e "$path" ]; then
        mkdir -p "$path"
    fi
done <"$dl/paths"

# ---- env ----------------------------------------------------------------------------
if has_step env; then
    {
        echo "== nvidia-smi"; nvidia-smi
        echo "== nvcc"; nvcc --version
        echo "== compute-sanitizer"; compute-sanitizer --version
        echo "== LD_LIBRARY_PATH"; echo "$LD_LIBRARY_PATH" | tr ':' '\n'
        echo "== cuDNN / cuBLAS / cudart found"
        for d in $(echo "$LD_LIBRARY_PATH" | tr ':' ' '); do
            ls "$d" 2>/dev/null | grep -E '^lib(cudnn|cublas|cudart)' | sed "s|^|$d/|"
        done
        echo "== ldd test_gpu"; ldd "$bin/test_gpu"
        echo "== torch"; python3 -c 'import torch; print(torch.__version__, "cudnn", torch.backends.cudnn.version(), "cuda", torch.version.cuda)'
    } >"$logs/env.txt" 2>&1
    gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
    note "env: ${gpu:-no nvidia-smi output}"
    if ldd "$bin/test_gpu" | grep -q 'not found'; then
        note "FAIL env: unresolved libraries: $(ldd "$bin/test_gpu" | grep 'not found' | tr '\n' ' ')"
    fi
fi

# Runs a command with a time limit, its output to a log; notes PASS/FAIL/SKIP.
step() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    case $rc in
    0) note "PASS $name" ;;
    77) note "SKIP $name (exit 77: no CUDA device seen)" ;;
    124) note "FAIL $name: timed out after ${limit}s" ;;
    *) note "FAIL $name: exit $rc (last lines: $(tail -3 "$logs/$name.log" | tr '\n' ' '))" ;;
    esac
    grep -E 'Synthesis|ERROR SUMMARY|RACECHECK SUMMARY' "$logs/$name.log" | sed "s/^/    $name: /" >>"$summary"
    return 0
}

crit_filter=()
[ -n "$filter" ] && crit_filter=(--filter "$filter")

if has_step tests; then
    step test_gpu "${T_TESTS:-150}" "$bin/test_gpu" --jobs 1 --verbose
    step test_cpu "${T_TESTS:-150}" "$bin/test_cpu" --jobs 4
fi
# Criterion forks a process per test: the sanitizer must follow children.
if has_step memcheck; then
    step memcheck "${T_MEMCHECK:-200}" compute-sanitizer --tool memcheck --leak-check full \
        --target-processes all --error-exitcode 99 "$bin/test_gpu" --jobs 1 "${crit_filter[@]}"
fi
if has_step racecheck; then
    step racecheck "${T_RACECHECK:-150}" compute-sanitizer --tool racecheck --racecheck-report all \
        --target-processes all --error-exitcode 99 "$bin/test_gpu" --jobs 1 "${crit_filter[@]}"
fi

# ---- cli: CPU vs CUDA predictions on the bundled models --------------------------------
if has_step cli; then
    found=0
    for mj in models/*/model.json; do
        [ -e "$mj" ] || continue
        found=1
        m=$(dirname "$mj")
        name=$(basename "$m")
        for mode in full masked compacted compacted-graphs; do
            gb=0
            cmode=$mode
            [ "$mode" = compacted-graphs ] && { gb=8; cmode=compacted; }
            for dev in cpu cuda; do
                ERT_GRAPH_BUCKETS=$gb timeout "${T_CLI:-60}" "$bin/exitrt" run "$m" --device "$dev" \
                    --mode "$cmode" --json \
                    --predictions "$logs/$name-$mode-$dev.csv" >"$logs/$name-$mode-$dev.json" \
                    2>"$logs/$name-$mode-$dev.err"
                rc=$?
                [ $rc -eq 0 ] || note "FAIL cli $name $mode $dev: exit $rc ($(head -c 300 "$logs/$name-$mode-$dev.err"))"
            done
            python3 - "$logs/$name-$mode-cpu.csv" "$logs/$name-$mode-cuda.csv" \
                "$logs/$name-$mode-cuda.json" "$name $mode" >>"$summary" 2>&1 <<'PY'
import csv, json, sys
a, b, rep, what = sys.argv[1:5]
try:
    ra = list(csv.DictReader(open(a)))
    rb = list(csv.DictReader(open(b)))
except OSError as e:
    print(f"FAIL cli {what}: {e}")
    sys.exit(0)
if len(ra) != len(rb):
    print(f"FAIL cli {what}: {len(ra)} cpu rows, {len(rb)} cuda rows")
    sys.exit(0)
diff = [i for i, (x, y) in enumerate(zip(ra, rb))
        if x["exit"] != y["exit"] or x["class"] != y["class"]]
sd = max((abs(float(x["score"]) - float(y["score"])) for x, y in zip(ra, rb)
          if x["exit"] == y["exit"]), default=0.0)
waits = ""
try:
    j = json.load(open(rep))
    def find(o, key):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == key:
                    yield v
                yield from find(v, key)
        elif isinstance(o, list):
            for v in o:
                yield from find(v, key)
    waits = " host_waits " + ",".join(str(v) for v in find(j, "host_waits"))
except Exception as e:
    waits = f" (no JSON report: {e})"
ok = not diff and sd <= 1e-4
print(f"{'PASS' if ok else 'FAIL'} cli {what}: {len(ra)} rows, {len(diff)} exit/class "
      f"differences (first {diff[:5]}), max score difference {sd:.3g}{waits}")
PY
        done
    done
    [ $found -eq 1 ] || note "SKIP cli: no models/*/model.json in this checkout"
fi

# ---- graphs: the suite through the bucketed graphs --------------------------------------
if has_step graphs; then
    ERT_GRAPH_BUCKETS=8 step test_gpu-graphs8 "${T_GRAPHS:-150}" "$bin/test_gpu" --jobs 1 --verbose
    step memcheck-graphs "${T_GRAPHS:-150}" compute-sanitizer --tool memcheck --leak-check full \
        --target-processes all --error-exitcode 99 "$bin/test_gpu" --jobs 1 --filter 'graphs/*'
fi

# ---- benchg: bucketed vs wait-based COMPACTED, same call, same inputs ---------------------
if has_step benchg; then
    found=0
    for mj in models/*/model.json; do
        [ -e "$mj" ] || continue
        found=1
        m=$(dirname "$mj")
        name=$(basename "$m")
        for gb in 0 8; do
            timeout "${T_BENCHG:-120}" "$bin/exitrt" bench "$m" --device cuda --graph-buckets "$gb" \
                --batches "${BENCH_BATCHES:-1,8,64,256,1024}" --reps 3 --warmup 2 \
                --json "$logs/bench-$name-graphs$gb.json" >"$logs/bench-$name-graphs$gb.txt" 2>&1
            rc=$?
            [ $rc -eq 0 ] || note "FAIL benchg $name graphs=$gb: exit $rc ($(tail -2 "$logs/bench-$name-graphs$gb.txt" | tr '\n' ' '))"
        done
        python3 - "$logs/bench-$name-graphs0.json" "$logs/bench-$name-graphs8.json" "$name" \
            >>"$summary" 2>&1 <<'PY'
import json, sys
a, b, name = sys.argv[1:4]
def cells(path):
    # schema: bench/README.md; keep what is there, never fail the run on it
    try:
        j = json.load(open(path))
    except Exception as e:
        print(f"SKIP benchg {name}: {path}: {e}")
        return {}
    out = {}
    def walk(o):
        if isinstance(o, dict):
            if str(o.get("mode", "")).lower() == "compacted" and "batch" in o:
                key = (o.get("backend"), o.get("profile"), o.get("batch"))
                out[key] = o
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(j)
    return out
wa, gr = cells(a), cells(b)
def get(o, *names):
    for n in names:
        if n in o:
            return o[n]
    return None
for key in sorted(set(wa) & set(gr), key=lambda k: (str(k[1]), k[2] or 0)):
    x, y = wa[key], gr[key]
    sx = get(x, "samples_per_s"); sy = get(y, "samples_per_s")
    hx = get(x, "host_waits_per_batch"); hy = get(y, "host_waits_per_batch")
    ex = get(x, "efficiency"); ey = get(y, "efficiency")
    ratio = f"{sy / sx:.2f}x" if sx and sy else "?"
    print(f"INFO benchg {name} {key[0]} profile {key[1]} batch {key[2]}: COMPACTED wait-based "
          f"{sx} samples/s (eff {ex}, {hx} waits/batch), bucketed {sy} samples/s (eff {ey}, "
          f"{hy} waits/batch): {ratio}")
if not (set(wa) & set(gr)):
    print(f"SKIP benchg {name}: no COMPACTED cells found in the two JSON files (schema?)")
PY
    done
    [ $found -eq 1 ] || note "SKIP benchg: no models/*/model.json in this checkout"
fi
note "done"
