#!/usr/bin/env bash
# test_outputs.sh - what the command writes and what it reads (run by CTest).
#
#   test_outputs.sh EXITRT MAKE_MODEL WORKDIR [SOURCE_DIR]
#
# - Output files are never destroyed: every failing `exitrt run` (model
#   missing, data wrong, threshold bad, an output path bad, invalid tokens)
#   and failing `exitrt bench` leaves each existing --predictions, --logits,
#   --json and --plot file byte for byte as it was and creates none that was
#   missing (no temporary left beside them either); a run that succeeds
#   replaces them, keeping a replaced file's mode and a symbolic link.
# - calibrate --write DIR is all or nothing: a DIR holding something else
#   (model.json a directory, a file of the user's) is refused untouched, a
#   failing calibrate leaves an earlier copy byte for byte, a succeeding one
#   replaces it as a whole; nothing is left beside DIR.
# - Token ids outside the vocabulary are refused, naming the first sample,
#   position and id, wherever they sit (attended or padded);
#   --allow-invalid-tokens runs them and the report counts them.
# - The run report counts the non-finite rows and lists the first ones
#   (text and JSON), against rows this script poisoned itself.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

EXITRT=$1
MAKE_MODEL=$2
W=$3

# shellcheck source=tests/cli/lib.sh
. "$HERE/lib.sh"

N=60
"$MAKE_MODEL" "$W/mlp" mlp 7 "$N"
"$MAKE_MODEL" "$W/bert" bert 3 "$N"
M=$W/mlp
B=$W/bert

# listing DIR: names, sizes and checksums of everything in it (what must not change)
listing() {
    (cd "$1" && find . -mindepth 1 -printf '%p %y %s\n' | sort &&
        find . -type f -exec md5sum {} + | sort)
}

# ---- run: outputs survive every failure ----------------------------------------
O=$W/outs
mkdir -p "$O/fresh"
printf 'keep me: predictions\n' >"$O/p.csv"
printf 'keep me: logits\n' >"$O/l.npy"
printf 'keep me: bench json\n' >"$O/b.json"
printf 'keep me: bench plot\n' >"$O/b.png"
mkdir "$O/a-directory"
before=$(listing "$O")

