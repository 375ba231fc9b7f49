#!/usr/bin/env bash
# device-pack.sh - run HERE (the build machine), from anywhere: builds the CUDA
# build and packs what bench/device.sh needs on the lent GPU machine into
# .devlibs/ (git-ignored), which the device run must name in `carry`:
#
#   .devlibs/bin/   exitrt, test_gpu, test_cpu
#   .devlibs/lib/   the small non-CUDA libraries they need (Criterion and its
#                   dependencies, OpenBLAS, cJSON, zlib), via
#                   ../shared/device/pack-host-libs.sh (override: PACK_HOST_LIBS)
#   .devlibs/paths  the source and build directories compiled into the tests
#                   (ERT_SOURCE_DIR, ERT_BINARY_DIR): device.sh links them to
#                   the checkout there, so the tests find models and fixtures
#
# Then, with the device tool:  run(command="bench/device.sh", carry=[".devlibs"])
# Environment: BUILD (default build-cuda under the repo), JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-cuda}
jobs=${JOBS:-2}
pack=${PACK_HOST_LIBS:-$root/../shared/device/pack-host-libs.sh}

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
make -C "$build" -j"$jobs" exitrt_cli test_gpu test_cpu
[ -x "$build/tests/test_gpu" ] || { echo "device-pack: no test_gpu: is the CUDA backend ON?" >&2; exit 1; }

dest=$root/.devlibs
rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib"
cp "$build/exitrt" "$build/tests/test_gpu" "$build/tests/test_cpu" "$dest/bin/"
"$pack" "$dest/lib" "$dest/bin/exitrt" "$dest/bin/test_gpu" "$dest/bin/test_cpu"
printf 'source %s\nbuild %s\n' "$root" "$build" >"$dest/paths"
git -C "$root" rev-parse HEAD >"$dest/commit" 2>/dev/null || echo unknown >"$dest/commit"
git -C "$root" status --short >"$dest/tree-status" 2>/dev/null || true
du -sh "$dest"
# the device call carries the working tree and .devlibs together: 64 MiB at most
kb=$(( $(du -sk "$dest" | cut -f1) + $(git -C "$root" ls-files -co --exclude-standard -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1) ))
[ "$kb" -lt 62000 ] || echo "device-pack: warning: tree + .devlibs = ${kb} KiB, near or over the 64 MiB carry limit" >&2
