#!/usr/bin/env bash
# test_cli.sh - the `exitrt` command end to end (run by CTest).
#
#   test_cli.sh EXITRT MAKE_MODEL WORKDIR [SOURCE_DIR]
#
# EXITRT is the exitrt binary, MAKE_MODEL the cli_make_model helper (writes a
# random model and data), WORKDIR a scratch directory (emptied first).
# With SOURCE_DIR, the trained models under SOURCE_DIR/models/fmnist-* are run
# too (first 512 samples), when they are there.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

EXITRT=$1
MAKE_MODEL=$2
W=$3
SRC=${4:-}

# shellcheck source=tests/cli/lib.sh
. "$HERE/lib.sh"

# ---- help and version ---------------------------------------------------------
expect_status 0 "$EXITRT" --help
grep -q 'usage: exitrt' "$W/out" || fail "--help prints no usage"
expect_status 0 "$EXITRT" run --help
grep -q -- '--threshold' "$W/out" || fail "run --help does not list --threshold"
expect_status 0 "$EXITRT" inspect --help
expect_status 0 "$EXITRT" --version
grep -q '^exitrt [0-9]' "$W/out" || fail "--version"

# ---- models -----------------------------------------------------------------------
N=300
for kind in mlp cnn resnet; do
    "$MAKE_MODEL" "$W/$kind" "$kind" 7 "$N"
done

for kind in mlp cnn resnet; do
    M=$W/$kind
    DATA=(--data "$M/inputs.npy" --labels "$M/labels.npy")

    # the text report
    expect_status 0 "$EXITRT" run "$M" "${DATA[@]}" --device cpu
    for word in exit policy threshold taken share accuracy MACs 'compute saved' samples/s \
        'mode compacted' 'cpu'; do
        grep -q "$word" "$W/out" || fail "$kind: report lacks '$word'"
    done
    [ ! -s "$W/err" ] || fail "$kind: stderr not empty: $(cat "$W/err")"

    # inspect
    expect_status 0 "$EXITRT" inspect "$M"
    for word in input classes backbone exits stages parameters 'MACs full'; do
        grep -q "$word" "$W/out" || fail "$kind: inspect lacks '$word'"
    done
    expect_status 0 "$EXITRT" inspect "$M/model.json"

    # every mode: JSON, predictions and logits
    for mode in full masked compacted; do
        expect_status 0 "$EXITRT" run "$M" "${DATA[@]}" --device cpu --mode "$mode" --batch 64 \
            --json --predictions "$W/$kind-$mode.csv" --logits "$W/$kind-$mode.npy"
        python3 -c 'import json,sys; json.load(sys.stdin)' <"$W/out" ||
            fail "$kind $mode: --json is not JSON"
        cp "$W/out" "$W/$kind-$mode.json"
        ok
    done

    # the JSON's content
    python3 - "$W" "$kind" "$N" <<'EOF' || fail "$kind: JSON content"
import json, sys
w, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = {m: json.load(open(f"{w}/{kind}-{m}.json")) for m in ("full", "masked", "compacted")}
for mode, j in r.items():
    for key in ("samples", "accuracy", "exits", "macs_executed", "macs_full", "macs_ratio",
                "samples_per_s", "mode", "device", "batch", "nonfinite_samples"):
        assert key in j, (mode, key)
    assert j["samples"] == n and j["mode"] == mode and j["device"] == "cpu" and j["batch"] == 64
    assert 0 <= j["accuracy"] <= 1
    assert sum(e["taken"] for e in j["exits"]) == n
    assert abs(sum(e["share"] for e in j["exits"]) - 1) < 1e-9
    for e in j["exits"]:
        for key in ("name", "policy", "threshold", "taken", "share", "accuracy"):
            assert key in e, (mode, key)
    assert j["exits"][-1]["threshold"] is None
    assert j["samples_per_s"] > 0
    assert j["nonfinite_samples"] == 0
    assert j["macs_full"] > 0
