#!/usr/bin/env bash
# CLI tests of magnets-eval: train-classifier, metrics (with the floor, JSON,
# perturbation sanity checks, bad input) and sweep on tiny models.
#
# Environment (set by tests/meson.build): MAGNETS_BIN, MAGNETS_FIXTURES.
# Needs Fashion-MNIST. Prints "ok - name" / "not ok - name"; exits 1 on failure.
set -u

eval_="${MAGNETS_BIN:?set MAGNETS_BIN}/magnets-eval"
train="$MAGNETS_BIN/magnets-train"
tokenize="$MAGNETS_BIN/magnets-tokenize"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES}"
tok="$fixtures/tok_tiny.h5"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli-eval.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run "$eval_" --help
expect_rc 0; expect_out "train-classifier"; expect_out "metrics"; expect_out "sweep"
done_case "--help lists the commands"

run "$eval_" train-classifier -o "$tmp/cls.h5" --limit 1024 --epochs 1 --batch-size 64
expect_rc 0; expect_file "$tmp/cls.h5"; expect_err "test accuracy"
done_case "train-classifier writes a checkpoint and reports test accuracy"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    # the feature networks run on the GPU (--device cuda); without one it says so
    run "$eval_" train-classifier -o "$tmp/gpu.h5" --limit 64 --epochs 1 --device cuda
    expect_runtime_error magnets-eval "backend not available: cuda"
    expect_no_file "$tmp/gpu.h5"
    done_case "--device cuda without a GPU: a clear error, nothing written"
fi

m=(metrics --classifier "$tmp/cls.h5" --limit 300 --kid-subsets 5 --kid-subset-size 100)
run "$eval_" "${m[@]}" --real fashion-mnist:test --generated fashion-mnist:train
expect_rc 0; expect_out "FID (classifier features)"; expect_out "floor"; expect_out "feature network: magnets-classifier"
clean="$(awk '/^FID/ {print $4}' "$tmp/out")"
run "$eval_" "${m[@]}" --real fashion-mnist:test --generated fashion-mnist:train --perturb noise:0.3
noisy="$(awk '/^FID/ {print $4}' "$tmp/out")"
/usr/bin/python3 -c "import sys; c, n = float('$clean'), float('$noisy'); sys.exit(0 if n > 5 * c + 1 else 1)" ||
    why+=("noisy FID $noisy is not far above the clean $clean")
done_case "real vs real FID is small; a noisy copy scores far worse"

run "$eval_" "${m[@]}" --real fashion-mnist:test --generated fashion-mnist:train --json
expect_rc 0
/usr/bin/python3 -c "import json,sys; d=json.load(open('$tmp/out')); assert d['metrics']['fid'] >= 0 and 'floor_metrics' in d" ||
    why+=("--json output")
done_case "--json prints one object with metrics and floor"

run "$eval_" "${m[@]}" --generated "$tok"
expect_rc 1; expect_err "magnets-tokens"
done_case "a checkpoint passed as generated set is refused"
"$tokenize" encode --tokenizer "$tok" --split test --limit 64 -o "$tmp/gen.h5" -q
run "$eval_" "${m[@]}" --generated "$tmp/gen.h5"
expect_rc 2; expect_err "tokenizer"
done_case "token files need --tokenizer"
run "$eval_" "${m[@]}" --generated "$tmp/gen.h5" --tokenizer "$tok" --limit 60
expect_rc 0; expect_err "singular"
done_case "fewer samples than feature dimensions: a warning, still a number"
run "$eval_" "${m[@]}" --generated fashion-mnist:train --perturb wobble
expect_rc 2; expect_err "perturb"
done_case "bad --perturb"
mkdir -p "$tmp/empty"
run "$eval_" "${m[@]}" --generated "$tmp/empty"
expect_rc 1
done_case "an empty folder is an error"

