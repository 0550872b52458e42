#!/usr/bin/env bash
# CLI tests of magnets-tokenize: exit status, key stdout/stderr content, and
# that a failing command leaves no file under its output name.
#
# Environment (set by tests/meson.build):
#   MAGNETS_BIN       folder with magnets-tokenize
#   MAGNETS_FIXTURES  tests/fixtures (tok_tiny.h5: `magnets-tokenize train --preset tiny
#                     --limit 512 --steps 30 --threads 1 -o tok_tiny.h5`, about 170 KB;
#                     regenerate it when the tokenizer's architecture or format changes)
# Needs Fashion-MNIST (dataset-fashion-mnist). Cases that patch HDF5 files use
# /usr/bin/python3 with h5py and are skipped without it.
# Prints "ok - name" / "not ok - name" per case; exits 1 when any case failed.
set -u

bin="${MAGNETS_BIN:?set MAGNETS_BIN to the folder of magnets-tokenize}/magnets-tokenize"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES to tests/fixtures}"
tok="$fixtures/tok_tiny.h5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

passed=0 failed=0 skipped=0
why=()
rc=0

have_h5py=0
if /usr/bin/python3 -c 'import h5py' 2>/dev/null; then have_h5py=1; fi
have_python=0
if /usr/bin/python3 -c 'import json' 2>/dev/null; then have_python=1; fi

