#!/usr/bin/env bash
# run_corpus.sh - the malformed-input corpus through `exitrt` (run by CTest).
#
#   run_corpus.sh EXITRT CORPUS_DIR WORKDIR
#
# Every row of CORPUS_DIR/expected.tsv (written by make_corpus.py) is run;
# each must exit with the listed status (1 or 2), never a signal, and print
# exactly one stderr line, "exitrt: ...", holding the listed text. Then:
#   - the valid base model must run (status 0), so the cases fail for their
#     own reason and not the base's;
#   - FIFOs as weights and data files (created here: git cannot store them)
#     must fail at once, not hang;
#   - with /usr/bin/python3 and numpy: make_corpus.py regenerates the corpus
#     into WORKDIR and it must equal the committed files byte for byte, and
#     the cases too large to commit (--big) are written and run.
set -euo pipefail

EXITRT=$(realpath "$1")
CORPUS=$(realpath "$2")
W=$3
rm -rf "$W"
mkdir -p "$W"
W=$(realpath "$W")

fails=0
checks=0
fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

# check_case STATUS WANT CMD... : runs CMD (in the corpus directory), then checks.
check_case() {
    local want_status=$1 want=$2
    shift 2
    local rc=0
    (cd "$CORPUS_RUN" && timeout 60 "$@") >"$W/out" 2>"$W/err" || rc=$?
    checks=$((checks + 1))
    if [ "$rc" -gt 128 ] || [ "$rc" -eq 124 ]; then
        fail "signal or timeout (status $rc): $*"; cat "$W/err" >&2; return
    fi
    if [ "$rc" -ne "$want_status" ]; then
        fail "status $rc, want $want_status: $*"; cat "$W/err" >&2; return
    fi
    local lines
    lines=$(wc -l <"$W/err")
    if [ "$lines" -ne 1 ]; then
        fail "stderr has $lines lines, want 1: $*"; cat "$W/err" >&2; return
    fi
    if ! grep -q '^exitrt: ' "$W/err"; then
        fail "stderr does not start with 'exitrt: ': $*"; return
    fi
    if ! grep -qF -- "$want" "$W/err"; then
        fail "stderr lacks '$want': $*"; echo "  got: $(cat "$W/err")" >&2; return
    fi
}

# run_manifest DIR : every row of DIR/expected.tsv
run_manifest() {
    CORPUS_RUN=$1
    local path cmd status want
    while IFS=$'\t' read -r path cmd status want; do
        case "$path" in '#'* | '') continue ;; esac
        case "$cmd" in
        run) check_case "$status" "$want" "$EXITRT" run "$path" --data "$CORPUS/valid/inputs.npy" --device cpu ;;
        inspect) check_case "$status" "$want" "$EXITRT" inspect "$path" ;;
        data) check_case "$status" "$want" "$EXITRT" run "$CORPUS/valid" --data "$path" --device cpu ;;
        labels) check_case "$status" "$want" "$EXITRT" run "$CORPUS/valid" --data "$CORPUS/valid/inputs.npy" \
            --labels "$path" --device cpu ;;
        *) fail "unknown command '$cmd' in $1/expected.tsv" ;;
        esac
    done <"$1/expected.tsv"
}

# ---- the base model is valid --------------------------------------------------------
for args in "run $CORPUS/valid --data $CORPUS/valid/inputs.npy --labels $CORPUS/valid/labels.npy --device cpu" \
    "inspect $CORPUS/valid"; do
    rc=0
    # shellcheck disable=SC2086
    "$EXITRT" $args >"$W/out" 2>"$W/err" || rc=$?
    checks=$((checks + 1))
    [ "$rc" -eq 0 ] || { fail "the valid base model fails ($rc): exitrt $args"; cat "$W/err" >&2; }
done

# ---- non-finite inputs: counted and listed in the report (text and JSON) ----------------------
rc=0
"$EXITRT" run "$CORPUS/valid" --data "$CORPUS/valid/nonfinite.npy" --device cpu >"$W/out" 2>"$W/err" || rc=$?
checks=$((checks + 1))
[ "$rc" -eq 0 ] && grep -qx 'non-finite   2 samples: rows 1, 3' "$W/out" &&
    grep -q 'NaN or Inf inputs 2,' "$W/out" ||
    { fail "the text report does not count 2 non-finite samples ($rc)"; cat "$W/out" "$W/err" >&2; }
