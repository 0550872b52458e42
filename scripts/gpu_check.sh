#!/usr/bin/env bash
# The CUDA backend on the GPU machine, in one short run (see shared/TOOLCHAIN.md):
# the GPU machine has CUDA, cuBLAS, cuDNN and HDF5 but no oneDNN, libav or stb,
# so the tests are built here and carried there as a small bundle.
#
#   scripts/gpu_check.sh prepare     # here: build-gpu/ (static libmagnets, no
#                                    # oneDNN/libav) -> gpu-bundle/ (~ a few MB)
#   scripts/gpu_check.sh run         # there: consistency tests of every GPU op
#                                    # against the CPU reference, then timings
#
# With the device tool: run(command="scripts/gpu_check.sh run", carry=["gpu-bundle"]).
# Prints one line per test binary and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bundle=gpu-bundle
tests=(test_backend test_cuda_ops)

prepare() {
    set -e
    if [[ ! -d build-gpu ]]; then
        meson setup build-gpu -Donednn=disabled -Dlibav=disabled -Dcuda=enabled -Dgpu_arch=90 \
            -Ddefault_library=static
    fi
    ninja -C build-gpu "${tests[@]/#/tests/}"
    rm -rf "$bundle" && mkdir -p "$bundle"
    for t in "${tests[@]}"; do cp "build-gpu/tests/$t" "$bundle/"; done
    # Shared libraries the GPU machine lacks (stb); CUDA, HDF5 and libgomp are there.
    for lib in libstb.so.0; do
        p="$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')"
        [[ -n "$p" ]] && cp -L "$p" "$bundle/"
    done
    du -sh "$bundle"
    echo "gpu_check.sh: bundle ready; on the GPU machine: scripts/gpu_check.sh run (carry gpu-bundle)"
}

run() {
    [[ -d "$bundle" ]] || { echo "gpu_check.sh: no $bundle/ (run 'scripts/gpu_check.sh prepare' first)" >&2; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    export LD_LIBRARY_PATH="$PWD/$bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    local passed=0 failed=0
    for t in "${tests[@]}"; do
        echo "== $t"
        local log="${OUT:-/tmp}/$t.log"
        if "$bundle/$t" --duration=true >"$log" 2>&1; then
            passed=$((passed + 1)); tail -4 "$log"; echo "ok - $t"
        else
            failed=$((failed + 1)); tail -60 "$log"; echo "not ok - $t"
        fi
    done
    echo "$passed passed, $failed failed"
    ((failed == 0))
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
