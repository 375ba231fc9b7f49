#!/usr/bin/env bash
# test_deb.sh BUILD_DIR WORK_DIR: `cpack -G DEB` builds the Debian packages,
# split as Debian splits a library (CMakeLists.txt): libexitrt0, libexitrt-dev,
# exitrt, and libexitrt-cuda0 / triton-exitrt where built. Checks each
# package's files (multiarch paths, copyright, changelog), its Depends, the
# shlibs and ldconfig trigger of libexitrt0, stripped binaries, a .pc without
# paths of this machine, that apt knows every dependency and would install
# libexitrt-dev (simulated), and that lintian (when installed) reports no
# error.
set -euo pipefail
build=$1 work=$2
fail() { echo "test_deb: FAIL: $*" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work"
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$work" >"$work/cpack.log" 2>&1 ||
    { cat "$work/cpack.log" >&2; fail "cpack"; }
arch=$(dpkg --print-architecture)
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
L=./usr/lib/$triplet
deb() { # deb PACKAGE: the path of its .deb
    local d
    d=$(ls "$work"/"$1"_*_"$arch".deb 2>/dev/null | head -1)
    [ -n "$d" ] || fail "no $1_*_$arch.deb in $work: $(ls "$work"/*.deb 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
    echo "$d"
}
has() { # has PACKAGE FILE...: the package holds each file
    local p=$1 d; shift
    d=$(deb "$p")
    dpkg-deb -c "$d" >"$work/$p.contents"
    for f in "$@" ./usr/share/doc/$p/copyright ./usr/share/doc/$p/changelog.Debian.gz; do
        grep -q " $f\( \|$\)" "$work/$p.contents" || fail "$p lacks $f"
    done
}
depends_on() { # depends_on PACKAGE NAME...: Depends names each
    local p=$1 deps; shift
    deps=$(dpkg-deb -f "$(deb "$p")" Depends)
    for n in "$@"; do
        case $deps in *"$n"*) ;; *) fail "$p: Depends '$deps' does not name $n" ;; esac
    done
}
has libexitrt0 $L/libexitrt.so.0.4.0 $L/libexitrt.so.0
has libexitrt-dev ./usr/include/exitrt.h $L/libexitrt.a $L/libexitrt.so $L/pkgconfig/exitrt.pc \
    $L/cmake/exitrt/exitrt-config.cmake $L/cmake/exitrt/exitrt-targets.cmake
has exitrt ./usr/bin/exitrt ./usr/share/doc/exitrt/FORMAT.md
depends_on libexitrt0 libopenblas0 libcjson1
depends_on libexitrt-dev "libexitrt0 (=" libopenblas-dev libcjson-dev
depends_on exitrt libopenblas0 libcjson1 zlib1g
# libexitrt0 alone holds the library; the others none of its files
for p in libexitrt-dev exitrt; do
    ! grep -q " $L/libexitrt.so.0" "$work/$p.contents" || fail "$p also ships libexitrt.so.0"
done
if [ -e "$build/$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$build/CMakeCache.txt")/exitrt/libexitrt_cuda.so" ]; then
    has libexitrt-cuda0 $L/exitrt/libexitrt_cuda.so
    rec=$(dpkg-deb -f "$(deb libexitrt-cuda0)" Recommends)
    case $rec in *cudart*) ;; *) fail "libexitrt-cuda0: Recommends '$rec' names no CUDA runtime" ;; esac
fi
if [ -e "$build/triton/backends/exitrt/libtriton_exitrt.so" ]; then
    has triton-exitrt $L/triton/backends/exitrt/libtriton_exitrt.so
    depends_on triton-exitrt "libexitrt0 (="
fi

# libexitrt0's control: shlibs and the ldconfig trigger
dpkg-deb -e "$(deb libexitrt0)" "$work/control-libexitrt0"
grep -q "^libexitrt 0 libexitrt0" "$work/control-libexitrt0/shlibs" || fail "libexitrt0: no shlibs line"
grep -q "^activate-noawait ldconfig" "$work/control-libexitrt0/triggers" || fail "libexitrt0: no ldconfig trigger"
# every package: a maintainer with an address, an extended description
for d in "$work"/*.deb; do
    m=$(dpkg-deb -f "$d" Maintainer)
    [[ $m =~ \<[^@]+@[^@]+\> ]] || fail "$(basename "$d"): Maintainer '$m' has no address"
    [ "$(dpkg-deb -f "$d" Description | wc -l)" -ge 4 ] || fail "$(basename "$d"): no extended description"
done

# the binaries are stripped, the .pc names no path of this machine
rm -rf "$work/root"
for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/root"; done
while read -r f; do
    if readelf -S "$f" 2>/dev/null | grep -q '\.symtab'; then fail "not stripped: ${f#$work/root}"; fi
done < <(find "$work/root" -type f \( -name '*.so*' -o -path '*/bin/*' \))
pc=$(find "$work/root" -name exitrt.pc)
! grep -qE -- '-L/|/usr/local|cuda' "$pc" || fail "exitrt.pc names a path or CUDA: $(grep Libs "$pc")"

# every Depends group names a package Debian's archive (as apt here knows
# it) or this build has; then apt installs libexitrt-dev with libexitrt0
# alone, without recommends (simulated: nothing changes on this machine)
ours=" $(for d in "$work"/*.deb; do dpkg-deb -f "$d" Package; done | tr '\n' ' ') "
known() { [[ $ours == *" $1 "* ]] || apt-cache show --no-all-versions "$1" >/dev/null 2>&1; }
if command -v apt-cache >/dev/null; then
    for d in "$work"/*.deb; do
        IFS=',' read -ra groups <<<"$(dpkg-deb -f "$d" Depends)"
        for g in "${groups[@]}"; do
            ok=0
            IFS='|' read -ra alts <<<"$g"
            for a in "${alts[@]}"; do
                n=$(echo "$a" | sed 's/(.*//; s/[[:space:]]//g')
                if known "$n"; then ok=1; break; fi
            done
            [ $ok = 1 ] || fail "$(basename "$d"): no package here or in apt's lists for '$g'"
        done
    done
    if [ "$(id -u)" = 0 ]; then
        apt-get install -s --no-install-recommends "$(deb libexitrt0)" "$(deb libexitrt-dev)" \
            >"$work/apt-sim.txt" 2>&1 || { cat "$work/apt-sim.txt" >&2; fail "apt-get install -s libexitrt-dev"; }
        grep -q '^Conf libexitrt-dev ' "$work/apt-sim.txt" || fail "apt would not configure libexitrt-dev"
        echo "apt: every Depends is known; libexitrt-dev installs with libexitrt0 alone (simulated)"
    fi
fi

if command -v lintian >/dev/null; then
    lintian --tag-display-limit 0 "$work"/*.deb >"$work/lintian.txt" 2>&1 || true
    ! grep -q '^E: ' "$work/lintian.txt" || { grep '^E: ' "$work/lintian.txt" >&2; fail "lintian reports errors"; }
    echo "lintian: no errors, $(grep -c '^W: ' "$work/lintian.txt" || true) warnings ($(grep '^W: ' "$work/lintian.txt" | awk '{print $3}' | sort -u | tr '\n' ' '))"
else
    echo "lintian: not installed (Debian's lintian; .ci/deps installs it), not run"
fi
for d in "$work"/*.deb; do
    echo "$(basename "$d"): $(dpkg-deb -c "$d" | wc -l) entries; Depends: $(dpkg-deb -f "$d" Depends)"
done
echo "test_deb: all passed"
