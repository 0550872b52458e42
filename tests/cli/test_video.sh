#!/usr/bin/env bash
# CLI tests of video: a video tokenizer on Moving Fashion-MNIST clips
# (video-tiny preset: 8-frame 32x32 clips, slots of 4 frames, 2x4x4 tokens),
# token files with grid_t > 1, the nested transformer on them, sampling to
# filmstrip PNGs and MP4s, decoding, and the errors of mixing image and video.
#
# Environment (set by tests/meson.build): MAGNETS_BIN, MAGNETS_FIXTURES.
# Needs the Fashion-MNIST package (the clips are made from its items); the
# shape checks use /usr/bin/python3 with h5py, the frame counts ffprobe where
# present (the project's own reader, magnets-tokenize info, always).
set -u

bin="${MAGNETS_BIN:?set MAGNETS_BIN}"
tokenize="$bin/magnets-tokenize" train="$bin/magnets-train" sample="$bin/magnets-sample" eval="$bin/magnets-eval"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES to tests/fixtures}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli-video.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -e "${MAGNETS_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}/train-images-idx3-ubyte.gz" ]]; then
    skip_case "video" "no Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    finish
    exit
fi
mp4_frames() { # the project's reader; ffprobe must agree where present
    "$tokenize" info "$1" | sed -n 's/.*MP4, \([0-9]*\) frames.*/\1/p'
}
ffprobe_frames() {
    ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames -of csv=p=0 "$1"
}
have_libav=1

# ---- tokenizer -------------------------------------------------------------------
tok="$tmp/vtok.h5"
run "$tokenize" train --preset video-tiny --limit 64 --steps 10 -o "$tok" --recon-png "$tmp/recon.png"
expect_rc 0; expect_file "$tok"; expect_file "$tmp/recon.png"
expect_err "moving-fashion-mnist (train, 64 clips, 8 frames of 1x32x32); 128 slots of 4 frames"
expect_err "tokens  *2x4x4"
if ((have_h5py)); then
    /usr/bin/python3 - "$tok" <<'PY' || why+=("tokenizer attributes")
import sys, h5py
a = h5py.File(sys.argv[1], "r").attrs
assert (a["frames"], a["clip_frames"], a["tokens_t"], a["channels"]) == (4, 8, 2, 1), dict(a)
PY
fi
done_case "magnets-tokenize train --preset video-tiny: clips cut into slots of 4 frames"

# ---- encode ----------------------------------------------------------------------
run "$tokenize" encode --tokenizer "$tok" --split train --limit 40 -o "$tmp/train.h5"
expect_rc 0; expect_err "40 items, 2x4x4 tokens"
run "$tokenize" encode --tokenizer "$tok" --limit 20 -o "$tmp/test.h5"
expect_rc 0
if ((have_h5py)); then
    /usr/bin/python3 - "$tmp/train.h5" <<'PY' || why+=("token file shape or labels")
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
assert f["tokens"].shape == (40, 2, 4, 4), f["tokens"].shape
assert f.attrs["grid_t"] == 2 and f.attrs["codebook_size"] == 64
lab = f["labels"][()]
assert (lab == np.arange(40) % 10).all(), lab  # clip i has class i mod 10
assert int(f["tokens"][()].max()) < 64
PY
fi
done_case "encode: one item per clip, tokens [clips, 2, 4, 4], balanced labels"

# ---- decode ----------------------------------------------------------------------
run "$tokenize" decode --tokenizer "$tok" -i "$tmp/test.h5" --limit 6 -o "$tmp/dec"
expect_rc 0
expect_file "$tmp/dec/000005.png"; expect_file "$tmp/dec/grid.png"
if grep -q "no MP4" "$tmp/err"; then
    have_libav=0
    skip_case "decode writes an MP4 per clip" "built without libav"
else
    expect_file "$tmp/dec/000005.mp4"; expect_file "$tmp/dec/grid.mp4"
    [[ "$(mp4_frames "$tmp/dec/000002.mp4")" == 8 ]] || why+=("clip MP4: $(mp4_frames "$tmp/dec/000002.mp4") frames, expected 8")
    [[ "$(mp4_frames "$tmp/dec/grid.mp4")" == 8 ]] || why+=("grid MP4: not 8 frames")
    if command -v ffprobe >/dev/null; then
        [[ "$(ffprobe_frames "$tmp/dec/000002.mp4")" == 8 ]] || why+=("ffprobe: clip MP4 not 8 frames")
    fi
    run "$tokenize" info "$tmp/dec/000002.png"
    expect_out "frames  *8"; expect_out "class_name  *Pullover"
    done_case "decode: a filmstrip PNG and an 8-frame MP4 per clip, grid.png and grid.mp4"
fi

# ---- transformer and sampling ----------------------------------------------------
run "$train" --preset tiny --tokens "$tmp/train.h5" --val "$tmp/test.h5" -o "$tmp/m.h5" --steps 6 --log-every 3
expect_rc 0; expect_err "2x4x4"
done_case "magnets-train on video tokens (N = 32)"

run "$sample" --model "$tmp/m.h5" --tokenizer "$tok" --per-class 1 --schedule 4:2,1:2 --png "$tmp/gen" -o "$tmp/gen.h5"
expect_rc 0; expect_file "$tmp/gen/000009.png"; expect_file "$tmp/gen/grid.png"
if ((have_h5py)); then
    /usr/bin/python3 - "$tmp/gen.h5" <<'PY' || why+=("sampled token file")