rc=0
"$EXITRT" run "$CORPUS/valid" --data "$CORPUS/valid/nonfinite.npy" --device cpu --json >"$W/out" 2>"$W/err" || rc=$?
checks=$((checks + 1))
[ "$rc" -eq 0 ] && grep -q '"nonfinite_samples":2' "$W/out" &&
    grep -q '"nonfinite_inputs":2' "$W/out" && grep -qF '"nonfinite_rows":[1,3]' "$W/out" ||
    { fail "the JSON report does not count 2 non-finite samples ($rc)"; cat "$W/out" "$W/err" >&2; }

# ---- the committed corpus -------------------------------------------------------------
run_manifest "$CORPUS"
models=$(ls "$CORPUS/models" | wc -l)
datafiles=$(ls "$CORPUS/data" | wc -l)

# ---- FIFOs: refused at once ---------------------------------------------------------------
mkdir -p "$W/fifo"
cp "$CORPUS/valid/model.json" "$W/fifo/model.json"
mkfifo "$W/fifo/w.safetensors" "$W/fifo/data.npy"
CORPUS_RUN=$W
check_case 1 "w.safetensors: not a regular file" "$EXITRT" inspect "$W/fifo"
check_case 1 "data.npy: not a regular file" "$EXITRT" run "$CORPUS/valid" --data "$W/fifo/data.npy" --device cpu
rm -f "$W/fifo/model.json"
mkfifo "$W/fifo/model.json"
check_case 1 "model.json: not a regular file" "$EXITRT" inspect "$W/fifo"

# ---- symlinks out of the model directory: refused; one that stays inside: followed -----
# (made here, beside a copy of the valid model, so that the committed corpus holds no links)
mkdir -p "$W/links/m"
cp "$CORPUS/valid/model.json" "$CORPUS/valid/w.safetensors" "$W/links/m/"
ln -s "$CORPUS/valid" "$W/links/m/outside"
ln -s "$CORPUS/valid/w.safetensors" "$W/links/m/out.safetensors"
ln -s w.safetensors "$W/links/m/in.safetensors"
links_model() { sed "s|\"w.safetensors\"|\"$1\"|" "$CORPUS/valid/model.json" >"$W/links/m/model.json"; }
links_model outside/w.safetensors
check_case 1 "model.json: weights: 'outside/w.safetensors' leads to '$CORPUS/valid/w.safetensors', outside the model directory" \
    "$EXITRT" inspect "$W/links/m"
links_model out.safetensors
check_case 1 "model.json: weights: 'out.safetensors' leads to '$CORPUS/valid/w.safetensors', outside the model directory" \
    "$EXITRT" inspect "$W/links/m"
links_model in.safetensors
rc=0
"$EXITRT" inspect "$W/links/m" >"$W/out" 2>"$W/err" || rc=$?
checks=$((checks + 1))
[ "$rc" -eq 0 ] || { fail "a symlink inside the model directory is refused ($rc)"; cat "$W/err" >&2; }

# ---- regenerate and compare; the big cases ----------------------------------------------------
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    /usr/bin/python3 "$CORPUS/make_corpus.py" "$W/regen" >/dev/null
    checks=$((checks + 1))
    for sub in valid models data expected.tsv; do
        diff -r "$CORPUS/$sub" "$W/regen/$sub" >"$W/diff" ||
            { fail "make_corpus.py no longer reproduces $sub:"; head -20 "$W/diff" >&2; }
    done
    /usr/bin/python3 "$CORPUS/make_corpus.py" --big "$W/big"
    run_manifest "$W/big"
    rm -rf "$W/big"
else
    echo "run_corpus: no python3 with numpy: regeneration and big cases not checked"
fi

echo "run_corpus: $models model cases, $datafiles data cases, $checks checks, $fails failed"
[ "$fails" -eq 0 ]
