#!/usr/bin/env bash
# test_nocuda.sh BUILD_DIR SOURCE_DIR WORK_DIR: a machine without CUDA.
#
# The runtime (libexitrt.so.0, libexitrt.a), the `exitrt` command and the
# Triton backend need no CUDA library: only the plugin libexitrt_cuda.so
# does, loaded on first use (src/backend_plugin.h). Checked two ways:
#   - readelf: none of them NEEDs a CUDA library (the plugin NEEDs them);
#   - in a private mount namespace (unshare -m, as root) where every CUDA
#     library is hidden (its directory under an empty tmpfs, or /dev/null
#     bound over the file in a shared system directory), and loading
#     libcudart is first shown to fail: the installed command runs on the
#     CPU with --device auto and `exitrt version`, while --device cuda fails
#     with one line that names what is missing; the README's program
#     (tests/api_example.c), linked to the installed library shared and
#     statically, prints what `exitrt run --device cpu` gives; the Triton
#     backend loads (the server-side run is tests/triton's).
# Exits 77 (skipped) where a mount namespace cannot be made.
set -euo pipefail
build=$1 src=$2 work=$3
fail() { echo "test_nocuda: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
cuda_re='^lib(cuda|cudart|cublas|cublasLt|cudnn[a-z_]*|nvrtc|nvJitLink)\.so'
needed() { readelf -d "$1" | awk '/\(NEEDED\)/ {gsub(/[][]/, "", $5); print $5}'; }

prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
libdir=$(dirname "$(find "$prefix" -name libexitrt.so.0 | head -1)")
[ -d "$libdir" ] || fail "no libexitrt.so.0 installed under $prefix"
plugin=$libdir/exitrt/libexitrt_cuda.so
bins=("$prefix/bin/exitrt" "$libdir/libexitrt.so.0")
tb=$(find "$prefix" -name libtriton_exitrt.so | head -1)
[ -n "$tb" ] && bins+=("$tb")
for b in "${bins[@]}"; do
    bad=$(needed "$b" | grep -E "$cuda_re" || true)
    [ -z "$bad" ] || fail "$(basename "$b") NEEDs CUDA libraries: $(echo $bad)"
done
echo "no CUDA library NEEDed by: $(for b in "${bins[@]}"; do printf '%s ' "$(basename "$b")"; done)"
cuda_needed=
if [ -e "$plugin" ]; then
    cuda_needed=$(needed "$plugin" | grep -E "$cuda_re" | tr '\n' ' ')
    [ -n "$cuda_needed" ] || fail "the plugin $plugin NEEDs no CUDA library: is it the CUDA backend?"
    nm -D --defined-only "$plugin" | awk '{print $3}' | grep -qx ert_cuda_plugin_entry ||
        fail "the plugin does not export ert_cuda_plugin_entry"
    echo "plugin $(basename "$plugin") NEEDs $cuda_needed"
elif grep -q '^ERT_HAVE_CUDA:.*=ON' "$build/CMakeCache.txt" 2>/dev/null; then
    fail "a CUDA build installed no $plugin"
fi

# the README's program, shared (RUNPATH to the prefix) and static; both in
# <prefix>/bin, where the static one looks for the plugin in ../<libdir>/exitrt
export PKG_CONFIG_PATH=$libdir/pkgconfig
cc -o "$prefix/bin/api_example-shared" "$src/tests/api_example.c" \
    $(pkg-config --cflags --libs exitrt) -Wl,-rpath,"$libdir" || fail "cc (shared)"
cc -o "$prefix/bin/api_example-static" "$src/tests/api_example.c" $(pkg-config --cflags exitrt) \
    $(pkg-config --static --libs exitrt | sed 's/-lexitrt\b/-l:libexitrt.a/') || fail "cc (static)"
bad=$(needed "$prefix/bin/api_example-static" | grep -E "$cuda_re|libexitrt" || true)
[ -z "$bad" ] || fail "the statically linked program NEEDs $(echo $bad)"

if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
    echo "test_nocuda: skipped: no mount namespace here (unshare -m needs root)"
    exit 77
fi

# What hides CUDA: every CUDA library the dynamic linker knows of or the
# plugin resolves, by its real path.
{
    ldconfig -p | awk '{print $NF}'
    [ -e "$plugin" ] && ldd "$plugin" | awk '/=> \// {print $3}'
    ls /usr/local/cuda*/lib*/lib*.so* 2>/dev/null || true
} | while read -r f; do
    if [[ $(basename "$f") =~ $cuda_re ]]; then readlink -f "$f"; fi
done | sort -u >"$work/hide.txt"
echo "hiding $(wc -l <"$work/hide.txt") CUDA library files"

cat >"$work/inside.sh" <<'INSIDE'
set -euo pipefail
work=$1 prefix=$2 model=$3 cuda_needed=$4 tb=$5
fail() { echo "test_nocuda: FAIL: $*" >&2; exit 1; }
mount --make-rprivate /
shared_dirs=' /lib /usr/lib /usr/local/lib /lib64 /usr/lib64 '
while read -r f; do
    d=$(dirname "$f")
    case $shared_dirs in
    *" $d "*|*" ${d%/*-linux-gnu} "*) mount --bind /dev/null "$f" ;;
    *) mountpoint -q "$d" || mount -t tmpfs none "$d" ;;
    esac