# the ways a run fails: status and command, after the outputs were named
fails=(
    "1|$W/nonexistent-model"
    "1|$M --data $W/nonexistent.npy"
    "1|$M --data $M/labels.npy"
    "1|$M --data $B/inputs.npy"
    "1|$M --labels $B/inputs.npy"
    "2|$M --threshold 0=-1"
    "2|$M --threshold nosuchexit=0.5"
    "2|$M --threshold 0=abc"
    "2|$M --bogus"
)
for f in "${fails[@]}"; do
    want=${f%%|*}
    # shellcheck disable=SC2086
    for outs in "--predictions $O/p.csv --logits $O/l.npy" \
        "--predictions $O/fresh/p.csv --logits $O/fresh/l.npy"; do
        expect_status "$want" "$EXITRT" run ${f#*|} --device cpu $outs
        [ "$(wc -l <"$W/err")" -eq 1 ] || fail "run ${f#*|}: stderr is not one line"
        [ "$(listing "$O")" = "$before" ] || fail "run ${f#*|} $outs changed the outputs: $(ls -la "$O" "$O/fresh")"
    done
done
# the report cannot be written (a full disk on stdout): the run failed
rc=0
"$EXITRT" run "$M" --device cpu --predictions "$O/p.csv" --logits "$O/fresh/l.npy" >/dev/full 2>"$W/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "cannot write the report" "$W/err" || fail "stdout full: status $rc: $(cat "$W/err")"
[ "$(listing "$O")" = "$before" ] || fail "a run whose report failed changed the outputs"
ok
# a bad output path, the other output good: neither written
for bad in "$O/no/such/dir/l.npy" "$O/a-directory" "$O/fresh/missing-dir/l.npy"; do
    expect_error "$EXITRT" run "$M" --device cpu --predictions "$O/p.csv" --logits "$bad"
    grep -qF "$bad: cannot create" "$W/err" || fail "bad output $bad: $(cat "$W/err")"
    expect_error "$EXITRT" run "$M" --device cpu --predictions "$O/fresh/p.csv" --logits "$bad"
    [ "$(listing "$O")" = "$before" ] || fail "a bad --logits $bad changed the outputs"
done
# invalid tokens (below) refuse before writing too
python3 - "$B/inputs.npy" "$O/../bad-ids.npy" 9999 <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<H", b[8:10])[0]
d = bytearray(b[10 + hl:])
struct.pack_into("<i", d, 4 * 3, int(sys.argv[3]))  # sample 0, position 3
open(sys.argv[2], "wb").write(b[:10 + hl] + bytes(d))
PY
expect_error "$EXITRT" run "$B" --data "$W/bad-ids.npy" --device cpu --predictions "$O/p.csv" \
    --logits "$O/fresh/l.npy"
[ "$(listing "$O")" = "$before" ] || fail "invalid tokens changed the outputs"

# bench: a bad --plot path fails before the sweep, and a bad model; --json kept
expect_status 1 "$EXITRT" bench "$M" --quick --device cpu --json "$O/b.json" --plot "$O/no/dir/p.png"
grep -qF "$O/no/dir/p.png: cannot create" "$W/err" || fail "bench: bad --plot message: $(cat "$W/err")"
expect_status 1 "$EXITRT" bench "$W/nonexistent-model" --quick --device cpu --json "$O/b.json" \
    --plot "$O/b.png"
expect_status 1 "$EXITRT" bench "$M" --data "$M/labels.npy" --quick --device cpu \
    --json "$O/fresh/b.json" --plot "$O/fresh/b.png"
[ "$(listing "$O")" = "$before" ] || fail "a failing bench changed the outputs"

# success replaces: the contents are the run's, a replaced file keeps its
# mode, a symbolic link stays a link to the file it named
chmod 640 "$O/p.csv"
ln -s l.npy "$O/link.npy"
expect_status 0 "$EXITRT" run "$M" --device cpu --predictions "$O/p.csv" --logits "$O/link.npy" \
    --json
head -1 "$O/p.csv" | grep -qx "index,exit,class,score" || fail "the predictions were not replaced"
[ "$(wc -l <"$O/p.csv")" -eq $((N + 1)) ] || fail "predictions: $(wc -l <"$O/p.csv") lines"
[ "$(stat -c %a "$O/p.csv")" = 640 ] || fail "the replaced file's mode: $(stat -c %a "$O/p.csv")"
[ -L "$O/link.npy" ] || fail "the symbolic link was replaced by a file"
head -c 6 "$O/l.npy" | grep -q NUMPY || fail "the link's target was not written"
expect_status 0 "$EXITRT" run "$M" --device cpu --predictions "$O/fresh/p.csv" --logits /dev/null
[ -s "$O/fresh/p.csv" ] || fail "a new output was not created"
[ -c /dev/null ] || fail "/dev/null is no longer a device"
# nothing but the outputs themselves
leftover=$(find "$O" -name '*.tmp.*')
[ -z "$leftover" ] || fail "temporaries left: $leftover"
ok

# ---- calibrate --write: all or nothing -------------------------------------------
C=$W/cal
mkdir -p "$C/taken/model.json" "$C/user-dir"
printf 'notes\n' >"$C/user-dir/notes.txt"
: >"$C/a-file"
before=$(listing "$C")
for d in taken user-dir a-file; do
    expect_status 2 "$EXITRT" calibrate "$M" --device cpu --write "$C/$d"
    [ "$(wc -l <"$W/err")" -eq 1 ] || fail "calibrate --write $d: stderr is not one line"
done
grep -q "is not a directory" "$W/err" || fail "--write a-file: $(cat "$W/err")"
[ "$(listing "$C")" = "$before" ] || fail "a refused --write changed what was there"
# a new directory, then an empty one
expect_status 0 "$EXITRT" calibrate "$M" --device cpu --write "$C/good"
mkdir "$C/empty"
expect_status 0 "$EXITRT" calibrate "$M" --device cpu --write "$C/empty/"
# the copy is one flat directory: the weights and the sample files the model
# names, copied (every path a model names stays inside it)
for d in good empty; do
    [ "$(ls "$C/$d")" = "$(printf 'inputs.npy\nlabels.npy\nmodel.json\nmodel.safetensors')" ] ||
        fail "--write $d holds $(ls "$C/$d")"
    for f in inputs.npy labels.npy model.safetensors; do
        cmp -s "$M/$f" "$C/$d/$f" || fail "--write $d: $f is not the model's"
    done
    expect_status 0 "$EXITRT" run "$C/$d" --device cpu --json
done
before=$(listing "$C")
# failing calibrations leave the earlier copy as it was
expect_status 1 "$EXITRT" calibrate "$M" --device cpu --min-accuracy 100 --write "$C/good"
expect_status 1 "$EXITRT" calibrate "$M" --device cpu --data "$M/labels.npy" --labels "$M/labels.npy" \
    --write "$C/good"
expect_status 2 "$EXITRT" calibrate "$C/good" --device cpu --write "$C/good"
grep -q "the model's own directory" "$W/err" || fail "--write into the model: $(cat "$W/err")"
[ "$(listing "$C")" = "$before" ] || fail "a failing calibrate changed the written model"
# a succeeding one replaces it as a whole, with its thresholds
expect_status 0 "$EXITRT" calibrate "$M" --device cpu --min-accuracy 30 --json --write "$C/good"
cp "$W/out" "$W/cal30.json"
[ "$(ls "$C/good")" = "$(printf 'inputs.npy\nlabels.npy\nmodel.json\nmodel.safetensors')" ] ||
    fail "the replaced copy holds $(ls "$C/good")"
python3 - "$W/cal30.json" "$C/good/model.json" <<'PY' || fail "the replaced copy's thresholds"
import json, sys
c, m = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for e in m["exits"]:
    assert e["policy"]["threshold"] == c["thresholds"][e["name"]], e
PY
cmp -s "$M/model.safetensors" "$C/good/model.safetensors" || fail "the copied weights differ"
# sample files in a folder of the model are copied flat; one that is named
# but missing is left out of the copy (the library never opens it), with a note
S=$W/mlp-sub
mkdir -p "$S/data"
cp "$M/model.json" "$M/model.safetensors" "$S/"
cp "$M/inputs.npy" "$S/data/"
python3 - "$S/model.json" <<'PY' || fail "editing the sample paths"
import json, sys
j = json.load(open(sys.argv[1]))
j["sample_data"], j["sample_labels"] = "data/inputs.npy", "data/gone.npy"
json.dump(j, open(sys.argv[1], "w"))
PY
expect_status 0 "$EXITRT" calibrate "$S" --device cpu --labels "$M/labels.npy" --write "$C/flat"
grep -q "sample_labels 'data/gone.npy' is missing" "$W/err" || fail "no note: $(cat "$W/err")"
[ "$(ls "$C/flat")" = "$(printf 'inputs.npy\nmodel.json\nmodel.safetensors')" ] ||
    fail "--write flat holds $(ls "$C/flat")"
python3 - "$C/flat/model.json" <<'PY' || fail "the flat copy's sample paths"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["sample_data"] == "inputs.npy" and "sample_labels" not in j, j
PY
expect_status 0 "$EXITRT" run "$C/flat" --device cpu --labels "$M/labels.npy" --json
leftover=$(find "$C" -name '*.tmp.*' -o -name '*.old.*')
[ -z "$leftover" ] || fail "calibrate left: $leftover"
ok

# ---- token ids outside the vocabulary -----------------------------------------------
# In sample 5 an id of the vocabulary size at an attended position, in sample
# 9 a -1 at a padded one (found from the mask, mw_random_tokens), in the
# float copy 2.5 in sample 2.
read -r V T < <("$EXITRT" inspect "$B" | sed -n 's/^input *\([0-9]*\) tokens.*vocab \([0-9]*\).*/\2 \1/p')
[ -n "$V" ] && [ -n "$T" ] || fail "inspect: no vocabulary or token count"
python3 - "$B/inputs.npy" "$W" "$V" "$T" <<'PY' || fail "writing the token data"
import struct, sys
src, w, V, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = open(src, "rb").read()
hl = struct.unpack("<H", b[8:10])[0]
head, d = b[:10 + hl], bytearray(b[10 + hl:])
n = len(d) // (8 * T)
ids = lambda i: [struct.unpack_from("<i", d, 4 * (i * 2 * T + t))[0] for t in range(T)]
mask = lambda i: [struct.unpack_from("<i", d, 4 * (i * 2 * T + T + t))[0] for t in range(T)]
assert mask(5)[2] == 1
pad = next(i for i in range(9, n) if 0 in mask(i))
tp = mask(pad).index(0)
struct.pack_into("<i", d, 4 * (5 * 2 * T + 2), V)
struct.pack_into("<i", d, 4 * (pad * 2 * T + tp), -1)
open(f"{w}/oov.npy", "wb").write(head + bytes(d))
open(f"{w}/oov-rows", "w").write(f"5 {pad} {tp}\n")
# float32 [N, 2, T] with a fraction
vals = struct.unpack(f"<{len(d) // 4}i", bytes(b[10 + hl:]))
f = list(map(float, vals))
f[2 * 2 * T + 4] = 2.5
h = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, 2, %d), }" % (n, T)
h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
open(f"{w}/frac.npy", "wb").write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() +
                                   struct.pack(f"<{len(f)}f", *f))