import sys, h5py
f = h5py.File(sys.argv[1], "r")
assert f["tokens"].shape == (10, 2, 4, 4), f["tokens"].shape
assert f.attrs["grid_t"] == 2
PY
fi
if ((have_libav)); then
    [[ "$(mp4_frames "$tmp/gen/000009.mp4")" == 8 ]] || why+=("sample MP4 not 8 frames")
    [[ "$(mp4_frames "$tmp/gen/grid.mp4")" == 8 ]] || why+=("sample grid MP4 not 8 frames")
fi
run "$tokenize" info "$tmp/gen/000003.png"
expect_out "magnets-schedule  *4:2,1:2"
done_case "magnets-sample --png on a video model: filmstrips with parameters, MP4s"

# ---- mixing image and video ------------------------------------------------------
run "$sample" --model "$tmp/m.h5" --tokenizer "$tok" --count 2 -o "$tmp/x.h5" --animate "$tmp/x.mp4"
expect_usage_error magnets-sample "for a video model use --png"
expect_no_file "$tmp/x.mp4"
done_case "--animate on a video model is refused with what to use instead"

run "$sample" --model "$tmp/m.h5" --tokenizer "$fixtures/tok_tiny.h5" --count 2 -o "$tmp/x.h5" --png "$tmp/x"
expect_runtime_error magnets-sample "tokenizer does not match the model"
expect_err "2x4x4"
done_case "an image tokenizer does not decode a video model's samples"

"$tokenize" encode --tokenizer "$fixtures/tok_tiny.h5" --limit 4 -o "$tmp/img.h5" -q
run "$tokenize" decode --tokenizer "$tok" -i "$tmp/img.h5" -o "$tmp/x"
expect_runtime_error magnets-tokenize "token file does not match the tokenizer"
done_case "a video tokenizer refuses an image token file"

mkdir -p "$tmp/folder/a"
run "$tokenize" encode --tokenizer "$tok" --dataset "$tmp/folder" -o "$tmp/x.h5"
expect_runtime_error magnets-tokenize "only moving-fashion-mnist has them"
expect_no_file "$tmp/x.h5"
done_case "a video tokenizer on an image folder: a clear error"

# ---- per-frame metrics -------------------------------------------------------------
run "$eval" train-classifier --dataset moving-fashion-mnist --image-size 32 --limit 100 --epochs 1 -o "$tmp/cls.h5"
expect_rc 0; expect_err "test accuracy"; expect_err "moving-fashion-mnist test (1600 images)"
run "$eval" metrics --classifier "$tmp/cls.h5" --tokenizer "$tok" --real moving-fashion-mnist:test \
    --generated "$tmp/gen.h5" --limit 20 --kid-subset-size 50 --kid-subsets 5 --json
expect_rc 0
if ((have_h5py)); then # /usr/bin/python3 parses the JSON
    /usr/bin/python3 - "$tmp/out" <<'PY' || why+=("per-frame metrics report")
import json, sys
r = json.load(open(sys.argv[1]))
assert r["real"] == "moving-fashion-mnist:test (20 clips, 160 frames)", r["real"]
assert r["generated"].endswith("(10 clips, 80 frames)"), r["generated"]
assert r["floor"] == "moving-fashion-mnist:train (10 clips, 80 frames)", r["floor"]
# A 6-step model's clips are far from real clips; real training clips are close.
assert r["metrics"]["fid"] > 2 * r["floor_metrics"]["fid"], (r["metrics"], r["floor_metrics"])
PY
fi
done_case "magnets-eval: per-frame metrics of video token files against moving-fashion-mnist"

# A clip classifier (8 frames as channels): clip-level metrics, one feature per clip.
run "$eval" train-classifier --dataset moving-fashion-mnist --image-size 32 --clip-frames 8 --limit 100 --epochs 1 \
    -o "$tmp/ccls.h5"
expect_rc 0; expect_err "8 frames (as channels)"
run "$eval" metrics --classifier "$tmp/ccls.h5" --tokenizer "$tok" --real moving-fashion-mnist:test \
    --generated "$tmp/gen.h5" --limit 20 --kid-subset-size 5 --kid-subsets 5 --json
expect_rc 0
if ((have_h5py)); then
    /usr/bin/python3 - "$tmp/out" <<'PY' || why+=("clip-level metrics report")
import json, sys
r = json.load(open(sys.argv[1]))
assert r["real"] == "moving-fashion-mnist:test (20 clips of 8 frames)", r["real"]
assert r["generated"].endswith("(10 clips of 8 frames)"), r["generated"]
import math
assert math.isfinite(r["metrics"]["fid"]) and r["metrics"]["fid"] > r["floor_metrics"]["fid"], r
PY
fi
run "$eval" train-classifier --dataset moving-fashion-mnist --image-size 32 --clip-frames 4 --limit 10 --epochs 1 \
    -o "$tmp/c4.h5"
run "$eval" metrics --classifier "$tmp/c4.h5" --tokenizer "$tok" --real moving-fashion-mnist:test --generated "$tmp/gen.h5"
expect_runtime_error magnets-eval "takes clips of 4 frames, the tokenizer makes 8"
done_case "magnets-eval: clip-level metrics with a clip classifier; a clip length that differs is refused"

run "$eval" metrics --classifier "$tmp/cls.h5" --tokenizer "$fixtures/tok_tiny.h5" --real moving-fashion-mnist:test \
    --generated "$tmp/gen.h5" --limit 4
expect_runtime_error magnets-eval "token file does not fit the tokenizer"
done_case "magnets-eval: a video token file with an image tokenizer is refused"

run "$tokenize" train --preset video-tiny --clip-frames 6 -o "$tmp/x.h5"
expect_usage_error magnets-tokenize "clip_frames must be a multiple of frames"
done_case "--clip-frames not a multiple of --frames is a usage error"

finish
