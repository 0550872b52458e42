#!/usr/bin/env bash
# CLI tests of magnets-sample on a tiny model trained here: token file with
# parameters and accounting, PNGs with their parameters, grid, trace, MP4,
# shards, determinism across batch sizes, and bad input.
#
# Environment (set by tests/meson.build): MAGNETS_BIN, MAGNETS_FIXTURES.
# Needs Fashion-MNIST. Prints "ok - name" / "not ok - name"; exits 1 on failure.
set -u

sample="${MAGNETS_BIN:?set MAGNETS_BIN}/magnets-sample"
train="$MAGNETS_BIN/magnets-train"
tokenize="$MAGNETS_BIN/magnets-tokenize"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES}"
tok="$fixtures/tok_tiny.h5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli-sample.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
h5attr() { /usr/bin/python3 -c "import h5py,sys; v=h5py.File(sys.argv[1],'r').attrs[sys.argv[2]]; print(v.decode() if isinstance(v,bytes) else v)" "$1" "$2"; }
tokens_of() { /usr/bin/python3 -c "import h5py,sys; print(h5py.File(sys.argv[1],'r')['tokens'][()].tobytes().hex())" "$1"; }

# ---- a tiny model ------------------------------------------------------------
"$tokenize" encode --tokenizer "$tok" --split train --limit 256 -o "$tmp/train.h5" -q
"$train" --preset tiny --tokens "$tmp/train.h5" --steps 20 -o "$tmp/model.h5" -q
[[ -s "$tmp/model.h5" ]] || { echo "Bail out! cannot train the tiny model"; exit 1; }
m=(--model "$tmp/model.h5" --threads 2)

run "$sample" --help
expect_rc 0; expect_out "--schedule"; expect_out "--cache"; expect_out "--animate"; expect_out "--shard"
done_case "--help lists the options"

run "$sample" "${m[@]}" -o "$tmp/s.h5" --per-class 2 --cfg 2 --schedule 8:2,4:2,2:2,1:2 --tokenizer "$tok" \
    --png "$tmp/png" --trace "$tmp/trace.jsonl"
expect_rc 0
expect_file "$tmp/s.h5"; expect_file "$tmp/png/grid.png"; expect_file "$tmp/png/000000.png"; expect_file "$tmp/png/000019.png"
expect_err "GFLOP/image"; expect_err "step  model  refresh"
[[ "$(wc -l <"$tmp/trace.jsonl")" == 160 ]] || why+=("trace has $(wc -l <"$tmp/trace.jsonl") lines, expected 8 steps x 20 images")
done_case "per-class sampling with guidance: token file, PNGs, grid, trace, accounting table"

# The row-stable matmul and attention products give the same bits in AVX2 and
# AVX-512 code, and the rest of the sampler runs the same code either way: the
# same seed gives the same tokens whichever the CPU picks.
if grep -qw avx512f /proc/cpuinfo 2>/dev/null && ((have_h5py)); then
    run env MAGNETS_CPU_ISA=avx2 "$sample" "${m[@]}" -o "$tmp/s-avx2.h5" --per-class 2 --cfg 2 --schedule 8:2,4:2,2:2,1:2
    expect_rc 0
    /usr/bin/python3 - "$tmp/s.h5" "$tmp/s-avx2.h5" <<'PY' >>"$tmp/err" 2>&1 || why+=("tokens differ between AVX-512 and AVX2 runs")
import sys, h5py
a, b = (h5py.File(p, "r")["tokens"][()] for p in sys.argv[1:3])
assert a.shape == b.shape and (a == b).all(), (a.shape, b.shape, int((a != b).sum()))
PY
    done_case "the same seed gives the same tokens with AVX-512 and with AVX2 (MAGNETS_CPU_ISA=avx2)"
else
    skip_case "the same seed gives the same tokens with AVX-512 and with AVX2 (MAGNETS_CPU_ISA=avx2)" "no AVX-512 or no h5py"
fi

run "$sample" --show-params "$tmp/png/000003.png"
expect_rc 0; expect_out "magnets-schedule *8:2,4:2,2:2,1:2"; expect_out "magnets-seed *1"; expect_out "magnets-class *1"
expect_out "magnets-model-hash"
done_case "--show-params reads the PNG's generation parameters"
run "$tokenize" info "$tmp/png/000003.png"
expect_rc 0; expect_out "magnets-schedule"
done_case "magnets-tokenize info shows them too"

if ((have_h5py)); then
    [[ "$(h5attr "$tmp/s.h5" sample_schedule)" == "8:2,4:2,2:2,1:2" ]] || why+=("sample_schedule attribute")
    [[ "$(h5attr "$tmp/s.h5" split)" == "generated" ]] || why+=("split attribute")
    /usr/bin/python3 - "$tmp/s.h5" <<'PY' || why+=("per-step accounting datasets")