PY
read -r _ PAD TP <"$W/oov-rows"
expect_error "$EXITRT" run "$B" --data "$W/oov.npy" --device cpu
grep -qF "oov.npy: sample 5, position 2: token id $V is not in the model's vocabulary (integers in [0, $V))" "$W/err" &&
    grep -qF "2 of the $N samples hold such ids" "$W/err" && grep -qF -- "--allow-invalid-tokens" "$W/err" ||
    fail "invalid token message: $(cat "$W/err")"
# only the padded one: refused all the same, as ert_pack_tokens refuses
python3 - "$B/inputs.npy" "$W/pad-only.npy" "$PAD" "$TP" "$T" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<H", b[8:10])[0]
d = bytearray(b[10 + hl:])
pad, tp, T = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
struct.pack_into("<i", d, 4 * (pad * 2 * T + tp), -1)
open(sys.argv[2], "wb").write(b[:10 + hl] + bytes(d))
PY
expect_error "$EXITRT" run "$B" --data "$W/pad-only.npy" --device cpu
grep -qF "sample $PAD, position $TP: token id -1 is not in" "$W/err" || fail "padded invalid id: $(cat "$W/err")"
expect_error "$EXITRT" run "$B" --data "$W/frac.npy" --device cpu
grep -qF "sample 2, position 4: token id 2.5 is not in" "$W/err" || fail "fractional id: $(cat "$W/err")"
expect_error "$EXITRT" calibrate "$B" --data "$W/oov.npy" --labels "$B/labels.npy" --device cpu
grep -qF "sample 5, position 2: token id $V" "$W/err" || fail "calibrate: invalid token: $(cat "$W/err")"
# run anyway: counted and listed; sample 5 (attended) has NaN logits
expect_status 0 "$EXITRT" run "$B" --data "$W/oov.npy" --labels "$B/labels.npy" --device cpu \
    --allow-invalid-tokens --json --predictions "$W/oov.csv"
