#!/usr/bin/env bash
# test_deb.sh BUILD_DIR WORK_DIR: `cpack -G DEB` builds the Debian package,
# which must hold the header, both libraries, the command, the .pc file and
# the CMake package, and name its Debian dependencies.
set -euo pipefail
build=$1 work=$2
fail() { echo "test_deb: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work" >"$work/cpack.log" 2>&1 ||
    { cat "$work/cpack.log" >&2; fail "cpack"; }
deb=$(ls "$work"/exitrt_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no exitrt_*.deb in $work"
dpkg-deb -c "$deb" >"$work/contents.txt"
for f in ./usr/include/exitrt.h ./usr/lib/libexitrt.a ./usr/lib/libexitrt.so.0.3.0 \
         ./usr/lib/libexitrt.so.0 ./usr/lib/libexitrt.so ./usr/bin/exitrt \
         ./usr/lib/pkgconfig/exitrt.pc ./usr/lib/cmake/exitrt/exitrt-config.cmake \
         ./usr/lib/cmake/exitrt/exitrt-targets.cmake ./usr/share/doc/exitrt/FORMAT.md; do
    grep -q " $f\( \|$\)" "$work/contents.txt" || fail "$(basename "$deb") lacks $f"
done
deps=$(dpkg-deb -f "$deb" Depends)
for d in libopenblas0 libcjson1; do
    case $deps in *"$d"*) ;; *) fail "Depends '$deps' does not name $d" ;; esac
done
echo "$(basename "$deb"): $(wc -l <"$work/contents.txt") entries; Depends: $deps"
