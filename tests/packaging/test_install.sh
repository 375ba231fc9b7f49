#!/usr/bin/env bash
# test_install.sh BUILD_DIR SOURCE_DIR WORK_DIR
#
# Installs the build into a fresh prefix and uses it as a host program
# would: through the CMake package (find_package) in a C project (shared and
# static), a C++-only one (shared and static: tests/packaging/consumer/main.cpp)
# and a mixed one (static), and through pkg-config (shared and static) with
# exitrt.pc alone on its path. Each program (tests/api_example.c, the
# README's) runs on models/fmnist-resnet and must print the exit counts and
# MACs that `exitrt run --json` gives on the same input (64 zero samples).
# Also: the shared library exports only ert_* symbols; the static one has no
# other global symbol, and a program defining the runtime's internal names
# (take, path_join, op_relu, ...) links to it statically; the installed CMake
# package and .pc name no path of this machine; the README's program is
# tests/api_example.c, word for word; ert_plugin_dir_set() moves the CUDA
# plugin's directory (tests/packaging/plugin_dir.c).
set -euo pipefail
build=$1 src=$2 work=$3
fail() { echo "test_install: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
model=$src/models/fmnist-resnet
example=$src/tests/api_example.c

cmake --install "$build" --prefix "$prefix" >"$work/install.log"
# <libdir>: lib/<multiarch> on Debian (CMakeLists.txt), else lib
lib=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$build/CMakeCache.txt")
[ -n "$lib" ] || fail "no CMAKE_INSTALL_LIBDIR in $build/CMakeCache.txt"
for f in include/exitrt.h bin/exitrt $lib/libexitrt.a $lib/pkgconfig/exitrt.pc \
         $lib/cmake/exitrt/exitrt-config.cmake $lib/cmake/exitrt/exitrt-config-version.cmake \
         $lib/cmake/exitrt/exitrt-targets.cmake share/doc/exitrt/FORMAT.md; do
    [ -e "$prefix/$f" ] || fail "not installed: $f"
done
so=$(readlink -f "$prefix/$lib/libexitrt.so")
soname=$(objdump -p "$so" | awk '/SONAME/ {print $2}')
[ "$soname" = libexitrt.so.0 ] || fail "SONAME is '$soname', not libexitrt.so.0"

# ---- the Triton backend, when built: finds the installed libexitrt.so.0 through its
# RUNPATH and exports the TRITONBACKEND_* entry points only ----------------------------
if [ -e "$build/triton/backends/exitrt/libtriton_exitrt.so" ]; then
    tb=$prefix/$lib/triton/backends/exitrt/libtriton_exitrt.so
    [ -e "$tb" ] || fail "not installed: $lib/triton/backends/exitrt/libtriton_exitrt.so"
    dep=$(env -u LD_LIBRARY_PATH ldd "$tb" | awk '$1 == "libexitrt.so.0" {print $3}')
    [ -n "$dep" ] && [ "$(readlink -f "$dep")" = "$(readlink -f "$prefix/$lib/libexitrt.so.0")" ] ||
        fail "the installed Triton backend does not find the installed libexitrt.so.0 (got '$dep')"
    tbad=$(nm -D --defined-only "$tb" | awk '{print $3}' | grep -v '^TRITONBACKEND_' || true)
    [ -z "$tbad" ] || fail "libtriton_exitrt.so exports more than TRITONBACKEND_*: $tbad"
    echo "triton backend: installed, finds $dep"
fi

# ---- the exported symbols: ert_* only -------------------------------------------------
# (each name once: the calls exitrt 0.3 declared with other structs are there
# twice, name@EXITRT_0.3 and name@@EXITRT_0.4, src/pkg/exitrt.map; the
# version names themselves are absolute symbols, not functions)
syms=$(nm -D --defined-only "$so" | awk '$2 != "A" {sub(/@.*/, "", $3); print $3}' | sort -u)
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

# ---- the static library: only ert_* global; a host's own names do not collide --------
a=$prefix/$lib/libexitrt.a
sbad=$(nm -g --defined-only "$a" | awk 'NF == 3 && $3 !~ /^ert_/ {print $3}')
[ -z "$sbad" ] || fail "libexitrt.a has global symbols outside ert_*: $(echo $sbad | head -c 400)"
# the runtime's internal names, as the archive of the objects holds them
# (these collided before: "multiple definition of 'take'"), and a few by hand
core=$build/libexitrt_core.a
names=$( (nm -g --defined-only "$core" 2>/dev/null | awk 'NF == 3 && $3 !~ /^ert_/ {print $3}';
          printf '%s\n' take path_join op_relu graph_run json_get_int plan_build) | sort -u)
[ "$(echo "$names" | wc -l)" -ge 20 ] || fail "only $(echo "$names" | wc -l) internal names in $core"
{
    echo "/* the host's own definitions of the runtime's internal names */"
    for n in $names; do echo "int $n(int x);"; echo "int $n(int x) { return x + 1; }"; done
} >"$work/collide.c"
echo "static hygiene: $(nm -g --defined-only "$a" | awk 'NF == 3' | wc -l) global symbols, all ert_*; a host defines $(echo "$names" | wc -l) internal names"

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
    LD_LIBRARY_PATH=$prefix/$lib "$bin" "$model" >"$work/$name.out" 2>"$work/$name.err" ||
        fail "$name: exit $?: $(cat "$work/$name.err")"
    diff -u "$work/want.txt" "$work/$name.out" >&2 || fail "$name: output differs from exitrt run"
    echo "$name: $(tr '\n' ';' <"$work/$name.out")"
}
# ldd's whole output first: grep -q stops reading at the first match, and
# under pipefail the writer's SIGPIPE would fail the test
links_shared() {
    local out
    out=$(LD_LIBRARY_PATH=$prefix/$lib ldd "$1")
    grep -q "libexitrt.so.0 => $prefix/$lib/" <<<"$out"
}