full, masked, comp = r["full"], r["masked"], r["compacted"]
assert full["macs_executed"] == full["macs_full"], "FULL executes the full network"
assert full["exits"][-1]["taken"] == n
assert masked["macs_executed"] >= masked["macs_full"]
early = sum(e["taken"] for e in comp["exits"][:-1])
assert early > 0, "the random model's thresholds let some samples exit early"
assert comp["macs_executed"] < full["macs_executed"], "COMPACTED saves MACs"
assert comp["macs_ratio"] < 1
# labels are the reference's predictions with every 4th changed
assert 0.5 < comp["accuracy"] < 0.95, comp["accuracy"]
EOF
    ok

    # MASKED and COMPACTED predictions are identical, byte for byte, when the
    # CPU backend is batch-invariant on this BLAS (its note says so; see
    # src/cpu/cpu_ops.h), else equal to float rounding
    exact=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["engine_note"].endswith("the modes agree bit for bit")))' "$W/$kind-masked.json")
    head -1 "$W/$kind-masked.csv" | grep -qx "index,exit,class,score" &&
        [ "$(wc -l < "$W/$kind-masked.csv")" -eq $((N + 1)) ] &&
        python3 "$HERE/same_predictions.py" "$W/$kind-masked.csv" "$W/$kind-compacted.csv" "$exact" ||
        fail "$kind: MASKED and COMPACTED predictions differ"
    ok

    # the logits files: float32 [N, K], and the same in both modes
    python3 - "$W/$kind-masked.npy" "$W/$kind-compacted.npy" "$N" <<'EOF' ||
import ast, struct, sys
def load(p):
    b = open(p, "rb").read()
    assert b[:8] == b"\x93NUMPY\x01\x00"
    hl = struct.unpack("<H", b[8:10])[0]
    assert (10 + hl) % 64 == 0
    h = ast.literal_eval(b[10:10 + hl].decode())
    assert h["descr"] == "<f4" and h["fortran_order"] is False
    n, k = h["shape"]
    data = b[10 + hl:]
    assert len(data) == n * k * 4
    return n, k, struct.unpack(f"<{n*k}f", data)
n1, k1, a = load(sys.argv[1])
n2, k2, b = load(sys.argv[2])
assert n1 == n2 == int(sys.argv[3]) and k1 == k2
for x, y in zip(a, b):
    assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (x, y)
EOF
        fail "$kind: logits files"
    ok

    # thresholds by name and by index: 0 and 1 move everyone
    first=$(json_get "$W/$kind-compacted.json" 'j["exits"][0]["name"]')
    policy=$(json_get "$W/$kind-compacted.json" 'j["exits"][0]["policy"]')
    if [ "$policy" = entropy ]; then never=0; else never=1.0001; fi
    if [ "$policy" = entropy ]; then always=1000; else always=0; fi
    expect_status 0 "$EXITRT" run "$M" "${DATA[@]}" --json --threshold "$first=$always"
    [ "$(json_get "$W/out" 'j["exits"][0]["taken"]')" = "$N" ] ||
        fail "$kind: threshold $first=$always does not send everyone out at $first"
    [ "$(json_get "$W/out" 'j["exits"][0]["threshold"]')" = "$always" ] ||
        [ "$(json_get "$W/out" 'float(j["exits"][0]["threshold"])')" = "$always.0" ] ||
        fail "$kind: the JSON threshold is not the one given"
    if [ "$policy" != entropy ]; then
        expect_error "$EXITRT" run "$M" "${DATA[@]}" --threshold "0=$never"
        [ "$(cat "$W/err" | grep -c 'out of range')" = 1 ] || fail "$kind: range message"
    fi

    # --limit, uint8 IDX data and gzipped IDX labels, the model's sample data
    expect_status 0 "$EXITRT" run "$M" "${DATA[@]}" --limit 17 --batch 5 --json
    [ "$(json_get "$W/out" 'j["samples"]')" = 17 ] || fail "$kind: --limit"
    expect_status 0 "$EXITRT" run "$M" --data "$M/inputs-u8-idx" --labels "$M/labels-idx1.gz" --json
    [ "$(json_get "$W/out" 'j["samples"]')" = "$N" ] || fail "$kind: IDX data"
    expect_status 0 "$EXITRT" run "$M" --json
    [ "$(json_get "$W/out" 'j["accuracy"] is not None')" = True ] ||
        fail "$kind: the model's sample labels are not used"
    expect_status 0 "$EXITRT" run "$M" --data "$M/inputs.npy" --json
    [ "$(json_get "$W/out" 'j["accuracy"]')" = None ] || fail "$kind: accuracy without labels"
