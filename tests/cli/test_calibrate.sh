#!/usr/bin/env bash
# test_calibrate.sh - `exitrt calibrate` end to end (run by CTest).
#
#   test_calibrate.sh EXITRT MAKE_MODEL WORKDIR [SOURCE_DIR]
#
# On random models (cli_make_model) and, with SOURCE_DIR, the trained models
# under SOURCE_DIR/models/fmnist-*: the JSON has the documented keys; the
# target holds on the calibration part; the figures of the two parts add up
# to what `exitrt run` reports for the written model on all the samples
# (exits taken, correct predictions, MACs), which checks the search's
# bookkeeping against the engine; the split follows --seed; the written
# model loads and carries the thresholds; bad options are one-line errors.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

EXITRT=$1
MAKE_MODEL=$2
W=$3
SRC=${4:-}

# shellcheck source=tests/cli/lib.sh
. "$HERE/lib.sh"

# calibrated MODEL NAME ARGS... : calibrate MODEL with ARGS (--json and
# --write $W/NAME added), then run the written model on the same samples
# and check that the two parts add up to the run's figures.
calibrated() {
    local m=$1 name=$2
    shift 2
    expect_status 0 "$EXITRT" calibrate "$m" --device cpu --json --write "$W/$name" "$@"
    cp "$W/out" "$W/$name.json"
    # the run sees the data/labels/limit options calibrate saw
    local args=() prev=""
    for a in "$@"; do
        case "$prev" in --data | --labels | --limit) args+=("$prev" "$a") ;; esac
        prev=$a
    done
    expect_status 0 "$EXITRT" run "$W/$name" --device cpu --mode compacted --json ${args[@]+"${args[@]}"}
    cp "$W/out" "$W/$name.run.json"
    python3 - "$W/$name.json" "$W/$name.run.json" "$W/$name/model.json" <<'PY' || fail "$name: calibrate's figures"
import json, sys
c, r, mj = (json.load(open(p)) for p in sys.argv[1:4])
for key in ("thresholds", "target", "calibration", "heldout", "model_json"):
    assert key in c, key
for key in ("samples", "accuracy", "macs_ratio"):
    assert key in c["calibration"], key
for part in ("heldout", "model_json"):
    for key in ("samples", "accuracy", "accuracy_final", "drop", "drop_upper", "confidence",
                "macs_ratio", "exits"):
        assert key in c[part], (part, key)
    for e in c[part]["exits"]:
        assert set(("name", "taken", "accuracy")) <= set(e), e
    assert c[part]["drop_upper"] >= c[part]["drop"] - 1e-12, part
    assert abs(c[part]["accuracy_final"] - c[part]["accuracy"] - c[part]["drop"]) < 1e-12
cal, held = c["calibration"], c["heldout"]
# the target holds where it was searched
if "max_drop" in c["target"]:
    assert cal["accuracy"] >= cal["accuracy_final"] - c["target"]["max_drop"] - 1e-12, cal
else:
    assert cal["accuracy"] >= c["target"]["min_accuracy"] - 1e-12, cal
assert cal["target_met"] is True
# the two parts are the run's samples
n = cal["samples"] + held["samples"]
assert n == r["samples"], (n, r["samples"])
# written thresholds = reported thresholds = the run's
names = [e["name"] for e in r["exits"][:-1]]
assert sorted(c["thresholds"]) == sorted(names)
for e in mj["exits"]:
    assert e["policy"]["threshold"] == c["thresholds"][e["name"]], e
for e in r["exits"][:-1]:
    assert e["threshold"] == c["thresholds"][e["name"]], e
# exits, correct predictions and MACs add up to the run's over all samples
for i, e in enumerate(r["exits"]):
    taken = cal["exits"][i]["taken"] + held["exits"][i]["taken"]
    assert taken == e["taken"], (e["name"], taken, e["taken"])
correct = round(cal["accuracy"] * cal["samples"]) + round(held["accuracy"] * held["samples"])
assert correct == r["correct"], (correct, r["correct"])
macs = cal["macs_ratio"] * cal["samples"] + held["macs_ratio"] * held["samples"]
assert abs(macs - r["macs_ratio"] * n) <= 1e-6 * n, (macs, r["macs_ratio"] * n)
PY
    ok
}

# ---- random models -------------------------------------------------------------------
N=400
for kind in mlp cnn resnet; do
    "$MAKE_MODEL" "$W/$kind" "$kind" 11 "$N"
done
for kind in mlp cnn resnet; do
    M=$W/$kind
    DATA=(--data "$M/inputs.npy" --labels "$M/labels.npy")
    calibrated "$M" "$kind-d1" "${DATA[@]}" --max-drop 1 --seed 3
    [ "$(json_get "$W/$kind-d1.json" 'j["heldout"]["samples"]')" = 200 ] || fail "$kind: holdout 0.5"
    calibrated "$M" "$kind-a" "${DATA[@]}" --min-accuracy 5 --holdout 0.25 --limit 300
    [ "$(json_get "$W/$kind-a.json" 'j["heldout"]["samples"]')" = 75 ] || fail "$kind: holdout 0.25"
    # the text report names its parts
    expect_status 0 "$EXITRT" calibrate "$M" "${DATA[@]}" --device cpu
    for word in target calibration 'held out' 'drop bound' 'MACs vs full' model.json; do
        grep -q "$word" "$W/out" || fail "$kind: text report lacks '$word'"
    done
done

# the split follows the seed
M=$W/mlp
DATA=(--data "$M/inputs.npy" --labels "$M/labels.npy")
expect_status 0 "$EXITRT" calibrate "$M" "${DATA[@]}" --device cpu --json --seed 3 --max-drop 1
python3 - "$W/out" "$W/mlp-d1.json" <<'PY' || fail "the same seed gives another result"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["thresholds"] == b["thresholds"] and a["heldout"] == b["heldout"]
PY
ok

# ---- errors --------------------------------------------------------------------------
for args in "calibrate" "calibrate $M --bogus" "calibrate $M --max-drop 1 --min-accuracy 90" \
    "calibrate $M --holdout 0" "calibrate $M --holdout 1" "calibrate $M --holdout x" \
    "calibrate $M --confidence 1" "calibrate $M --max-drop -1" "calibrate $M --data $M/inputs.npy" \
    "calibrate $M --seed -2" "calibrate $M ${DATA[*]} --write $M"; do
    # shellcheck disable=SC2086
    expect_status 2 "$EXITRT" $args
    [ "$(wc -l <"$W/err")" -eq 1 ] || fail "usage error '$args' is not one line"
done
# an accuracy no thresholds reach: one error line, nothing written
expect_error "$EXITRT" calibrate "$M" "${DATA[@]}" --device cpu --min-accuracy 100 --write "$W/never"
[ ! -e "$W/never/model.json" ] || fail "an unmet target wrote a model"

# ---- the trained models, when present ------------------------------------------------
if [ -n "$SRC" ]; then
    for d in "$SRC"/models/fmnist-*/; do
        [ -f "$d/model.json" ] || continue
        name=trained-$(basename "$d")
        calibrated "$d" "$name" --max-drop 0.5 --limit 4000
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); h=j["heldout"]
assert h["accuracy"] > 0.85 and h["macs_ratio"] < 0.9, h' "$W/$name.json" ||
            fail "trained model $d: calibrated figures"
    done
fi

echo "test_calibrate: $checks checks passed"