python3 - "$W/out" "$W/oov.csv" "$PAD" <<'PY' || fail "--allow-invalid-tokens report: $(cat "$W/out")"
import csv, json, math, sys
j, pad = json.load(open(sys.argv[1])), int(sys.argv[3])
rows = list(csv.DictReader(open(sys.argv[2])))
assert j["invalid_token_samples"] == 2, j
assert j["nonfinite_inputs"] == 0, j
nan_rows = [i for i, r in enumerate(rows) if math.isnan(float(r["score"]))]
assert 5 in nan_rows, nan_rows
assert j["nonfinite_outputs"] == len(nan_rows), (j, nan_rows)
want = sorted(set(nan_rows) | {5, pad})
assert j["nonfinite_samples"] == len(want), (j, want)
assert j["nonfinite_rows"] == want[:10], (j["nonfinite_rows"], want)
r5 = rows[5]
assert int(r5["exit"]) == len(j["exits"]) - 1 and r5["class"] == "0", r5
PY
expect_status 0 "$EXITRT" run "$B" --data "$W/oov.npy" --device cpu --allow-invalid-tokens
grep -q "^non-finite   [0-9]* samples: rows .*5" "$W/out" &&
    grep -q "token ids outside the vocabulary 2" "$W/out" || fail "text report: $(cat "$W/out")"