# Sample PNGs of another size than the classifier's (pure-Python PNG writer).
mkdir -p "$tmp/small_pngs"
/usr/bin/python3 - "$tmp/small_pngs" <<'PY'
import struct, sys, zlib
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
for i in range(3):
    raw = b"".join(b"\0" + bytes((x * 16 + i) % 256 for x in range(16)) for _ in range(16))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)) + \
          chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(f"{sys.argv[1]}/{i:06d}.png", "wb").write(png)
PY
run "$eval_" "${m[@]}" --generated "$tmp/small_pngs"
expect_rc 1; expect_err "do not fit the classifier"; expect_err "16x16"
done_case "generated images of another size than the classifier's: an error"

if [[ $have_h5py == 1 ]]; then
    cp "$tmp/gen.h5" "$tmp/gen_other.h5"
    /usr/bin/python3 -c "import h5py,sys; f=h5py.File(sys.argv[1],'r+'); n=len(f['class_names']); del f['class_names']; f['class_names']=[('class-%d' % i).encode() for i in range(n)]" "$tmp/gen_other.h5"
    run "$eval_" "${m[@]}" --generated "$tmp/gen_other.h5" --tokenizer "$tok"
    expect_rc 0; expect_err "class accuracy not computed"
    grep -q "^class accuracy" "$tmp/out" && ! grep -q "^class accuracy *-" "$tmp/out" && why+=("class accuracy printed for foreign classes")
    done_case "a set labelled in other classes than the classifier's: no class accuracy, a warning"
else
    skip_case "a set labelled in other classes than the classifier's" "needs h5py"
fi

run "$eval_" metrics --classifier "$tmp/cls.h5" --inception "$tmp/cls.h5" --generated fashion-mnist:train
expect_rc 2; expect_err "exactly one feature network"
done_case "--classifier and --inception together: a usage error"
if [[ -n "${MAGNETS_INCEPTION_FIXTURE:-}" && -s "${MAGNETS_INCEPTION_FIXTURE:-}" ]]; then
    # The fixture's Inception-v3 has random weights: the numbers mean nothing, the path is what is tested.
    run "$eval_" metrics --inception "$MAGNETS_INCEPTION_FIXTURE" --real fashion-mnist:test --generated "$tmp/gen.h5" \
        --tokenizer "$tok" --limit 8 --kid-subsets 2 --kid-subset-size 4 --json
    expect_rc 0
    /usr/bin/python3 -c "
import json, math, sys
d = json.load(open('$tmp/out'))
assert d['feature_network'].startswith('Inception-v3'), d['feature_network']
m = d['metrics']
assert math.isfinite(m['fid']) and m['fid'] >= 0 and m['is'] is None and m['class_accuracy'] is None, m
" || why+=("--inception --json: $(head -c 300 "$tmp/out")")
    done_case "standard FID on Inception-v3 pool3 features (random-weight fixture); no IS or class accuracy"
else
    skip_case "standard FID on Inception-v3 pool3 features" "no Inception fixture (needs python3-torchvision)"
fi

# sweep on a tiny model
"$tokenize" encode --tokenizer "$tok" --split train --limit 256 -o "$tmp/train.h5" -q
"$train" --preset tiny --tokens "$tmp/train.h5" --steps 10 -o "$tmp/model.h5" -q
run "$eval_" sweep --classifier "$tmp/cls.h5" --tokenizer "$tok" --model "$tmp/model.h5" --per-class 3 \
    --config "full=1:4@none" --config "magnets=8:1,4:1,2:1,1:1" --config "bad=16:2" --kid-subsets 2 --kid-subset-size 20 \
    -o "$tmp/sweep.md"
expect_rc 0; expect_file "$tmp/sweep.md"; expect_file "$tmp/sweep.csv"; expect_file "$tmp/sweep.png"; expect_file "$tmp/sweep-speed.png"
grep -q "skipped" "$tmp/sweep.md" || why+=("the configuration naming m16 is not reported as skipped")
[[ "$(grep -c '^|' "$tmp/sweep.md")" -ge 5 ]] || why+=("sweep table too short")
done_case "sweep writes the table, CSV and both plots; impossible configurations are reported"

finish