# ---- the CMake package: nothing private for the shared target, no path of this machine --
grep -q 'INTERFACE_LINK_LIBRARIES' "$prefix/$lib/cmake/exitrt/exitrt-targets.cmake" &&
    fail "the exported targets carry link dependencies (the shared one must bring none)"
for f in "$prefix/$lib"/cmake/exitrt/*.cmake "$prefix/$lib/pkgconfig/exitrt.pc"; do
    hit=$(grep -nE "/usr/local/cuda|/usr/lib|$build|$prefix" "$f" || true)
    [ -z "$hit" ] || fail "$(basename "$f") names a path of this machine: $hit"
done

# ---- CMake: find_package(exitrt 0.4) in C, C++-only and mixed projects ----------------
# name, languages, static, source
for spec in "c-shared C OFF $example" "c-static C ON $example" \
            "cxx-shared CXX OFF $src/tests/packaging/consumer/main.cpp" \
            "cxx-static CXX ON $src/tests/packaging/consumer/main.cpp" \
            "mixed-static C;CXX ON $example"; do
    read -r name langs static source <<<"$spec"
    cmake -S "$src/tests/packaging/consumer" -B "$work/cmake-$name" -DCMAKE_PREFIX_PATH="$prefix" \
        -DLANGS="$langs" -DUSE_STATIC=$static -DEXAMPLE_SOURCE="$source" >"$work/cmake-$name.log" 2>&1 ||
        { cat "$work/cmake-$name.log" >&2; fail "cmake ($name): configure"; }
    cmake --build "$work/cmake-$name" >>"$work/cmake-$name.log" 2>&1 ||
        { cat "$work/cmake-$name.log" >&2; fail "cmake ($name): build"; }
    bin=$work/cmake-$name/api_example
    if [ $static = OFF ]; then links_shared "$bin" || fail "cmake $name: not linked to the installed libexitrt.so.0"
    else ! links_shared "$bin" || fail "cmake $name: linked to libexitrt.so"; fi
    check "cmake-$name" "$bin"
done

# ---- pkg-config with exitrt.pc alone on its path: shared, static, and the collisions ----
export PKG_CONFIG_LIBDIR=$prefix/$lib/pkgconfig PKG_CONFIG_PATH=
cc -o "$work/pc-shared" "$example" $(pkg-config --cflags --libs exitrt) ||
    fail "cc with pkg-config --libs exitrt"
links_shared "$work/pc-shared" || fail "pkg-config shared: not linked to the installed libexitrt.so.0"
check pc-shared "$work/pc-shared"
# -l:libexitrt.a picks the archive where -lexitrt would pick the .so
static_libs=$(pkg-config --static --libs exitrt | sed 's/-lexitrt\b/-l:libexitrt.a/')
cc -o "$work/pc-static" "$example" $(pkg-config --cflags exitrt) $static_libs ||
    fail "cc with pkg-config --static --libs exitrt"
! links_shared "$work/pc-static" || fail "pkg-config static: linked to libexitrt.so"
check pc-static "$work/pc-static"
cc -o "$work/pc-collide" "$example" "$work/collide.c" $(pkg-config --cflags exitrt) $static_libs \
    >"$work/collide.log" 2>&1 || { head -20 "$work/collide.log" >&2; fail "a host defining the runtime's internal names does not link to libexitrt.a"; }
check pc-collide "$work/pc-collide"

# ---- ert_plugin_dir_set: another plugin directory, from a host of the shared library ----
plugin_dir=$prefix/$lib/exitrt
[ -e "$plugin_dir/libexitrt_cuda.so" ] || plugin_dir=
cc -o "$work/plugin_dir" "$src/tests/packaging/plugin_dir.c" $(pkg-config --cflags --libs exitrt) ||
    fail "cc plugin_dir.c"
LD_LIBRARY_PATH=$prefix/$lib "$work/plugin_dir" "$model" "$plugin_dir" >"$work/plugin_dir.out" ||
    fail "plugin_dir (above)"
sed 's/^/plugin_dir: /' "$work/plugin_dir.out"
echo "test_install: all passed"
