#!/usr/bin/env bash
# test_clean_root.sh BUILD_DIR SOURCE_DIR WORK_DIR
#
# libexitrt-dev installed alone into a clean Debian root, as a user of the
# packages would install it: a minimal root of this machine's release made
# with mmdebstrap (apt, a C compiler, make, CMake and pkg-config, nothing
# else), then `apt-get install --no-install-recommends ./libexitrt0_*.deb
# ./libexitrt-dev_*.deb` inside it, which must pull every other dependency
# from Debian's archive. In that root the README's program
# (tests/api_example.c) is built with pkg-config (shared and static) and with
# CMake's find_package (shared and static), and each must print the exit
# counts and MACs that this build's `exitrt run` prints on the same 64 zero
# samples of models/fmnist-resnet.
#
# Needs root, mmdebstrap (.ci/deps installs it) and Debian's archive over the
# network; skipped (exit 77) where one is missing, saying which.
set -euo pipefail
build=$1 src=$2 work=$3
fail() { echo "test_clean_root: FAIL: $*" >&2; exit 1; }
skip() { echo "test_clean_root: SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root: mmdebstrap's chroot mode needs root"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (apt-get install mmdebstrap)"
[ -r /etc/os-release ] && . /etc/os-release
suite=${VERSION_CODENAME:-}
[ -n "$suite" ] || skip "no VERSION_CODENAME in /etc/os-release: not a Debian release"
sources=/etc/apt/sources.list.d/debian.sources
[ -r "$sources" ] || sources=/etc/apt/sources.list
host=$(sed -n 's#^\(URIs:\|deb\) *\(\[[^]]*\] *\)\?https\?://\([^/ ]*\).*#\3#p' "$sources" | head -1)
[ -n "$host" ] || skip "no http mirror in $sources"
timeout 10 bash -c "exec 3<>/dev/tcp/$host/80" 2>/dev/null || skip "the archive ($host) cannot be reached"

rm -rf "$work"
mkdir -p "$work/in/debs" "$work/out"
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work/cpack" >"$work/cpack.log" 2>&1 ||
    { cat "$work/cpack.log" >&2; fail "cpack"; }
arch=$(dpkg --print-architecture)
for p in libexitrt0 libexitrt-dev; do
    d=$(ls "$work/cpack/${p}"_*_"$arch".deb 2>/dev/null | head -1)
    [ -n "$d" ] || fail "cpack made no ${p}_*_$arch.deb"
    cp "$d" "$work/in/debs/"
done

# what the program must print: this build's exitrt on the same input
model=$src/models/fmnist-resnet
/usr/bin/python3 -c "import numpy as np; np.save('$work/zeros.npy', np.zeros((64, 1, 28, 28), np.float32))"
"$build/exitrt" run "$model" --device cpu --data "$work/zeros.npy" --batch 64 --json >"$work/ref.json"
/usr/bin/python3 - "$work/ref.json" >"$work/want.txt" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for e in j["exits"]:
    print(f"{e['name']}: {e['taken']} samples")
print(f"MACs {j['macs_executed']} of {j['macs_full']}")
PY

# what goes in: the packages, the program, the CMake consumer, the model
mkdir -p "$work/in/model"
cp "$model/model.json" "$model/model.safetensors" "$work/in/model/"
cp "$src/tests/api_example.c" "$work/in/"
cp -r "$src/tests/packaging/consumer" "$work/in/consumer"
cat >"$work/in/inner.sh" <<'SH'
#!/bin/sh
# runs inside the clean root
set -eu
cd /tmp/t
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends ./debs/*.deb >out/apt.log 2>&1 ||
    { echo "apt-get install ./libexitrt0 ./libexitrt-dev failed:"; tail -30 out/apt.log; exit 1; }
dpkg-query -W -f='${Package} ${Version}\n' libexitrt0 libexitrt-dev >out/installed.txt
run() { ./"$1" model >out/"$1".out 2>out/"$1".err || { echo "$1: exit $?"; cat out/"$1".err; exit 1; }; }
cc -o pc-shared api_example.c $(pkg-config --cflags --libs exitrt)
run pc-shared
cc -o pc-static api_example.c $(pkg-config --cflags exitrt) \
    $(pkg-config --static --libs exitrt | sed 's/-lexitrt\b/-l:libexitrt.a/')
run pc-static
for s in OFF ON; do
    cmake -S consumer -B cm-$s -DLANGS=C -DUSE_STATIC=$s -DEXAMPLE_SOURCE=/tmp/t/api_example.c \
        >out/cmake-$s.log 2>&1 && cmake --build cm-$s >>out/cmake-$s.log 2>&1 ||
        { echo "cmake (static $s):"; tail -30 out/cmake-$s.log; exit 1; }
    cp cm-$s/api_example cmake-$s
    run cmake-$s
done
ldd pc-shared >out/pc-shared.ldd
ldd pc-static >out/pc-static.ldd
SH

# a minimal root: apt, a compiler, make, CMake, pkg-config; the test runs in
# its last hook, and its outputs come back out
mmdebstrap --variant=apt --include=gcc,libc6-dev,make,cmake,pkg-config \
    --customize-hook="mkdir -p \"\$1/tmp/t\"" \
    --customize-hook="copy-in $work/in/debs $work/in/model $work/in/consumer $work/in/api_example.c $work/in/inner.sh /tmp/t" \
    --customize-hook="mkdir -p \"\$1/tmp/t/out\"" \
    --customize-hook='chroot "$1" sh /tmp/t/inner.sh' \
    --customize-hook="sync-out /tmp/t/out $work/out" \
    "$suite" "$work/root.tar" "$sources" >"$work/mmdebstrap.log" 2>&1 ||
    { tail -40 "$work/mmdebstrap.log" >&2; fail "mmdebstrap (or the test inside the root)"; }
rm -f "$work/root.tar"

echo "installed in a clean $suite root: $(tr '\n' ';' <"$work/out/installed.txt")"
for name in pc-shared pc-static cmake-OFF cmake-ON; do
    diff -u "$work/want.txt" "$work/out/$name.out" >&2 || fail "$name: output differs from exitrt run"
    echo "$name: $(tr '\n' ';' <"$work/out/$name.out")"
done
grep -qE 'libexitrt.so.0 => (/usr)?/lib/' "$work/out/pc-shared.ldd" ||
    fail "pkg-config shared: not linked to the packaged libexitrt.so.0"
! grep -q 'libexitrt.so' "$work/out/pc-static.ldd" || fail "pkg-config static: linked to libexitrt.so"
echo "test_clean_root: all passed"