# run ARGS...: the tool with stdout in $tmp/out, stderr in $tmp/err, status in $rc.
run() {
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
# Same with an environment assignment first: run_env VAR=value ARGS...
run_env() {
    env "$1" "$bin" "${@:2}" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}

expect_rc() { [[ "$rc" == "$1" ]] || why+=("exit status $rc, expected $1"); }
expect_fail() { [[ "$rc" != 0 ]] || why+=("exit status 0, expected a failure"); }
expect_out() { grep -q -- "$1" "$tmp/out" || why+=("stdout lacks '$1'"); }
expect_err() { grep -q -- "$1" "$tmp/err" || why+=("stderr lacks '$1'"); }
expect_empty_out() { [[ ! -s "$tmp/out" ]] || why+=("stdout is not empty"); }
expect_file() { [[ -s "$1" ]] || why+=("missing or empty: $1"); }
# A failed command must leave its output folder as it was: empty.
expect_empty_dir() {
    local left
    left="$(ls -A "$1" 2>/dev/null)"
    [[ -z "$left" ]] || why+=("left in $1: $left")
}
# A runtime failure: exit 1, "magnets-tokenize: error:" and a hint on stderr.
expect_runtime_error() {
    expect_rc 1
    expect_err "^magnets-tokenize: error: "
    [[ $# -gt 0 ]] && expect_err "$1"
    return 0
}
expect_usage_error() {
    expect_rc 2
    expect_err "^magnets-tokenize: usage error: "
    expect_err "try 'magnets-tokenize"
    [[ $# -gt 0 ]] && expect_err "$1"
    return 0
}

# done_case NAME: reports the checks made since the previous case.
done_case() {
    if ((${#why[@]} == 0)); then
        echo "ok - $1"
        passed=$((passed + 1))
    else
        echo "not ok - $1"
        local w
        for w in "${why[@]}"; do echo "#   $w"; done
        echo "#   stderr:"
        sed -n '1,15s/^/#     /p' "$tmp/err"
        failed=$((failed + 1))
    fi
    why=()
}
skip_case() {
    echo "ok - $1 # SKIP $2"
    skipped=$((skipped + 1))
}

# A fresh empty folder for one case's outputs.
fresh() {
    local d="$tmp/case.$1"
    rm -rf "$d"
    mkdir -p "$d"
    echo "$d"
}

# h5py helpers (only called when have_h5py=1).
set_root_attr() { # FILE NAME INT
    /usr/bin/python3 - "$@" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    f.attrs[sys.argv[2]] = np.int64(sys.argv[3])
PY
}
same_weights() { # A B: exit 0 when every /weights dataset is bitwise equal
    /usr/bin/python3 - "$@" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as a, h5py.File(sys.argv[2], "r") as b:
    names = []
    a["weights"].visit(lambda n: names.append(n) if isinstance(a["weights"][n], h5py.Dataset) else None)
    other = []
    b["weights"].visit(lambda n: other.append(n) if isinstance(b["weights"][n], h5py.Dataset) else None)
    if sorted(names) != sorted(other) or not names:
        sys.exit("different weight names")
    for n in names:
        x, y = a["weights"][n][()], b["weights"][n][()]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            sys.exit("weights differ: " + n)
PY
}
weights_hash() { # FILE -> the weights hash printed by info --json
    "$bin" info --json "$1" 2>/dev/null | sed -n 's/.*"weights_hash":"\([0-9a-f]*\)".*/\1/p'
}

if [[ ! -x "$bin" ]]; then
    echo "not ok - magnets-tokenize exists ($bin)"
    echo "0 passed, 1 failed"
    exit 1
fi

# ---- help, version, usage errors --------------------------------------------

run --help
expect_rc 0; expect_out "train"; expect_out "encode"; expect_out "--threads"
[[ ! -s "$tmp/err" ]] || why+=("stderr not empty")
done_case "--help prints the commands to stdout"

run train --help
expect_rc 0; expect_out "--codebook-size"; expect_out "--resume"; expect_out "(required)"
done_case "train --help lists the train options"

for cmd in encode decode eval info; do
    run "$cmd" --help
    expect_rc 0; expect_out "usage: magnets-tokenize $cmd"
    done_case "$cmd --help"
done

run --version
expect_rc 0
grep -Eq '^magnets-tokenize [0-9]+\.[0-9]+\.[0-9]+$' "$tmp/out" || why+=("version line: $(cat "$tmp/out")")
done_case "--version"

run
expect_usage_error "missing command"
done_case "no command is a usage error"

run frobnicate
expect_usage_error "unknown command 'frobnicate'"
done_case "unknown command is a usage error"

run train --no-such-option -o "$tmp/x.h5"
expect_usage_error "no-such-option"
expect_err "try 'magnets-tokenize train --help'"
done_case "unknown option is a usage error"

d="$(fresh preset)"
run train --preset enormous -o "$d/x.h5"
expect_usage_error "enormous"
expect_err "tiny"
expect_empty_dir "$d"
done_case "bad preset is a usage error naming the choices"

run train
expect_usage_error "--output"
done_case "missing --output is a usage error"

d="$(fresh badint)"
run train --steps many -o "$d/x.h5"
expect_usage_error "many"
expect_empty_dir "$d"
done_case "non-numeric --steps is a usage error"

run train --steps 0 -o "$d/x.h5"
expect_usage_error "--steps must be positive"
done_case "zero --steps is a usage error"

run train --quantizer kmeans -o "$d/x.h5"
expect_usage_error "kmeans"
done_case "bad --quantizer is a usage error"

run eval --tokenizer "$tok" --split validation
expect_usage_error "validation"
done_case "bad --split is a usage error"

run encode --tokenizer "$tok" --backend gpu9000 -o "$d/x.h5"
expect_usage_error "gpu9000"
expect_empty_dir "$d"
done_case "unknown --backend is a usage error"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    # the tokenizer runs on the GPU (--device cuda); without one it says so
    run encode --tokenizer "$tok" --device cuda -o "$d/x.h5"
    expect_runtime_error "backend not available: cuda"
    expect_empty_dir "$d"
    done_case "--device cuda without a GPU: a clear error, nothing written"
fi

run info
expect_usage_error "FILE"
done_case "info without a file is a usage error"

run encode --tokenizer "$tok" -o "$d/x.h5" stray-operand
expect_usage_error "stray-operand"
done_case "stray operand is a usage error"

# ---- train --------------------------------------------------------------------

d="$(fresh train)"
run train --preset tiny --limit 256 --steps 4 --log-every 2 -o "$d/t.h5" --log "$d/log.jsonl" --recon-png "$d/recon.png"
expect_rc 0
expect_file "$d/t.h5"; expect_file "$d/recon.png"; expect_file "$d/log.jsonl"
expect_err "resolved configuration"
expect_err "codebook_size"
expect_err "step      4/4"
expect_err "psnr"
expect_empty_out
[[ "$(wc -l <"$d/log.jsonl" 2>/dev/null)" == 2 ]] || why+=("log.jsonl should hold 2 lines")
grep -q '"step":4,"steps":4' "$d/log.jsonl" 2>/dev/null || why+=("log.jsonl lacks step 4")
done_case "train tiny writes a checkpoint, a log and a reconstruction PNG"

run info "$d/t.h5"
expect_rc 0; expect_out "magnets-tokenizer"; expect_out "/weights/enc.conv_in.weight"; expect_out "codebook_size"
done_case "info shows a tokenizer checkpoint's format and datasets"

run info "$d/recon.png"
expect_rc 0; expect_out "PNG"; expect_out "tokenizer_hash"
done_case "info shows the reconstruction PNG's text chunks"

if ((have_python)); then
    run info --json "$d/t.h5"
    expect_rc 0
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["attrs"]["format"]=="magnets-tokenizer"; assert len(d["weights_hash"])==16' \
        "$tmp/out" 2>>"$tmp/err" || why+=("info --json is not the expected JSON")
    done_case "info --json is valid JSON with the weights hash"
else
    skip_case "info --json is valid JSON with the weights hash" "no /usr/bin/python3"
fi

# decode(encode(x)) must be the tokenizer's own reconstruction: the bottom half of
# recon.png (32 test images, tiles 128x128 = 32x32 upscaled x4, 8 columns, 2 px
# padding) against decode's PNGs of the first 32 encoded test images.
if ((have_python)); then
    d2="$(fresh roundtrip)"
    "$bin" encode -q --tokenizer "$d/t.h5" --split test --limit 32 -o "$d2/tokens.h5" 2>"$tmp/err" &&
        "$bin" decode -q --tokenizer "$d/t.h5" -i "$d2/tokens.h5" -o "$d2/dec" 2>>"$tmp/err" ||
        why+=("encode/decode failed")
    /usr/bin/python3 - "$d/recon.png" "$d2/dec" 2>>"$tmp/err" <<'PY' || why+=("decoded images differ from recon.png")
import struct, sys, zlib

def read_png(path):
    # 8-bit gray/RGB/RGBA, non-interlaced: enough for the PNGs magnets writes.
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0
            ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride = zlib.decompress(idat), w * ch
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, ch, rows

gw, gh, gch, grid = read_png(sys.argv[1])
for j in range(32):
    w, h, ch, img = read_png(f"{sys.argv[2]}/{j:06d}.png")
    assert (w, h, ch) == (32, 32, gch), (w, h, ch, gch)
    t = 32 + j                       # reconstructions follow the 32 originals
    x0, y0 = 2 + (t % 8) * 130, 2 + (t // 8) * 130
    for y in range(32):
        for x in range(32):
            for k in range(ch):
                if grid[y0 + 4 * y][(x0 + 4 * x) * ch + k] != img[y][x * ch + k]:
                    sys.exit(f"image {j} differs at ({x}, {y})")
PY
    done_case "decode(encode(x)) equals the reconstructions of --recon-png"
else
    skip_case "decode(encode(x)) equals the reconstructions of --recon-png" "no /usr/bin/python3"
fi

# ---- encode / decode / eval on the committed tiny tokenizer -------------------

d="$(fresh codec)"
run encode --tokenizer "$tok" --dataset fashion-mnist --split test --limit 64 -o "$d/tokens.h5"
expect_rc 0; expect_file "$d/tokens.h5"; expect_empty_out
done_case "encode 64 test images"

run info "$d/tokens.h5"
expect_rc 0; expect_out "magnets-tokens"; expect_out "/tokens"; expect_out "/labels"; expect_out "tokenizer_hash"
done_case "info shows the token file's format and datasets"

if ((have_h5py)); then
    /usr/bin/python3 - "$d/tokens.h5" >"$tmp/out" 2>"$tmp/err" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    assert f.attrs["format"] in (b"magnets-tokens", "magnets-tokens"), f.attrs["format"]
    t = f["tokens"]
    assert t.dtype == np.uint16, t.dtype
    assert t.shape[0] == 64 and t.shape[-2:] == (8, 8), t.shape
    assert f["labels"].shape == (64,)
    assert int(t[()].max()) < int(f.attrs["codebook_size"])
PY
    rc=$?
    expect_rc 0
    done_case "the token file opens in h5py with tokens [64, ..., 8, 8] and labels"

    # The documented layouts (magnets-formats(5)), checked by scripts/check_h5py.py.
    /usr/bin/python3 "$root/scripts/check_h5py.py" --count 64 --tokenizer "$tok" "$d/tokens.h5" "$tok" \
        >"$tmp/out" 2>"$tmp/err"
    rc=$?
    expect_rc 0; expect_out "tokens.h5: OK"; expect_out "tok_tiny.h5: OK"
    done_case "check_h5py.py finds the documented datasets and attributes in the token file and checkpoint"
else
    skip_case "the token file opens in h5py" "h5py not importable by /usr/bin/python3"
fi

run decode --tokenizer "$tok" -i "$d/tokens.h5" -o "$d/dec"
expect_rc 0
expect_file "$d/dec/000000.png"; expect_file "$d/dec/000063.png"; expect_file "$d/dec/grid.png"
[[ ! -e "$d/dec/000064.png" ]] || why+=("more PNGs than items")
done_case "decode writes one PNG per item and grid.png"

run info "$d/dec/000005.png"
expect_rc 0; expect_out "tokenizer_hash"; expect_out "class_name"; expect_out "index"; expect_out "tokens.h5"
done_case "decoded PNGs carry source, index, label and tokenizer hash"

run decode --tokenizer "$tok" -i "$d/tokens.h5" -i "$d/tokens.h5" --limit 100 -o "$d/dec2"
expect_rc 0; expect_file "$d/dec2/000099.png"
[[ ! -e "$d/dec2/000100.png" ]] || why+=("--limit not applied")
done_case "decode several token files together with --limit"

run eval --tokenizer "$tok" --dataset fashion-mnist --split test --limit 64
expect_rc 0; expect_out "psnr"; expect_out "codes used"; expect_out "perplexity"; expect_out "images      64"
done_case "eval prints a table to stdout"

if ((have_python)); then
    run eval --tokenizer "$tok" --limit 64 --json
    expect_rc 0
    /usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["images"]==64 and d["psnr"]>5 and 0<d["usage"]<=1' \
        "$tmp/out" 2>>"$tmp/err" || why+=("eval --json is not the expected JSON")
    done_case "eval --json prints one JSON object"
else
    skip_case "eval --json prints one JSON object" "no /usr/bin/python3"
fi

# ---- bad input: clear error, non-zero exit, no output file -------------------

d="$(fresh nodata)"
run encode --tokenizer "$tok" --dataset "$tmp/no-such-folder" -o "$d/x.h5"
expect_runtime_error "no-such-folder"
expect_empty_dir "$d"
done_case "missing dataset folder"

mkdir -p "$tmp/empty-folder"
d="$(fresh emptydata)"
run encode --tokenizer "$tok" --dataset "$tmp/empty-folder" --split all -o "$d/x.h5"
expect_runtime_error "empty-folder"
expect_empty_dir "$d"
done_case "empty dataset folder"

mkdir -p "$tmp/text-folder/shirts"
echo "not an image" >"$tmp/text-folder/shirts/readme.txt"
d="$(fresh textdata)"
run encode --tokenizer "$tok" --dataset "$tmp/text-folder" --split all -o "$d/x.h5"
expect_runtime_error "text-folder"
expect_empty_dir "$d"
done_case "folder with only a non-image file"

mkdir -p "$tmp/fake-png/shirts"
echo "this is text, not a PNG" >"$tmp/fake-png/shirts/a.png"
d="$(fresh fakepng)"
run encode --tokenizer "$tok" --dataset "$tmp/fake-png" --split all -o "$d/x.h5"
expect_runtime_error "a.png"
expect_empty_dir "$d"
done_case "folder with a corrupt .png file"

d="$(fresh nofmnist)"
run_env MAGNETS_FASHION_MNIST=/nonexistent encode --tokenizer "$tok" -o "$d/x.h5"
expect_runtime_error
expect_err "apt-get install dataset-fashion-mnist"
expect_empty_dir "$d"
done_case "missing Fashion-MNIST gives the apt hint"

d="$(fresh nofmnist-train)"
run_env MAGNETS_FASHION_MNIST=/nonexistent train --preset tiny --steps 2 -o "$d/t.h5"
expect_runtime_error
expect_err "dataset-fashion-mnist"
expect_empty_dir "$d"
done_case "train without Fashion-MNIST fails before writing"

head -c 3000 "$tok" >"$tmp/truncated.h5"
d="$(fresh truncated)"
run encode --tokenizer "$tmp/truncated.h5" --limit 8 -o "$d/x.h5"
expect_runtime_error "truncated.h5"
expect_empty_dir "$d"
done_case "truncated HDF5 tokenizer"

echo "plain text" >"$tmp/not-hdf5.h5"
d="$(fresh nothdf5)"
run eval --tokenizer "$tmp/not-hdf5.h5" --limit 8
expect_runtime_error "not-hdf5.h5"
run decode --tokenizer "$tok" -i "$tmp/not-hdf5.h5" -o "$d/out"
expect_runtime_error "not-hdf5.h5"
expect_empty_dir "$d"
done_case "non-HDF5 files as tokenizer and token file"

run info "$tmp/not-hdf5.h5"
expect_runtime_error "not-hdf5.h5"
done_case "info on a file that is neither HDF5 nor PNG"

run info "$tmp/does-not-exist.h5"
expect_runtime_error "does-not-exist.h5"
done_case "info on a missing file"

d="$(fresh wrongkind)"
run decode --tokenizer "$tok" -i "$tok" -o "$d/out"
expect_runtime_error "magnets-tokens"
expect_empty_dir "$d"
done_case "a tokenizer given as token file"

if ((have_h5py)); then
    /usr/bin/python3 - "$tmp/foreign.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    f["data"] = np.arange(10, dtype=np.float32)
    f.attrs["origin"] = "someone else's file"
PY
    d="$(fresh foreign)"
    run encode --tokenizer "$tmp/foreign.h5" --limit 8 -o "$d/x.h5"
    expect_runtime_error "foreign.h5"
    expect_err "format"
    run decode --tokenizer "$tok" -i "$tmp/foreign.h5" -o "$d/out"
    expect_runtime_error "foreign.h5"
    expect_empty_dir "$d"
    done_case "foreign HDF5 file"

    cp "$tok" "$tmp/future.h5"
    set_root_attr "$tmp/future.h5" format_version 99
    d="$(fresh version)"
    run encode --tokenizer "$tmp/future.h5" --limit 8 -o "$d/x.h5"
    expect_runtime_error "future.h5"
    expect_err "99"
    expect_empty_dir "$d"
    done_case "tokenizer with a newer format version"

    cp "$tmp/case.codec/tokens.h5" "$tmp/future-tokens.h5"
    set_root_attr "$tmp/future-tokens.h5" format_version 7
    run decode --tokenizer "$tok" -i "$tmp/future-tokens.h5" -o "$d/out"
    expect_runtime_error "future-tokens.h5"
    expect_empty_dir "$d"
    done_case "token file with a newer format version"
else
    skip_case "foreign HDF5 file" "h5py not importable by /usr/bin/python3"
    skip_case "tokenizer with a newer format version" "h5py not importable by /usr/bin/python3"
    skip_case "token file with a newer format version" "h5py not importable by /usr/bin/python3"
fi

# Tokenizers that differ from the fixture: other K, and same K with other weights.
d="$(fresh othertok)"
"$bin" train -q --preset tiny --limit 64 --steps 2 --codebook-size 32 -o "$d/k32.h5" 2>"$tmp/err" ||
    why+=("training the K=32 tokenizer failed")
"$bin" train -q --preset tiny --limit 64 --steps 2 --seed 7 -o "$d/seed7.h5" 2>>"$tmp/err" ||
    why+=("training the seed-7 tokenizer failed")
done_case "train two other tiny tokenizers"

d="$(fresh mismatch)"
run decode --tokenizer "$tmp/case.othertok/k32.h5" -i "$tmp/case.codec/tokens.h5" -o "$d/out"
expect_runtime_error "codebook size"
expect_err "^hint: "
expect_empty_dir "$d"
done_case "token file whose codebook size differs from the tokenizer's"

run decode --tokenizer "$tmp/case.othertok/seed7.h5" -i "$tmp/case.codec/tokens.h5" --limit 4 -o "$d/out"
expect_rc 0; expect_err "warning"; expect_file "$d/out/000003.png"
done_case "tokenizer hash mismatch is a warning"

d="$(fresh strict)"
run decode --strict --tokenizer "$tmp/case.othertok/seed7.h5" -i "$tmp/case.codec/tokens.h5" -o "$d/out"
expect_runtime_error "another tokenizer"
expect_empty_dir "$d"
done_case "tokenizer hash mismatch with --strict is an error"

run encode --tokenizer "$tok" --limit 8 -o /nonexistent/dir/x.h5
expect_runtime_error "/nonexistent/dir/x.h5"
[[ ! -e /nonexistent ]] || why+=("/nonexistent was created")
done_case "encode to a missing folder"

run train --preset tiny --steps 2 -o /nonexistent/dir/x.h5
expect_runtime_error "/nonexistent/dir/x.h5"
done_case "train to a missing folder"

echo "a regular file" >"$tmp/regular"
run encode --tokenizer "$tok" --limit 8 -o "$tmp/regular/x.h5"
expect_runtime_error "regular/x.h5"
[[ "$(cat "$tmp/regular")" == "a regular file" ]] || why+=("the regular file changed")
done_case "encode to a path under a regular file"

run encode --tokenizer "$tok" --limit 8 -o /proc/magnets-x.h5
expect_runtime_error "/proc/magnets-x.h5"
[[ ! -e /proc/magnets-x.h5 ]] || why+=("file created in /proc")
done_case "encode into /proc (unwritable even for root)"

run decode --tokenizer "$tok" -i "$tmp/case.codec/tokens.h5" -o "$tmp/regular/out"
expect_runtime_error "regular/out"
done_case "decode into a folder under a regular file"

# ---- interrupt and resume --------------------------------------------------------
# A run stopped (by --stop-after, or SIGINT after its first checkpoint) and
# resumed must end with exactly the weights of an uninterrupted run.

steps=40
d="$(fresh resume)"
common=(--preset tiny --limit 512 --steps "$steps" --checkpoint-every 5 --log-every 5 --threads 1)
run train "${common[@]}" -o "$d/full.h5"
expect_rc 0; expect_file "$d/full.h5"
done_case "uninterrupted reference run"

run train "${common[@]}" --stop-after 13 -o "$d/stopped.h5"
expect_rc 0; expect_file "$d/stopped.h5"; expect_err "resume with"
run train "${common[@]}" --resume -o "$d/stopped.h5"
expect_rc 0; expect_err "resuming from step 13"
h_full="$(weights_hash "$d/full.h5")"
h_res="$(weights_hash "$d/stopped.h5")"
[[ -n "$h_full" && "$h_full" == "$h_res" ]] || why+=("weights hash $h_res after resume, $h_full uninterrupted")
if ((have_h5py)); then same_weights "$d/full.h5" "$d/stopped.h5" 2>>"$tmp/err" || why+=("h5py: weights differ"); fi
done_case "--stop-after then --resume is bit-identical"

run train "${common[@]}" --resume --codebook-size 99 -o "$d/stopped.h5"
expect_usage_error "codebook_size: requested 99, checkpoint 64"
done_case "--resume refuses a different model"

run train --preset tiny --resume -o "$d/missing.h5"
expect_runtime_error "missing.h5"
done_case "--resume of a missing checkpoint"

# SIGINT after the first checkpoint. The run must still be going when the signal
# lands, so this one is longer (many steps, small checkpoint period). One thread:
# oneDNN's sums depend on the thread count, and 2 OpenMP threads crawl on a busy host.
long=(--preset tiny --limit 512 --steps 200 --checkpoint-every 5 --log-every 50 --threads 1)
"$bin" train "${long[@]}" -o "$d/long-full.h5" >/dev/null 2>"$tmp/err.long" || why+=("long reference run failed")
"$bin" train "${long[@]}" -o "$d/killed.h5" >/dev/null 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 2000); do
    [[ -e "$d/killed.h5" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [[ "$rc" == 0 ]]; then
    why+=("the run finished before SIGINT arrived; the test could not interrupt it")
else
    expect_rc 130
    expect_err "resume with"
    expect_file "$d/killed.h5"
    leftovers="$(ls -A "$d" | grep -v -e '^long-full.h5$' -e '^killed.h5$' -e '^full.h5$' -e '^stopped.h5$')"
    [[ -z "$leftovers" ]] || why+=("temporary files left: $leftovers")
    run train "${long[@]}" --resume -o "$d/killed.h5"
    expect_rc 0
    h_full="$(weights_hash "$d/long-full.h5")"
    h_res="$(weights_hash "$d/killed.h5")"
    [[ -n "$h_full" && "$h_full" == "$h_res" ]] || why+=("weights hash $h_res after resume, $h_full uninterrupted")
    if ((have_h5py)); then same_weights "$d/long-full.h5" "$d/killed.h5" 2>>"$tmp/err" || why+=("h5py: weights differ"); fi
fi
done_case "SIGINT during training, then --resume, is bit-identical"

echo "# $passed passed, $failed failed, $skipped skipped"
((failed == 0))