# valid data: nothing to report
expect_status 0 "$EXITRT" run "$B" --device cpu --json
[ "$(json_get "$W/out" 'j["nonfinite_samples"], j["nonfinite_rows"]')" = "(0, [])" ] ||
    fail "valid token data reports non-finite rows"
expect_status 0 "$EXITRT" run "$B" --device cpu
grep -q "non-finite" "$W/out" && fail "valid token data: the text report names non-finite rows"
ok

# ---- non-finite rows in the run report -----------------------------------------------
# NaN in rows 3 and 7, +Inf in row 12, -Inf in 40: the report names them in
# row order; with 14 such rows it lists the first 10 and says there are more.
python3 - "$M/inputs.npy" "$W" <<'PY' || fail "writing the NaN data"
import struct, sys
b = open(sys.argv[1], "rb").read()
hl = struct.unpack("<H", b[8:10])[0]
head, d = b[:10 + hl], bytearray(b[10 + hl:])
per = 64
def poison(rows, name):
    x = bytearray(d)
    for i, v in rows:
        struct.pack_into("<f", x, 4 * (i * per + (i * 7) % per), v)
    open(f"{sys.argv[2]}/{name}", "wb").write(head + bytes(x))
nan, inf = float("nan"), float("inf")
poison([(3, nan), (7, nan), (12, inf), (40, -inf)], "nan4.npy")
poison([(i, nan) for i in range(20, 48, 2)], "nan14.npy")
PY
for mode in compacted masked refill; do
    expect_status 0 "$EXITRT" run "$M" --data "$W/nan4.npy" --labels "$M/labels.npy" --device cpu \
        --mode "$mode" --batch 16 --json --predictions "$W/nan4-$mode.csv"
    python3 - "$W/out" "$W/nan4-$mode.csv" <<'PY' || fail "$mode: non-finite rows: $(cat "$W/out")"
import csv, json, math, sys
j = json.load(open(sys.argv[1]))
rows = list(csv.DictReader(open(sys.argv[2])))
assert j["nonfinite_inputs"] == 4 and j["invalid_token_samples"] == 0, j
nan_rows = [i for i, r in enumerate(rows) if math.isnan(float(r["score"]))]
assert set(nan_rows) <= {3, 7, 12, 40}, nan_rows
assert j["nonfinite_outputs"] == len(nan_rows), (j, nan_rows)
assert j["nonfinite_samples"] == 4 and j["nonfinite_rows"] == [3, 7, 12, 40], j
for i in nan_rows:  # answered at the final exit, class 0
    assert int(rows[i]["exit"]) == len(j["exits"]) - 1 and rows[i]["class"] == "0", rows[i]
PY
    ok
done
expect_status 0 "$EXITRT" run "$M" --data "$W/nan4.npy" --device cpu
grep -qx "non-finite   4 samples: rows 3, 7, 12, 40" "$W/out" || fail "text report: $(cat "$W/out")"
grep -q "NaN or Inf inputs 4," "$W/out" || fail "text report: the inputs' count"
expect_status 0 "$EXITRT" run "$M" --data "$W/nan14.npy" --device cpu
grep -qx "non-finite   14 samples: rows 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, ..." "$W/out" ||
    fail "text report, 14 rows: $(cat "$W/out")"
expect_status 0 "$EXITRT" run "$M" --data "$W/nan14.npy" --device cpu --json
[ "$(json_get "$W/out" 'j["nonfinite_samples"], len(j["nonfinite_rows"])')" = "(14, 10)" ] ||
    fail "JSON, 14 rows"

echo "test_outputs: $checks checks passed"