done

# ---- a sample-size mismatch and bad data ------------------------------------------
expect_error "$EXITRT" run "$W/mlp" --data "$W/cnn/inputs.npy"
grep -q 'the model takes' "$W/err" || fail "size mismatch message"
expect_error "$EXITRT" run "$W/mlp" --data "$W/mlp/labels.npy"
expect_error "$EXITRT" run "$W/mlp" --data "$W/mlp/model.json"
expect_error "$EXITRT" run "$W/mlp" --data "$W/nonexistent.npy"
expect_error "$EXITRT" run "$W/mlp" --data "$W/mlp/inputs.npy" --labels "$W/cnn/inputs.npy"
head -c 1000 "$W/mlp/inputs.npy" >"$W/truncated.npy"
expect_error "$EXITRT" run "$W/mlp" --data "$W/truncated.npy"
grep -q truncated "$W/err" || fail "truncated data message"
expect_error "$EXITRT" run "$W/mlp" --predictions "$W/no/such/dir/p.csv"

# ---- numpy's default dtypes: float64 inputs, int64 labels -------------------------------
# (the same values as inputs.npy and labels.npy, written without numpy)
python3 - "$W/mlp" <<'EOF' || fail "writing the float64 and int64 copies"
import struct, sys
d = sys.argv[1]
def read(p):
    b = open(p, "rb").read()
    hl = struct.unpack("<H", b[8:10])[0]
    return b[10:10 + hl].decode().rstrip(), b[10 + hl:]