done <"$work/hide.txt"
# the libraries really are out of reach
for lib in libcudart.so.13 libcudart.so.12 libcudart.so $cuda_needed; do
    if /usr/bin/python3 -c "import ctypes, sys; ctypes.CDLL(sys.argv[1])" "$lib" 2>/dev/null; then
        fail "$lib still loads inside the namespace"
    fi
done
echo "inside: libcudart and $cuda_needed do not load"

exitrt=$prefix/bin/exitrt
"$exitrt" version >"$work/version.txt" 2>&1 || fail "exitrt version: $(cat "$work/version.txt")"
echo "exitrt version: $(tr '\n' ' ' <"$work/version.txt")"
z=$work/zeros.npy
"$exitrt" run "$model" --device cpu --data "$z" --batch 64 --json >"$work/cpu.json" ||
    fail "exitrt run --device cpu"
"$exitrt" run "$model" --device auto --data "$z" --batch 64 --json >"$work/auto.json" 2>"$work/auto.err" ||
    fail "exitrt run --device auto: $(cat "$work/auto.err")"
if "$exitrt" run "$model" --device cuda --data "$z" --batch 64 >"$work/cuda.out" 2>"$work/cuda.err"; then
    fail "exitrt run --device cuda succeeded without CUDA"
fi
[ "$(wc -l <"$work/cuda.err")" -eq 1 ] || fail "--device cuda: not one line: $(cat "$work/cuda.err")"
echo "--device cuda: $(cat "$work/cuda.err")"
for p in shared static; do
    "$prefix/bin/api_example-$p" "$model" >"$work/api-$p.out" 2>"$work/api-$p.err" ||
        fail "api_example-$p: $(cat "$work/api-$p.err")"
done
# the Triton backend loads (lazily: the server's symbols come from the server)
if [ -n "$tb" ]; then
    /usr/bin/python3 -c "import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_LAZY)" "$tb" ||
        fail "libtriton_exitrt.so does not load without CUDA"
    echo "inside: libtriton_exitrt.so loads"
fi
INSIDE

/usr/bin/python3 -c "import numpy as np; np.save('$work/zeros.npy', np.zeros((64, 1, 28, 28), np.float32))"
model=$src/models/fmnist-resnet
unshare -m bash "$work/inside.sh" "$work" "$prefix" "$model" "$cuda_needed" "$tb" ||
    fail "inside the namespace without CUDA (above)"

# --device auto ran on the CPU and agrees with --device cpu; the programs print its figures
/usr/bin/python3 - "$work/cpu.json" "$work/auto.json" >"$work/want.txt" <<'PY' || fail "auto differs from cpu"
import json, sys
cpu, auto = (json.load(open(p)) for p in sys.argv[1:3])
if auto["device"] != "cpu":
    sys.exit(f"--device auto ran on {auto['device']}, not on the CPU")
def figures(j):
    return [f"{e['name']}: {e['taken']} samples" for e in j["exits"]] + \
           [f"MACs {j['macs_executed']} of {j['macs_full']}"]
if figures(cpu) != figures(auto):
    sys.exit(f"auto {figures(auto)} != cpu {figures(cpu)}")
print("\n".join(figures(cpu)))
PY
for p in shared static; do
    diff -u "$work/want.txt" "$work/api-$p.out" >&2 || fail "api_example-$p differs from exitrt run"
done
msg=$(cat "$work/cuda.err")
if [ -n "$cuda_needed" ]; then
    # the plugin is installed: the message names the CUDA library it lacks
    [[ $msg =~ cannot\ load\ the\ CUDA\ backend\ \(.*libexitrt_cuda\.so\):\ lib(cuda|cudart|cublas|cublasLt|cudnn)[a-zA-Z_]*\.so ]] ||
        fail "--device cuda does not name the missing CUDA library: $msg"
else
    [[ $msg == *"no CUDA backend"* ]] || fail "--device cuda: unexpected message: $msg"
fi
echo "api_example shared and static: $(tr '\n' ';' <"$work/want.txt")"
echo "test_nocuda: all passed"
