#!/usr/bin/env bash
# The one entry point of the README's quick start (Debian 12, as root):
#
#   scripts/setup.sh demo   install dependencies, build, train the demo tokenizer
#                           on Fashion-MNIST and write its results to out/
#   scripts/setup.sh test   install dependencies (and the Python fixture tools),
#                           build, run the whole test suite; the last line reads
#                           "N passed, N failed" and the exit status is non-zero
#                           when a test failed
#
# Also: "deps" (install only) and "build" (install and build). MAGNETS_DEVICE=cuda
# runs every stage of the demo (tokenizer, training, sampling, evaluation) on the
# GPU of a CUDA build.
# Packages already installed are not touched; apt-get runs only for missing ones.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
build_dir=${MAGNETS_BUILD_DIR:-build}
out_dir=${MAGNETS_OUT_DIR:-out}

# The install line of shared/TOOLCHAIN.md plus the default dataset.
build_packages=(meson ninja-build pkg-config cmake libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
    libcxxopts-dev libstb-dev doctest-dev zlib1g-dev
    libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libhdf5-dev hdf5-tools
    libopenmpi-dev openmpi-bin g++ dataset-fashion-mnist)
# Reference tooling used by the tests (fixture checks through h5py; /usr/bin/python3).
test_packages=(python3 python3-torch python3-torchvision python3-h5py python3-scipy ffmpeg)

say() { printf 'setup: %s\n' "$*" >&2; }

usage() {
    cat >&2 <<USAGE
usage: scripts/setup.sh demo|test|deps|build
  demo   install, build, train the demo tokenizer, evaluate, encode, decode (results in $out_dir/)
  test   install, build, run the test suite; prints "N passed, N failed"
  deps   install the packages only
  build  install and build only
USAGE
    exit 2
}

install_packages() {
    local missing=() p
    for p in "$@"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        say "all ${#} packages already installed"
        return
    fi
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { say "not root and no sudo: install ${missing[*]} yourself"; exit 1; }
        sudo=(sudo)
    fi
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# build [TARGET...]: configure once, then compile the targets (default: all).
build() {
    if [[ ! -f "$build_dir/build.ninja" ]]; then
        rm -rf "$build_dir"
        meson setup "$build_dir"
    fi
    # ninja re-runs meson itself when a meson.build changed.
    meson compile -C "$build_dir" "$@"
}

run_demo() {
    local tools="$build_dir/tools"
    # MAGNETS_DEVICE=cuda: every stage on the GPU
    local device="${MAGNETS_DEVICE:-cpu}"
    mkdir -p "$out_dir"
    set -x
    "$tools/magnets-tokenize" train --device "$device" --dataset fashion-mnist --preset demo -o "$out_dir/tok.h5" \
        --recon-png "$out_dir/recon.png" --log "$out_dir/train_log.jsonl"
    "$tools/magnets-tokenize" eval --device "$device" --tokenizer "$out_dir/tok.h5" --dataset fashion-mnist --split test | tee "$out_dir/eval.txt"
    "$tools/magnets-tokenize" encode --device "$device" --tokenizer "$out_dir/tok.h5" --dataset fashion-mnist --split train -o "$out_dir/train_tokens.h5"
    "$tools/magnets-tokenize" encode --device "$device" --tokenizer "$out_dir/tok.h5" --dataset fashion-mnist --split test -o "$out_dir/test_tokens.h5"
    "$tools/magnets-tokenize" decode --device "$device" --tokenizer "$out_dir/tok.h5" -i "$out_dir/test_tokens.h5" --limit 64 -o "$out_dir/samples"
    "$tools/magnets-train" --preset demo --tokens "$out_dir/train_tokens.h5" --val "$out_dir/test_tokens.h5" \
        -o "$out_dir/model.h5" --log "$out_dir/model_log.jsonl" --plot "$out_dir/model_curves.png" --device "$device"
    "$tools/magnets-sample" --model "$out_dir/model.h5" --tokenizer "$out_dir/tok.h5" --per-class 8 --cfg 2 \
        --device "$device" \
        --schedule 8:3,4:3,2:3,1:3 --batch-size 80 -o "$out_dir/generated.h5" --png "$out_dir/generated" \
        --animate "$out_dir/decode.mp4"
    "$tools/magnets-eval" sweep --device "$device" --classifier "$root/data/fmnist_classifier.h5" --model "$out_dir/model.h5" \
        --tokenizer "$out_dir/tok.h5" --per-class 20 --kid-subset-size 200 -o "$out_dir/sweep.md"
    { set +x; } 2>/dev/null
    cat "$out_dir/sweep.md"
    say "done: $out_dir/tok.h5 (tokenizer), $out_dir/recon.png (originals above, reconstructions below),"
    say "      $out_dir/eval.txt, $out_dir/test_tokens.h5, $out_dir/samples/grid.png,"
    say "      $out_dir/model.h5 (nested transformer), $out_dir/model_curves.png and"
    say "      $out_dir/model_curves-accuracy.png (loss and validation accuracy per sub-model),"
    say "      $out_dir/generated/grid.png (8 samples per class, one row per class), $out_dir/decode.mp4,"
    say "      $out_dir/sweep.md (quality vs compute; 200 samples per row, so FID is biased up), $out_dir/sweep.png"
}

# Prints "N passed, N failed[, N skipped]" from meson's testlog.json (one JSON
# object per line); fails when any test failed or no test ran.
summarize_tests() {
    local log="$build_dir/meson-logs/testlog.json"
    if [[ ! -f "$log" ]]; then
        echo "0 passed, 1 failed"
        return 1
    fi
    /usr/bin/python3 - "$log" <<'PY'
import json, sys
passed = failed = skipped = 0
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        result = json.loads(line).get("result", "")
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:  # FAIL, UNEXPECTEDPASS, TIMEOUT, ERROR, ...
            failed += 1
if passed + failed == 0:
    failed = 1  # a suite that ran nothing has failed
if skipped:
    print(f"({skipped} skipped)")
print(f"{passed} passed, {failed} failed")  # the last line, as CI expects
sys.exit(1 if failed else 0)
PY
}

run_tests() {
    local rc=0
    rm -f "$build_dir/meson-logs/testlog.json"
    meson test -C "$build_dir" --print-errorlogs || rc=$?
    summarize_tests || rc=1
    return "$rc"
}

(($# == 1)) || usage
case "$1" in
    demo) install_packages "${build_packages[@]}"; build magnets-tokenize magnets-train magnets-sample magnets-eval; run_demo ;;
    test) install_packages "${build_packages[@]}" "${test_packages[@]}"; build; run_tests ;;
    deps) install_packages "${build_packages[@]}" "${test_packages[@]}" ;;
    build) install_packages "${build_packages[@]}"; build ;;
    *) usage ;;
esac
