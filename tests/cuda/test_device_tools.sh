#!/usr/bin/env bash
# test_device_tools.sh - what the GPU check (bench/device.sh) runs besides
# exitrt, checked without a GPU (run by CTest as device_tools):
#   - the real-scale generators give byte-identical files from the same seed
#     and other files from another (bench/make_resnet50.py in a small
#     configuration, bench/make_encoder.py --tiny): the device run generates
#     the models it benchmarks rather than carrying them;
#   - tests/cuda/compare_predictions.py --want-note fails a run whose engine
#     note lacks the text (a graphs comparison that fell back to "graphs: off"
#     must not pass) and passes one that has it;
#   - bench/gpu_peer.py as exitrt bench's peer, on the CPU on a tiny padded
#     BERT-style model: it runs, checks its decisions (none differ from
#     exitrt's), reports its variants (those it cannot run here say why) and
#     writes cells exitrt bench reads.
#
#   test_device_tools.sh EXITRT WORKDIR SOURCE_DIR PYTHON
set -euo pipefail
exitrt=$1
work=$2
src=$3
py=$4
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

# ---- generators: same seed, same bytes ----------------------------------------------
r50() { "$py" "$src/bench/make_resnet50.py" "$1" --image 64 --width-div 8 --samples 3 --seed "$2" >/dev/null; }
r50 a 5
r50 b 5
r50 c 6
for f in model.json model.safetensors sample_data.npy sample_labels.npy; do
    cmp -s "a/$f" "b/$f" || fail "make_resnet50.py seed 5 twice: $f differs"
done
cmp -s a/model.safetensors c/model.safetensors && fail "make_resnet50.py: seeds 5 and 6 give the same weights"
"$exitrt" inspect a >inspect.txt || fail "exitrt cannot load make_resnet50.py's model: $(tail -3 inspect.txt)"
grep -q 'exit1' inspect.txt && grep -q 'exit2' inspect.txt || fail "make_resnet50.py: exits missing"
"$py" "$src/bench/make_encoder.py" e1 --tiny --seed 3 --samples 5 >/dev/null
"$py" "$src/bench/make_encoder.py" e2 --tiny --seed 3 --samples 5 >/dev/null
for f in model.json model.safetensors sample_data.npy sample_labels.npy; do
    cmp -s "e1/$f" "e2/$f" || fail "make_encoder.py --tiny seed 3 twice: $f differs"
done
echo "generators: byte-identical from the same seed"

# ---- compare_predictions.py --want-note -----------------------------------------------
m=$src/models/fmnist-mlp3
"$exitrt" run "$m" --device cpu --mode masked --limit 100 --json --predictions w.csv --logits w.npy >w.json
"$exitrt" run "$m" --device cpu --mode compacted --graph-buckets 8 --limit 100 --json \
    --predictions g.csv --logits g.npy >g.json
cmp="$py $src/tests/cuda/compare_predictions.py"
$cmp w g plain >cmp1.txt || fail "compare_predictions.py without --want-note: $(cat cmp1.txt)"
if $cmp w g graphs --want-note "graphs: on" >cmp2.txt; then
    fail "compare_predictions.py --want-note 'graphs: on' passed a run without graphs: $(cat cmp2.txt)"
fi
grep -q "does not say 'graphs: on'" cmp2.txt || fail "no reason given: $(cat cmp2.txt)"
$cmp w g note --want-note "cpu:" >cmp3.txt || fail "--want-note with a text the note has: $(cat cmp3.txt)"
echo "compare_predictions.py: --want-note fails a run without the note"

# ---- gpu_peer.py as exitrt bench's peer, on the CPU ------------------------------------------
if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "gpu_peer.py: not run: $py has no torch"
    exit 77
fi
"$py" "$src/bench/make_encoder.py" bt --tiny --seed 9 --samples 32 >/dev/null
ERT_TORCH_PEER=$src/bench/gpu_peer.py ERT_PYTHON=$py ERT_GPU_PEER_OUT=$work/peer.json \
    ERT_GPU_PEER_VARIANTS=eager,eager-cl,eager-isel,compile-ro,hf-sdpa \
    "$exitrt" bench bt --device cpu --batches 8 --reps 1 --warmup 1 --rep-samples 8 \
    --b1-samples 2 --threads 1 --peer --peer-runs 1 --no-default-profiles \
    --profile balanced=0.5,0.25 --json bench.json >bench.txt 2>&1 || fail "exitrt bench --peer: $(tail -5 bench.txt)"
"$py" - "$work/peer.json" "$work/bench.json" <<'PY'
import json, sys
peer = json.load(open(sys.argv[1]))
bench = json.load(open(sys.argv[2]))
v = {x["name"]: x for x in peer["variants"]}
assert set(v) == {"eager", "eager-cl", "eager-isel", "compile-ro", "hf-sdpa"}, v.keys()
for name in ("eager", "eager-isel"):
    assert "cells" in v[name], (name, v[name])
    for prof, modes in v[name]["mismatches"].items():
        assert all(n == 0 for n in modes.values()), (name, prof, modes)
assert "not for transformer" in v["eager-cl"]["skipped"], v["eager-cl"]
for name in ("compile-ro", "hf-sdpa"):  # here: no torch.compile / transformers, or they ran
    assert "skipped" in v[name] or "cells" in v[name] or "failed" in v[name], v[name]
assert peer["best"], peer
assert bench["peer"]["ran"], bench["peer"]
cells = [c for c in bench["cells"] if c["mode"] == "compacted"]
assert cells and all(c["torch_samples_per_s"] and c["torch_samples_per_s"] > 0 for c in cells), cells
prof = bench["profiles"][0]
assert prof["torch_mismatch_masked"] == 0 and prof["torch_mismatch_compacted"] == 0, prof
print("gpu_peer.py: variants", {k: ("ran" if "cells" in x else x.get("skipped") or x.get("failed"))
                                for k, x in v.items()})
PY