def write(p, header, data):
    h = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    open(p, "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data)
h, x = read(d + "/inputs.npy")
v = struct.unpack(f"<{len(x) // 4}f", x)
write(d + "/inputs-f8.npy", h.replace("'<f4'", "'<f8'"), struct.pack(f"<{len(v)}d", *v))
h, y = read(d + "/labels.npy")
v = struct.unpack(f"<{len(y) // 4}i", y)
write(d + "/labels-i8.npy", h.replace("'<i4'", "'<i8'"), struct.pack(f"<{len(v)}q", *v))
EOF
expect_status 0 "$EXITRT" run "$W/mlp" --data "$W/mlp/inputs.npy" --labels "$W/mlp/labels.npy" \
    --device cpu --json --predictions "$W/f4.csv"
cp "$W/out" "$W/f4.json"
expect_status 0 "$EXITRT" run "$W/mlp" --data "$W/mlp/inputs-f8.npy" --labels "$W/mlp/labels-i8.npy" \
    --device cpu --json --predictions "$W/f8.csv"
cmp -s "$W/f4.csv" "$W/f8.csv" || fail "float64 inputs give other predictions than the same values as float32"
[ "$(json_get "$W/out" 'j["accuracy"]')" = "$(json_get "$W/f4.json" 'j["accuracy"]')" ] ||
    fail "int64 labels give another accuracy than the same labels as int32"
expect_error "$EXITRT" run "$W/mlp" --data "$W/mlp/inputs.npy" --labels "$W/mlp/inputs-f8.npy"
grep -q "labels must be integers (u1, i4 or i8), not float64" "$W/err" || fail "float64 labels message"

# ---- the layout of the samples: the model's [N, C, H, W], flat, or [N, H, W] for one channel
python3 - "$W" <<'EOF' || fail "writing the reshaped copies"
import struct, sys
w = sys.argv[1]
def reshape(src, dst, shape):
    b = open(src, "rb").read()
    hl = struct.unpack("<H", b[8:10])[0]
    old = b[10:10 + hl].decode()
    new = old[:old.index("'shape'")] + "'shape': (" + ", ".join(map(str, shape)) + "), }"
    h = new + " " * ((64 - (10 + len(new) + 1) % 64) % 64) + "\n"
    open(dst, "wb").write(b[:8] + struct.pack("<H", len(h)) + h.encode() + b[10 + hl:])
reshape(f"{w}/cnn/inputs.npy", f"{w}/cnn-nchw.npy", (300, 3, 12, 12))
reshape(f"{w}/cnn/inputs.npy", f"{w}/cnn-nhwc.npy", (300, 12, 12, 3))
reshape(f"{w}/mlp/inputs.npy", f"{w}/mlp-nhw.npy", (300, 8, 8))
reshape(f"{w}/mlp/inputs.npy", f"{w}/mlp-nchw.npy", (300, 1, 8, 8))
reshape(f"{w}/mlp/inputs.npy", f"{w}/mlp-n64x1.npy", (300, 64, 1))
reshape(f"{w}/mlp/inputs.npy", f"{w}/mlp-nhw-by-2.npy", (300, 4, 16))
EOF
for d in cnn-nchw:cnn mlp-nhw:mlp mlp-nchw:mlp mlp-n64x1:mlp; do
    expect_status 0 "$EXITRT" run "$W/${d#*:}" --data "$W/${d%%:*}.npy" --device cpu --json
done
expect_error "$EXITRT" run "$W/cnn" --data "$W/cnn-nhwc.npy" --device cpu
grep -qF "cnn-nhwc.npy: samples of shape 12x12x3 do not match the model's input 3x12x12" "$W/err" &&
    grep -qF "channels last?" "$W/err" && grep -qF "accepted: [N, 3, 12, 12] or [N, 432]" "$W/err" ||
    fail "channels-last data: $(cat "$W/err")"
expect_error "$EXITRT" run "$W/mlp" --data "$W/mlp-nhw-by-2.npy" --device cpu
grep -qF "samples of shape 4x16 do not match the model's input 1x8x8" "$W/err" &&
    grep -qF "accepted: [N, 1, 8, 8], [N, 8, 8] or [N, 64]" "$W/err" ||
    fail "4x16 data for an 8x8 model: $(cat "$W/err")"
# the bench reads inputs too
expect_status 1 "$EXITRT" bench "$W/cnn" --data "$W/cnn-nhwc.npy" --quick --device cpu
grep -qF "exitrt bench: $W/cnn-nhwc.npy: samples of shape 12x12x3 do not match" "$W/err" ||
    fail "bench: channels-last data: $(cat "$W/err")"

# ---- malformed models ---------------------------------------------------------------
bad() { # bad NAME: a copy of the mlp model to break
    rm -rf "${W:?}/bad-$1"
    cp -r "$W/mlp" "$W/bad-$1"
    echo "$W/bad-$1"
}
B=$(bad garbage-json); echo '{"format": "exitrt-model", "version": 1, garbage' >"$B/model.json"
B2=$(bad missing-weights); rm "$B2/model.safetensors"
B3=$(bad empty-json); : >"$B3/model.json"
B4=$(bad truncated-weights); head -c 100 "$W/mlp/model.safetensors" >"$B4/model.safetensors"
B5=$(bad garbage-weights); printf 'not a safetensors file at all' >"$B5/model.safetensors"
B6=$(bad wrong-version)
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); j["version"]=99; json.dump(j, open(sys.argv[1], "w"))' \
    "$B6/model.json"
