#!/usr/bin/env bash
# device-pack.sh - run HERE (a machine without a GPU): builds the CUDA build,
# computes the CPU reference predictions, and packs what bench/device.sh
# needs on the GPU machine into one compressed file, .devlibs/pack.tar.xz
# (git-ignored), which the device call carries:
#
#   run(command="bench/device.sh check", carry=[".devlibs"], timeout_s=300)
#   run(command="bench/device.sh bench", carry=[".devlibs"], timeout_s=360)
#
# The pack holds:
#   bin/     exitrt and test_gpu
#   consumer/  the README's program (tests/api_example.c) built against the
#            installed library: api_example-shared (CMake package, loads
#            lib/libexitrt.so.0) and api_example-static (pkg-config --static)
#   lib/exitrt/libexitrt_cuda.so  the CUDA backend, a plugin the library and
#            the command load (src/backend_plugin.h); <libdir>/exitrt links to it
#   lib/     the non-CUDA shared libraries they need (OpenBLAS, cJSON, zlib,
#            Criterion and its chain), found with ldd; the C runtime and the
#            CUDA, cuBLAS and cuDNN libraries stay behind (the GPU machine has
#            its own; the latter are far too large to carry)
#   models/  bert-tiny: a padded BERT-style token model (bench/make_encoder.py
#            --tiny, seed 7: 4 post-LN blocks, T 16, lengths 2-16, 3 early
#            exits) with REF_SAMPLES samples, for the CLI comparisons beside
#            the bundled models
#   refs/    the CPU backend's predictions, logits and report on the first
#            REF_SAMPLES (default 2000) samples of each bundled model and of
#            models/, in FULL and MASKED (on the CPU, COMPACTED and refill
#            equal MASKED bit for bit or within tolerance.h), so no device
#            time goes to the CPU
#   gen-sha256  the SHA-256 of the real-scale models device.sh bench
#            generates (bench/make_resnet50.py and bench/make_encoder.py,
#            seed 0, 256 samples), generated here once (about 15 s, 0.7 GB
#            of scratch; GEN_HASHES=0 skips it): the device run checks that
#            its files are the same bytes
#   paths    the source and build directories compiled into the tests;
#            device.sh points them at the checkout there
#   commit, tree-status
#
# Fails (exit 1) when the working tree plus the pack would exceed 60 MiB: the
# device call refuses more than 64 MiB before anything runs.
# Environment: BUILD (default build-cuda under the repo), JOBS (default 2), GEN_HASHES,
# REF_SAMPLES.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-cuda}
jobs=${JOBS:-2}
nref=${REF_SAMPLES:-2000}
limit_kib=$((60 * 1024))

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$jobs" --target exitrt_cli test_gpu exitrt exitrt_static exitrt_cuda >/dev/null
[ -x "$build/tests/test_gpu" ] || { echo "device-pack: no test_gpu: is the CUDA backend ON?" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/refs"
cp "$build/exitrt" "$build/tests/test_gpu" "$stage/bin/"

# The shared libraries a bare GPU machine lacks: all that ldd resolves but the
# C runtime and the CUDA ones.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libgcc_s\.so|libstdc\+\+\.so|libcuda\.so|libcudart|libcublas|libcudnn|libnvrtc|libnvJitLink)'
for b in "$stage"/bin/*; do
    ldd "$b" | awk '/=> \// {print $1, $3}' | while read -r name path; do
        [[ $name =~ $skip ]] && continue
        [ -e "$stage/lib/$name" ] || cp -L "$path" "$stage/lib/$name"
    done
done

# A padded BERT-style token model beside the bundled ones.
mkdir -p "$stage/models"
/usr/bin/python3 "$root/bench/make_encoder.py" "$stage/models/bert-tiny" --tiny --seed 7 \
    --samples "$nref" >/dev/null

# CPU references: the same command line device.sh runs with --device cuda.
for mj in "$root"/models/*/model.json "$stage"/models/*/model.json; do
    m=$(dirname "$mj")
    name=$(basename "$m")
    for mode in full masked; do
        p=$stage/refs/$name-$mode
        "$build/exitrt" run "$m" --device cpu --mode "$mode" --limit "$nref" --json \
            --predictions "$p.csv" --logits "$p.npy" >"$p.json"
    done
done

# The library as a host program uses it: installed into a prefix, the
# README's program built against it through the CMake package (shared) and
# pkg-config (static); on the GPU both must print what `exitrt run` prints.
prefix=$(mktemp -d)
cmake --install "$build" --prefix "$prefix/p" >/dev/null
libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$build/CMakeCache.txt")
cmake -S "$root/tests/packaging/consumer" -B "$prefix/c" -DCMAKE_PREFIX_PATH="$prefix/p" \
    -DEXAMPLE_SOURCE="$root/tests/api_example.c" >/dev/null
cmake --build "$prefix/c" >/dev/null
mkdir -p "$stage/consumer"
cp "$prefix/c/api_example" "$stage/consumer/api_example-shared"
PKG_CONFIG_PATH=$prefix/p/$libdir/pkgconfig cc -o "$stage/consumer/api_example-static" \
    "$root/tests/api_example.c" $(PKG_CONFIG_PATH=$prefix/p/$libdir/pkgconfig pkg-config --cflags exitrt) \
    $(PKG_CONFIG_PATH=$prefix/p/$libdir/pkgconfig pkg-config --static --libs exitrt | sed 's/-lexitrt\b/-l:libexitrt.a/')
cp -P "$prefix"/p/$libdir/libexitrt.so* "$stage/lib/"
# the CUDA backend is a plugin (src/backend_plugin.h): lib/exitrt/ beside
# lib/libexitrt.so.0, and <libdir>/exitrt/ as bin/../<libdir>/exitrt for the
# command and the statically linked program
mkdir -p "$stage/lib/exitrt"
cp "$prefix/p/$libdir/exitrt/libexitrt_cuda.so" "$stage/lib/exitrt/"
if [ "$libdir" != lib ]; then
    mkdir -p "$(dirname "$stage/$libdir/exitrt")"
    ln -s "$(realpath --relative-to="$(dirname "$stage/$libdir/exitrt")" "$stage/lib/exitrt")" "$stage/$libdir/exitrt"
fi
rm -rf "$prefix"

# The hashes of the real-scale models, generated as device.sh bench does.
if [ "${GEN_HASHES:-1}" = 1 ]; then
    g=$(mktemp -d)
    /usr/bin/python3 "$root/bench/make_resnet50.py" "$g/resnet50-ee" --seed 0 --samples 256 >/dev/null
    /usr/bin/python3 "$root/bench/make_encoder.py" "$g/bert-base-ee" --seed 0 --samples 256 >/dev/null
    (cd "$g" && sha256sum */model.safetensors */sample_data.npy) >"$stage/gen-sha256"
    rm -rf "$g"