import sys, h5py
f = h5py.File(sys.argv[1], "r")
assert f["steps/p"].shape == (8,), f["steps/p"].shape
assert list(f["steps/p"][()]) == [8, 8, 4, 4, 2, 2, 1, 1]
assert list(f["labels"][()]) == [c for c in range(10) for _ in range(2)]
assert f.attrs["gflop_per_image"] < f.attrs["gflop_per_image_full_model"]
PY
    /usr/bin/python3 "$root/scripts/check_h5py.py" -q "$tmp/s.h5" >/dev/null || why+=("check_h5py.py rejects the token file")
    done_case "token file: parameters and per-step accounting (h5py)"
else
    skip_case "token file: parameters and per-step accounting (h5py)" "no h5py"
fi

# ---- determinism: batch sizes, shards --------------------------------------------
run "$sample" "${m[@]}" -o "$tmp/b64.h5" --count 24 --class 3 --class 5 --batch-size 64 --seed 9
run "$sample" "${m[@]}" -o "$tmp/b5.h5" --count 24 --class 3 --class 5 --batch-size 5 --seed 9 --threads 1
for i in 0 1 2; do
    run "$sample" "${m[@]}" -o "$tmp/shard$i.h5" --count 24 --class 3 --class 5 --seed 9 --shard $i/3
    expect_rc 0
done
if ((have_h5py)); then
    [[ "$(tokens_of "$tmp/b64.h5")" == "$(tokens_of "$tmp/b5.h5")" ]] || why+=("batch 64 and batch 5 differ")
    joined="$(tokens_of "$tmp/shard0.h5")$(tokens_of "$tmp/shard1.h5")$(tokens_of "$tmp/shard2.h5")"
    [[ "$joined" == "$(tokens_of "$tmp/b64.h5")" ]] || why+=("shards do not concatenate to the unsharded run")
    [[ "$(h5attr "$tmp/shard1.h5" first_index)" == 16 ]] || why+=("shard 1 first_index")
    done_case "same tokens for batch sizes 64 and 5, 1 and 2 threads; shards concatenate to the whole run"
else
    skip_case "determinism" "no h5py"
fi

# ---- animation -------------------------------------------------------------------
run "$sample" "${m[@]}" -o "$tmp/a.h5" --count 8 --schedule 4:3,1:3 --tokenizer "$tok" --animate "$tmp/a.mp4"
if grep -q "no libav" "$tmp/err"; then
    skip_case "--animate writes one frame per step" "built without libav"
else
    expect_rc 0; expect_file "$tmp/a.mp4"; expect_err "8 frames"
    run "$tokenize" info "$tmp/a.mp4"
    expect_rc 0; expect_out "MP4, 8 frames"
    if command -v ffprobe >/dev/null; then
        n="$(ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$tmp/a.mp4")"
        [[ "$n" == 8 ]] || why+=("ffprobe counts $n frames, expected 8 (6 steps + 2 hold)")
    fi
    done_case "--animate writes one frame per step (+2 hold frames)"
fi

# ---- bad input -------------------------------------------------------------------
run "$sample" "${m[@]}" -o "$tmp/x.h5" --schedule 16:2,1:2
expect_rc 2; expect_err "m_16"
done_case "a schedule naming a sub-model the checkpoint lacks"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --schedule 8:2,4
expect_rc 2; expect_err "schedule"
done_case "malformed schedule"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --cfg -1
expect_rc 2; expect_err "cfg"
done_case "negative guidance scale"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --class 12
expect_rc 2; expect_err "out of range"
done_case "class out of range"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --class zebra
expect_rc 2; expect_err "unknown class"
done_case "unknown class name"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --cache every:0
expect_rc 2; expect_err "cache"
done_case "bad cache policy"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --shard 3/3
expect_rc 2; expect_err "shard"
done_case "bad shard"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --png "$tmp/p2"
expect_rc 2; expect_err "tokenizer"
done_case "--png without --tokenizer"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --device gpu
expect_usage_error magnets-sample "unknown device"
done_case "unknown --device"
run "$sample" "${m[@]}" -o "$tmp/x.h5" --device cpu --backend cuda
expect_usage_error magnets-sample "disagree"
done_case "--device and --backend that disagree"
run "$sample" "${m[@]}" -o "$tmp/dev.h5" --device cpu --schedule 8:2,4:2,2:2,1:2 --count 4
expect_rc 0; expect_file "$tmp/dev.h5"
done_case "--device cpu samples on the CPU"
if ((have_h5py)); then
    /usr/bin/python3 - "$tok" "$tmp/tok64.h5" <<'PY'
import sys, shutil, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    f.attrs["codebook_size"] = np.int64(32)
    cb = f["weights/quant.codebook"][()][:32]
    del f["weights/quant.codebook"]
    f["weights/quant.codebook"] = cb
PY
    run "$sample" "${m[@]}" -o "$tmp/x.h5" --tokenizer "$tmp/tok64.h5" --png "$tmp/p3"
    expect_rc 1; expect_err "does not match"
    expect_no_file "$tmp/x.h5"
    done_case "a tokenizer whose codebook does not match the model"
fi
run "$sample" --model "$tok" -o "$tmp/x.h5"
expect_rc 1; expect_err "magnets-transformer"
done_case "a tokenizer given as the model"

finish