B7=$(bad no-json); rm "$B7/model.json"
for b in "$B" "$B2" "$B3" "$B4" "$B5" "$B6" "$B7" "$W/nonexistent-model"; do
    expect_error "$EXITRT" run "$b" --data "$W/mlp/inputs.npy"
    expect_error "$EXITRT" inspect "$b"
done

# ---- the patience policy -------------------------------------------------------------
# The resnet's 2nd and 3rd early exits as patience (k = 2 and 3): inspect shows
# them, MASKED, COMPACTED and the refill stream agree (byte for byte where the
# CPU backend is batch-invariant), a patience exit's score is the streak (k,
# the most an exit at that position can reach with that k), and --threshold
# takes integers >= 1 only.
P=$W/resnet-patience
rm -rf "$P"
cp -r "$W/resnet" "$P"
python3 - "$P/model.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for e, k in zip(j["exits"][1:], (2, 3)):
    e["policy"] = {"type": "patience", "threshold": k}
json.dump(j, open(sys.argv[1], "w"), indent=1)
PY
PDATA=(--data "$P/inputs.npy" --labels "$P/labels.npy")
expect_status 0 "$EXITRT" inspect "$P"
grep -Eq 'policy patience +threshold 2 ' "$W/out" || fail "patience: inspect lacks 'patience ... 2'"
grep -q 'patience 3: a sample leaves once its class was the same at the last 3 exits' "$W/out" ||
    fail "patience: inspect does not explain k = 3"
for mode in masked compacted refill; do
    expect_status 0 "$EXITRT" run "$P" "${PDATA[@]}" --device cpu --mode "$mode" --batch 64 \
        --json --predictions "$W/patience-$mode.csv"
    cp "$W/out" "$W/patience-$mode.json"
done
python3 - "$W/patience-masked.json" "$W/patience-masked.csv" "$N" <<'PY' ||
import csv, json, sys
j, n = json.load(open(sys.argv[1])), int(sys.argv[3])
assert [e["policy"] for e in j["exits"]] == ["entropy", "patience", "patience", "final"], j["exits"]
assert [e["threshold"] for e in j["exits"][1:3]] == [2, 3], j["exits"]
assert sum(e["taken"] for e in j["exits"]) == n
for r in csv.DictReader(open(sys.argv[2])):
    x, s = int(r["exit"]), float(r["score"])
    if x in (1, 2):
        assert s == x + 1, r  # exit 1 with k = 2: a streak of 2; exit 2 with k = 3: 3
PY
    fail "patience: JSON or scores"
exact=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["engine_note"].endswith("the modes agree bit for bit")))' "$W/patience-masked.json")
for mode in compacted refill; do
    python3 "$HERE/same_predictions.py" "$W/patience-masked.csv" "$W/patience-$mode.csv" "$exact" ||
        fail "patience: MASKED and $mode predictions differ"
    ok
done
p2=$(json_get "$W/patience-masked.json" 'j["exits"][1]["name"]')
# k = 1: every sample that gets past exit 0 leaves at the first patience exit
expect_status 0 "$EXITRT" run "$P" "${PDATA[@]}" --device cpu --json --threshold "$p2=1" \
    --predictions "$W/patience-k1.csv"
[ "$(json_get "$W/out" 'j["exits"][2]["taken"] + j["exits"][3]["taken"]')" = 0 ] ||
    fail "patience: k = 1 let samples past $p2"
[ "$(json_get "$W/out" 'j["exits"][1]["taken"]')" -gt 0 ] || fail "patience: k = 1 took nobody"
python3 -c 'import csv,sys; assert all(float(r["score"]) in (1.0, 2.0) for r in csv.DictReader(open(sys.argv[1])) if r["exit"] == "1")' \
    "$W/patience-k1.csv" || fail "patience: a score at the second exit is not a streak of 1 or 2"