fi

printf 'source %s\nbuild %s\n' "$root" "$build" >"$stage/paths"
git -C "$root" rev-parse HEAD >"$stage/commit" 2>/dev/null || echo unknown >"$stage/commit"
git -C "$root" status --short >"$stage/tree-status" 2>/dev/null || true
echo "$nref" >"$stage/ref-samples"

dest=$root/.devlibs
rm -rf "$dest"
mkdir -p "$dest"
# xz: a third smaller than gzip on the libraries (OpenBLAS, oneDNN), which
# keeps the tree (four copies of the test split) and the pack under the limit
tar cf - -C "$stage" . | xz -T2 -6 >"$dest/pack.tar.xz"

pack_kib=$(du -sk "$dest" | cut -f1)
tree_kib=$(git -C "$root" ls-files -co --exclude-standard -z | (cd "$root" && xargs -0 du -ck) | tail -1 | cut -f1)
total=$((pack_kib + tree_kib))
echo "device-pack: pack ${pack_kib} KiB ($(du -sk "$stage" | cut -f1) KiB unpacked), tree ${tree_kib} KiB, together ${total} KiB of at most ${limit_kib}"
if [ "$total" -gt "$limit_kib" ]; then
    echo "device-pack: FAIL: tree + pack is ${total} KiB, over ${limit_kib} KiB: the device call would be refused" >&2
    exit 1
fi
