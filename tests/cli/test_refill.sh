#!/usr/bin/env bash
# test_refill.sh - `exitrt run --mode refill` end to end (run by CTest).
#
#   test_refill.sh EXITRT MAKE_MODEL WORKDIR [SOURCE_DIR]
#
# On random models (cli_make_model) and, with SOURCE_DIR, the trained models
# under SOURCE_DIR/models/fmnist-* when they are there: refill's predictions
# CSV and logits .npy equal MASKED's byte for byte on the CPU (the CPU
# backend is batch-invariant, so a sample's numbers do not depend on the
# rows it ran beside), whatever the batch, deadline and schedule; the report
# names the mode and gives latency percentiles, as text and as JSON; the
# refill-only options are usage errors without --mode refill.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

EXITRT=$1
MAKE_MODEL=$2
W=$3
SRC=${4:-}

# shellcheck source=tests/cli/lib.sh
. "$HERE/lib.sh"

run_ok() { # run_ok CMD... : expect_status 0
    expect_status 0 "$@"
}

# same_as_masked MODEL NAME BATCH ARGS... : refill at BATCH with ARGS against
# MASKED and COMPACTED at the same batch (all three with the options in the
# COMMON array): predictions and logits byte for byte, and the same report
# figures (exits, accuracy; MACs equal to COMPACTED's)
COMMON=()
same_as_masked() {
    local m=$1 name=$2 batch=$3
    shift 3
    run_ok "$EXITRT" run "$m" --device cpu --mode masked --batch "$batch" ${COMMON[@]+"${COMMON[@]}"} \
        --predictions "$W/$name.masked.csv" --logits "$W/$name.masked.npy" --json
    cp "$W/out" "$W/$name.masked.json"
    run_ok "$EXITRT" run "$m" --device cpu --mode compacted --batch "$batch" \
        ${COMMON[@]+"${COMMON[@]}"} --json
    cp "$W/out" "$W/$name.compacted.json"
    run_ok "$EXITRT" run "$m" --device cpu --mode refill --batch "$batch" ${COMMON[@]+"${COMMON[@]}"} "$@" \
        --predictions "$W/$name.refill.csv" --logits "$W/$name.refill.npy" --json
    cp "$W/out" "$W/$name.refill.json"
    # byte for byte where the CPU backend is batch-invariant (its note says
    # so: src/cpu/cpu_ops.h, src/cpu/dnnl.h), else to float rounding
    local exact
    exact=$(json_get "$W/$name.masked.json" 'int(j["engine_note"].endswith("the modes agree bit for bit"))')
    python3 "$HERE/same_predictions.py" "$W/$name.masked.csv" "$W/$name.refill.csv" "$exact" ||
        fail "$name ($*): refill's predictions differ from MASKED's"
    [ "$exact" = 0 ] || cmp -s "$W/$name.masked.npy" "$W/$name.refill.npy" ||
        fail "$name ($*): refill's logits differ from MASKED's"
    local r=$W/$name.refill.json q=$W/$name.masked.json c=$W/$name.compacted.json
    [ "$(json_get "$r" 'j["mode"]')" = refill ] || fail "$name: JSON mode is not refill"
    # (exact figures need exact exits: see above)
    [ "$exact" = 0 ] || [ "$(json_get "$r" '[e["taken"] for e in j["exits"]]')" = \
      "$(json_get "$q" '[e["taken"] for e in j["exits"]]')" ] || fail "$name: exit counts differ"
    [ "$exact" = 0 ] || [ "$(json_get "$r" 'j["accuracy"]')" = "$(json_get "$q" 'j["accuracy"]')" ] ||
        fail "$name: accuracy differs"
    # refill runs each sample through the stages it needs, as COMPACTED does
    [ "$exact" = 0 ] ||
        [ "$(json_get "$r" 'j["macs_executed"]')" = "$(json_get "$c" 'j["macs_executed"]')" ] ||
        fail "$name: refill MACs differ from COMPACTED's"
    [ "$(json_get "$r" '0 <= j["latency_p50_ms"] <= j["latency_p99_ms"]')" = True ] ||
        fail "$name: latency percentiles"
    [ "$(json_get "$r" 'j["samples_per_s"] > 0')" = True ] || fail "$name: throughput"
    checks=$((checks + 1))
}

N=300
for kind in mlp cnn resnet; do
    "$MAKE_MODEL" "$W/$kind" "$kind" 11 "$N"
done

for kind in mlp cnn resnet; do
    M=$W/$kind
    same_as_masked "$M" "$kind-b64" 64
    same_as_masked "$M" "$kind-b7-shallow" 7 --schedule shallowest
    same_as_masked "$M" "$kind-b32-d0" 32 --deadline 0
    same_as_masked "$M" "$kind-b1" 1 --deadline 0.5
done

# the text report
run_ok "$EXITRT" run "$W/resnet" --device cpu --mode refill --batch 16
for word in 'mode refill' 'latency ' 'p50' 'p99' 'samples/s' MACs; do
    grep -q -- "$word" "$W/out" || fail "text report lacks '$word'"
done

# refill-only options without --mode refill, and bad values: usage errors
for args in "--deadline 1" "--schedule deepest" "--mode refill --deadline -1" \
    "--mode refill --deadline x" "--mode refill --schedule widest"; do
    rc=0
    # shellcheck disable=SC2086
    "$EXITRT" run "$W/mlp" --device cpu $args >"$W/out" 2>"$W/err" || rc=$?
    [ "$rc" -eq 2 ] || fail "'$args': status $rc, want 2"
    [ "$(wc -l <"$W/err")" -eq 1 ] || fail "'$args': stderr is not one line"
    checks=$((checks + 1))
done

# the trained models, when they are there
if [ -n "$SRC" ]; then
    COMMON=(--limit 2000)
    for m in "$SRC"/models/fmnist-*/; do
        [ -f "$m/model.json" ] || continue
        name=$(basename "$m")
        same_as_masked "$m" "$name" 256
    done
fi

echo "test_refill.sh: $checks checks passed"
