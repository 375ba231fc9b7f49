#!/usr/bin/env bash
# test_install.sh BUILD_DIR SOURCE_DIR WORK_DIR
#
# Installs the build into a fresh prefix and uses it as a C host program
# would, four ways: through the CMake package (find_package) and through
# pkg-config, each against the shared and the static library. Each program
# (tests/api_example.c, the README's) runs on models/fmnist-resnet and must
# print the exit counts and MACs that `exitrt run --json` gives on the same
# input (64 zero samples). Also: the shared library exports only ert_*
# symbols, and the README's program is tests/api_example.c, word for word.
set -euo pipefail
build=$1 src=$2 work=$3
fail() { echo "test_install: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
model=$src/models/fmnist-resnet
example=$src/tests/api_example.c

cmake --install "$build" --prefix "$prefix" >"$work/install.log"
for f in include/exitrt.h bin/exitrt lib/libexitrt.a lib/pkgconfig/exitrt.pc \
         lib/cmake/exitrt/exitrt-config.cmake lib/cmake/exitrt/exitrt-config-version.cmake \
         lib/cmake/exitrt/exitrt-targets.cmake share/doc/exitrt/FORMAT.md; do
    [ -e "$prefix/$f" ] || fail "not installed: $f"
done
so=$(readlink -f "$prefix/lib/libexitrt.so")
soname=$(objdump -p "$so" | awk '/SONAME/ {print $2}')
[ "$soname" = libexitrt.so.0 ] || fail "SONAME is '$soname', not libexitrt.so.0"

# ---- the Triton backend, when built: finds the installed libexitrt.so.0 through its
# RUNPATH and exports the TRITONBACKEND_* entry points only ----------------------------
if [ -e "$build/triton/backends/exitrt/libtriton_exitrt.so" ]; then
    tb=$prefix/lib/triton/backends/exitrt/libtriton_exitrt.so
    [ -e "$tb" ] || fail "not installed: lib/triton/backends/exitrt/libtriton_exitrt.so"
    dep=$(env -u LD_LIBRARY_PATH ldd "$tb" | awk '$1 == "libexitrt.so.0" {print $3}')
    [ -n "$dep" ] && [ "$(readlink -f "$dep")" = "$(readlink -f "$prefix/lib/libexitrt.so.0")" ] ||
        fail "the installed Triton backend does not find the installed libexitrt.so.0 (got '$dep')"
    tbad=$(nm -D --defined-only "$tb" | awk '{print $3}' | grep -v '^TRITONBACKEND_' || true)
    [ -z "$tbad" ] || fail "libtriton_exitrt.so exports more than TRITONBACKEND_*: $tbad"
    echo "triton backend: installed, finds $dep"
fi

# ---- the exported symbols: ert_* only -------------------------------------------------
syms=$(nm -D --defined-only "$so" | awk '{print $3}')
bad=$(echo "$syms" | grep -v '^ert_' || true)
[ -z "$bad" ] || fail "libexitrt.so exports symbols outside ert_*: $(echo $bad | head -c 400)"
# and they are exactly the functions exitrt.h marks ERT_API (a new call that
# is declared but not exported, or the reverse, shows here)
api=$(/usr/bin/python3 - "$src/include/exitrt.h" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for decl in re.findall(r"^ERT_API\b([^(;]*)\(", text, re.M):
    print(re.findall(r"ert_\w+", decl)[-1])
PY
)
diff <(echo "$api" | sort) <(echo "$syms" | sort) >&2 ||
    fail "the exported symbols differ from exitrt.h's ERT_API functions (< header, > library)"
echo "exported: $(echo "$syms" | wc -l) symbols, all ert_*, the $(echo "$api" | wc -l) ERT_API functions of exitrt.h"

# ---- the README's program is tests/api_example.c ----------------------------------------
/usr/bin/python3 - "$src/README.md" "$example" <<'PY' || fail "README's C program differs from tests/api_example.c"
import re, sys
readme, example = open(sys.argv[1]).read(), open(sys.argv[2]).read()
blocks = re.findall(r"```c\n(.*?)```", readme, re.S)
sys.exit(0 if example in blocks else 1)
PY

# ---- the reference: exitrt run on the same 64 zero samples --------------------------------
/usr/bin/python3 -c "import numpy as np; np.save('$work/zeros.npy', np.zeros((64, 1, 28, 28), np.float32))"
"$prefix/bin/exitrt" run "$model" --data "$work/zeros.npy" --batch 64 --json >"$work/ref.json"
/usr/bin/python3 - "$work/ref.json" >"$work/want.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for e in j["exits"]:
    print(f"{e['name']}: {e['taken']} samples")
print(f"MACs {j['macs_executed']} of {j['macs_full']}")
PY

check() { # check NAME BINARY: runs it and compares with the reference
    local name=$1 bin=$2
    LD_LIBRARY_PATH=$prefix/lib "$bin" "$model" >"$work/$name.out" 2>"$work/$name.err" ||
        fail "$name: exit $?: $(cat "$work/$name.err")"
    diff -u "$work/want.txt" "$work/$name.out" >&2 || fail "$name: output differs from exitrt run"
    echo "$name: $(tr '\n' ';' <"$work/$name.out")"
}
# ldd's whole output first: grep -q stops reading at the first match, and
# under pipefail the writer's SIGPIPE would fail the test
links_shared() {
    local out
    out=$(LD_LIBRARY_PATH=$prefix/lib ldd "$1")
    grep -q "libexitrt.so.0 => $prefix/lib/" <<<"$out"
}

# ---- CMake: find_package(exitrt 0.3), shared and static -----------------------------------
for kind in shared static; do
    static=OFF
    [ $kind = static ] && static=ON
    cmake -S "$src/tests/packaging/consumer" -B "$work/cmake-$kind" -DCMAKE_PREFIX_PATH="$prefix" \
        -DUSE_STATIC=$static -DEXAMPLE_SOURCE="$example" >"$work/cmake-$kind.log" 2>&1 ||
        { cat "$work/cmake-$kind.log" >&2; fail "cmake ($kind): configure"; }
    cmake --build "$work/cmake-$kind" >>"$work/cmake-$kind.log" 2>&1 ||
        { cat "$work/cmake-$kind.log" >&2; fail "cmake ($kind): build"; }
    bin=$work/cmake-$kind/api_example
    if [ $kind = shared ]; then links_shared "$bin" || fail "cmake shared: not linked to the installed libexitrt.so.0"
    else ! links_shared "$bin" || fail "cmake static: linked to libexitrt.so"; fi
    check "cmake-$kind" "$bin"
done

# ---- pkg-config: the shared library, then the static one -------------------------------------
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
cc -o "$work/pc-shared" "$example" $(pkg-config --cflags --libs exitrt) ||
    fail "cc with pkg-config --libs exitrt"
links_shared "$work/pc-shared" || fail "pkg-config shared: not linked to the installed libexitrt.so.0"
check pc-shared "$work/pc-shared"
# -l:libexitrt.a picks the archive where -lexitrt would pick the .so
cc -o "$work/pc-static" "$example" $(pkg-config --cflags exitrt) \
    $(pkg-config --static --libs exitrt | sed 's/-lexitrt\b/-l:libexitrt.a/') ||
    fail "cc with pkg-config --static --libs exitrt"
! links_shared "$work/pc-static" || fail "pkg-config static: linked to libexitrt.so"
check pc-static "$work/pc-static"
echo "test_install: all passed"