[ "$(json_get "$W/out" 'j["exits"][1]["threshold"]')" = 1 ] || fail "patience: JSON threshold"
# k beyond the exit's position: never
expect_status 0 "$EXITRT" run "$P" "${PDATA[@]}" --device cpu --json --threshold "$p2=3" \
    --threshold 2=4
[ "$(json_get "$W/out" 'j["exits"][1]["taken"] + j["exits"][2]["taken"]')" = 0 ] ||
    fail "patience: k beyond the exit's position fired"
for v in 2.5 0 -1 0.999; do
    expect_status 2 "$EXITRT" run "$P" "${PDATA[@]}" --threshold "$p2=$v"
    grep -q "an integer >= 1" "$W/err" || fail "patience: --threshold $p2=$v: $(cat "$W/err")"
done

# ---- usage errors: status 2 ---------------------------------------------------------
M=$W/mlp
for args in "" "bogus" "--bogus" "run" "inspect" "run $M --bogus" "run $M --batch 0" \
    "run $M --batch x" "run $M --batch" "run $M --mode fast" "run $M --device tpu" \
    "run $M --threads -1" "run $M --inflight 0" "run $M --limit 0" "run $M --threshold 0" \
    "run $M --threshold =1" "run $M --threshold nosuchexit=0.5" "run $M --threshold 0=abc" \
    "run $M --threshold 0=nan" "run $M $M" "inspect $M $M" "inspect $M --json"; do
    # shellcheck disable=SC2086
    expect_status 2 "$EXITRT" $args
    if [ -n "$args" ]; then
        [ "$(wc -l <"$W/err")" -eq 1 ] || fail "usage error '$args' is not one line"
    fi
done
final=$(json_get "$W/mlp-compacted.json" 'j["exits"][-1]["name"]')
expect_status 2 "$EXITRT" run "$M" --threshold "$final=0.5"

# ---- numbers on the command line, read as model.json's numbers are --------------------
# An underflow is a number (strtof's ERANGE once made 1e-38 "not a finite
# number"); overflow, NaN, infinities and text are refused, saying which.
expect_status 0 "$EXITRT" run "$M" --json --threshold 0=1e-38
[ "$(json_get "$W/out" 'j["exits"][0]["threshold"]')" = 1e-38 ] || fail "--threshold 0=1e-38 not kept"
expect_status 0 "$EXITRT" run "$M" --json --threshold 0=1e-60
[ "$(json_get "$W/out" 'j["exits"][0]["threshold"]')" = 0 ] || fail "--threshold 0=1e-60 is not 0"
for c in "1e39:is beyond the float32 range" "abc:is not a number" \
    "0.5x:is not a number (text after the number)" "nan:is NaN" "inf:is infinite" \
    ":is not a number (empty)"; do
    expect_status 2 "$EXITRT" run "$M" --threshold "0=${c%%:*}"
    grep -qF -- "--threshold 0=${c%%:*}: '${c%%:*}' ${c#*:}" "$W/err" ||
        fail "--threshold 0=${c%%:*}: message '$(cat "$W/err")' lacks '${c#*:}'"
done
expect_status 0 "$EXITRT" run "$M" --mode refill --deadline 1e-400 --json
expect_status 2 "$EXITRT" run "$M" --mode refill --deadline 1e999
grep -q "beyond the range of a double" "$W/err" || fail "--deadline 1e999 message"

# ---- the trained models, when present ---------------------------------------------
if [ -n "$SRC" ]; then
    for d in "$SRC"/models/fmnist-*/; do
        [ -f "$d/model.json" ] || continue
        expect_status 0 "$EXITRT" run "$d" --limit 512 --json --device cpu
        python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["samples"]==512 and j["accuracy"] > 0.5, j' \
            <"$W/out" || fail "trained model $d"
        expect_status 0 "$EXITRT" inspect "$d"
    done
fi

echo "test_cli: $checks checks passed"
