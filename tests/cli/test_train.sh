#!/usr/bin/env bash
# CLI tests of magnets-train and magnets-distill: exit status, messages, exact
# resume after --stop-after, SIGINT and SIGKILL, bad inputs (wrong vocabulary
# or grid, foreign or truncated checkpoints, diverging loss, bad labels) that
# must fail clearly and lose nothing.
#
# Environment (set by tests/meson.build):
#   MAGNETS_BIN       folder with the tools
#   MAGNETS_FIXTURES  tests/fixtures (tok_tiny.h5 makes the token files)
# Needs Fashion-MNIST (dataset-fashion-mnist). Cases that patch HDF5 files use
# /usr/bin/python3 with h5py and are skipped without it.
# Prints "ok - name" / "not ok - name" per case; exits 1 when any case failed.
set -u

train="${MAGNETS_BIN:?set MAGNETS_BIN}/magnets-train"
distill="$MAGNETS_BIN/magnets-distill"
tokenize="$MAGNETS_BIN/magnets-tokenize"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES to tests/fixtures}"
tok="$fixtures/tok_tiny.h5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli-train.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The weights hash the tools print at the end ("weights hash H").
printed_hash() { grep -o 'weights hash [0-9a-f]*' "$tmp/err" | tail -1 | cut -d' ' -f3; }

# ---- token files for the tests (tiny tokenizer, 256 train / 64 val items) ----------
"$tokenize" encode --tokenizer "$tok" --split train --limit 256 -o "$tmp/train.h5" -q
"$tokenize" encode --tokenizer "$tok" --split test --limit 64 -o "$tmp/val.h5" -q
[[ -s "$tmp/train.h5" && -s "$tmp/val.h5" ]] || { echo "Bail out! cannot make token files"; exit 1; }
tiny=(--preset tiny --tokens "$tmp/train.h5" --val "$tmp/val.h5" --threads 2 --log-every 5)

# ---- help and usage ------------------------------------------------------------------
run "$train" --help
expect_rc 0; expect_out "--tokens"; expect_out "--factors"; expect_out "--nesting"; expect_out "maskgit-b"
done_case "magnets-train --help lists the options and presets"
run "$distill" --help
expect_rc 0; expect_out "--objective"; expect_out "--alpha-span"; expect_out "progressive"
done_case "magnets-distill --help lists the options"
run "$train" --version
expect_rc 0; expect_out "^magnets-train "
done_case "--version"
run "$train" --tokens "$tmp/train.h5"
expect_usage_error magnets-train "missing required option --output"
done_case "missing --output is a usage error"
run "$train" "${tiny[@]}" -o "$tmp/x.h5" --preset huge
expect_usage_error magnets-train "unknown preset"
done_case "unknown preset"
run "$train" "${tiny[@]}" -o "$tmp/x.h5" --factors 8,4,x
expect_usage_error magnets-train "factor"
done_case "bad --factors"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    # magnets-train runs on the GPU (--device cuda); without one it says so
    run "$train" "${tiny[@]}" -o "$tmp/x.h5" --device cuda
    expect_runtime_error magnets-train "backend not available: cuda"
    expect_no_file "$tmp/x.h5"
    done_case "--device cuda without a GPU: a clear error, nothing written"
fi
run "$train" "${tiny[@]}" -o "$tmp/x.h5" --heads 4
expect_usage_error magnets-train "heads"
done_case "heads not divisible by the factors"
run "$train" "${tiny[@]}" -o "$tmp/x.h5" --loss-weights 1,1
expect_usage_error magnets-train "weights for 4 sub-models"
done_case "--loss-weights count must match the factors"

# ---- a tiny run --------------------------------------------------------------------
d="$tmp/run"; mkdir -p "$d"
run "$train" "${tiny[@]}" --steps 20 --checkpoint-every 5 -o "$d/full.h5" --log "$d/log.jsonl" --plot "$d/curves.png"
expect_rc 0
expect_err "resolved configuration"; expect_err "train_steps  *20"; expect_err "step  *20/20"; expect_err "val  *20/20"
expect_file "$d/full.h5"; expect_file "$d/curves.png"; expect_file "$d/curves-accuracy.png"
[[ "$(grep -c '"step"' "$d/log.jsonl")" -ge 5 ]] || why+=("log.jsonl has too few lines")
grep -q '"validation":true' "$d/log.jsonl" || why+=("log.jsonl has no validation record")
h_full="$(printed_hash)"
[[ -n "$h_full" ]] || why+=("no weights hash printed")
leftovers="$(ls -A "$d" | grep -v -e '^full.h5$' -e '^log.jsonl$' -e '^curves.png$' -e '^curves-accuracy.png$')"
[[ -z "$leftovers" ]] || why+=("files left behind: $leftovers")
done_case "tiny training run: config table, log lines, validation, checkpoint, plots"

if ((have_h5py)); then
    run /usr/bin/python3 "$root/scripts/check_h5py.py" "$d/full.h5"
    expect_rc 0
    done_case "check_h5py.py validates the transformer checkpoint layout"
else
    skip_case "check_h5py.py validates the transformer checkpoint layout" "no h5py"
fi

# ---- the AVX2 and AVX-512 instances of the training ops agree -------------------------
# (lib/cpu/host_train_ops.cpp picks the AVX-512 one where the CPU has it;
# MAGNETS_CPU_ISA=avx2 forces the other.) Same run, same data: the losses of
# every logged step within 1e-4 relative (rounding of exp/erf in other lane
# orders; a wrong kernel is off by far more).
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    run env MAGNETS_CPU_ISA=avx2 "$train" "${tiny[@]}" --steps 20 -o "$d/avx2.h5" --log "$d/avx2.jsonl"
    expect_rc 0
    /usr/bin/python3 - "$d/log.jsonl" "$d/avx2.jsonl" >>"$tmp/err" 2>&1 <<'PY' || why+=("losses differ between AVX-512 and AVX2 (see stderr)")
import json, sys
def losses(p):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(p)) if "loss" in r and not r.get("validation")]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert len(a) == len(b) and len(a) >= 4, (len(a), len(b))
for (sa, la), (sb, lb) in zip(a, b):
    assert sa == sb and abs(la - lb) <= 1e-4 * abs(la), (sa, la, lb)
print("avx512/avx2 losses agree:", len(a), "steps, last", a[-1][1], b[-1][1])
PY
    done_case "training: the AVX-512 ops give the AVX2 ops' losses (1e-4 relative)"
else
    skip_case "training: the AVX-512 ops give the AVX2 ops' losses (1e-4 relative)" "no AVX-512 on this CPU"
fi

# ---- exact resume ---------------------------------------------------------------------
run "$train" "${tiny[@]}" --steps 20 --checkpoint-every 5 -o "$d/stopped.h5" --stop-after 8
expect_rc 0; expect_err "resume with"
run "$train" "${tiny[@]}" --steps 20 --checkpoint-every 5 -o "$d/stopped.h5" --resume
expect_rc 0; expect_err "resuming from step 8"
[[ "$(printed_hash)" == "$h_full" ]] || why+=("hash $(printed_hash) after resume, $h_full uninterrupted")
if ((have_h5py)); then same_checkpoint "$d/full.h5" "$d/stopped.h5" 2>>"$tmp/err" || why+=("h5py: checkpoints differ"); fi
done_case "--stop-after then --resume is bit-identical (weights, EMA, optimizer state)"

run "$train" "${tiny[@]}" --steps 20 -o "$d/stopped.h5" --resume --width 64
expect_usage_error magnets-train "differ from the checkpoint"
done_case "--resume refuses a different model"

# SIGKILL: no chance to save; resume from the last periodic checkpoint.
long=("${tiny[@]}" --steps 400 --checkpoint-every 10 --val-every 0)
run "$train" "${long[@]}" -o "$d/long-full.h5"
h_long="$(printed_hash)"
"$train" "${long[@]}" -o "$d/killed.h5" >/dev/null 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 600); do
    [[ -e "$d/killed.h5" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rc=$?
if [[ "$rc" == 0 ]]; then
    why+=("the run finished before SIGKILL arrived; the test could not interrupt it")
else
    expect_rc 137
    leftovers="$(ls -A "$d" | grep -e '\.tmp' -e 'XXXX' || true)"
    run "$train" "${long[@]}" -o "$d/killed.h5" --resume
    expect_rc 0
    [[ "$(printed_hash)" == "$h_long" ]] || why+=("hash $(printed_hash) after kill + resume, $h_long uninterrupted")
    if ((have_h5py)); then same_checkpoint "$d/long-full.h5" "$d/killed.h5" 2>>"$tmp/err" || why+=("h5py: checkpoints differ"); fi
fi
done_case "SIGKILL mid-run, then --resume, ends bit-identical to the uninterrupted run"

"$train" "${long[@]}" -o "$d/int.h5" >/dev/null 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 600); do
    [[ -e "$d/int.h5" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [[ "$rc" == 0 ]]; then
    why+=("the run finished before SIGINT arrived")
else
    expect_rc 130; expect_err "resume with"; expect_file "$d/int.h5"
    run "$train" "${long[@]}" -o "$d/int.h5" --resume
    expect_rc 0
    [[ "$(printed_hash)" == "$h_long" ]] || why+=("hash $(printed_hash) after SIGINT + resume, $h_long uninterrupted")
fi
done_case "SIGINT writes a checkpoint (exit 130) and --resume is bit-identical"

# ---- bad input ------------------------------------------------------------------------
run "$train" "${tiny[@]}" --tokens "$tmp/missing.h5" -o "$d/x.h5"
expect_runtime_error magnets-train "missing.h5"
expect_no_file "$d/x.h5"
done_case "missing token file"
run "$train" "${tiny[@]}" --tokens "$tok" -o "$d/x.h5"
expect_runtime_error magnets-train "magnets-tokens"
done_case "a tokenizer checkpoint is not a token file"
run "$distill" --from "$tok" --tokens "$tmp/train.h5" -o "$d/x.h5"
expect_runtime_error magnets-distill "magnets-transformer"
done_case "foreign checkpoint (a tokenizer) is refused"
head -c 20000 "$d/full.h5" >"$d/truncated.h5"
run "$distill" --from "$d/truncated.h5" --tokens "$tmp/train.h5" -o "$d/x.h5"
expect_runtime_error magnets-distill "truncated.h5"
expect_no_file "$d/x.h5"
done_case "truncated checkpoint is refused"

if ((have_h5py)); then
    /usr/bin/python3 - "$tmp/train.h5" "$tmp" <<'PY'
import sys, shutil, h5py, numpy as np
src, tmp = sys.argv[1:3]
shutil.copy(src, f"{tmp}/vocab.h5")
with h5py.File(f"{tmp}/vocab.h5", "r+") as f: f.attrs["codebook_size"] = np.int64(128)
shutil.copy(src, f"{tmp}/labels.h5")
with h5py.File(f"{tmp}/labels.h5", "r+") as f:
    lab = f["labels"][()]; lab[3] = 42; f["labels"][...] = lab
shutil.copy(src, f"{tmp}/otherhash.h5")
with h5py.File(f"{tmp}/otherhash.h5", "r+") as f: f.attrs["tokenizer_hash"] = "ffffffffffffffff"
with h5py.File(src, "r") as s, h5py.File(f"{tmp}/grid.h5", "w") as f:
    for k, v in s.attrs.items(): f.attrs[k] = v
    t = s["tokens"][()]
    f.attrs["grid_h"] = np.int64(4); f.attrs["grid_w"] = np.int64(4)
    f["tokens"] = t[:, :4, :4].copy()
    f["labels"] = s["labels"][()]
    f["class_names"] = s["class_names"][()]
PY
    run "$distill" --from "$d/full.h5" --tokens "$tmp/vocab.h5" -o "$d/x.h5"
    expect_runtime_error magnets-distill "codebook"
    expect_no_file "$d/x.h5"
    done_case "token file with another vocabulary than the checkpoint"
    run "$distill" --from "$d/full.h5" --tokens "$tmp/grid.h5" -o "$d/x.h5"
    expect_runtime_error magnets-distill "grid"
    done_case "token file with another length than the checkpoint"
    run "$train" "${tiny[@]}" --tokens "$tmp/labels.h5" -o "$d/x.h5"
    expect_runtime_error magnets-train "label"
    done_case "out-of-range labels"
    run "$train" "${tiny[@]}" --val "$tmp/otherhash.h5" -o "$d/x.h5"
    expect_runtime_error magnets-train "tokenizer"
    done_case "validation tokens from another tokenizer"
else
    for c in "another vocabulary" "another length" "out-of-range labels" "other tokenizer"; do
        skip_case "$c" "no h5py"
    done
fi

# Exploding loss: stops with a clear message, keeps the last good checkpoint.
cp "$d/full.h5" "$d/good.h5"
run "$train" "${tiny[@]}" --steps 200 --lr 1e4 --warmup 0 --clip-norm 0 --checkpoint-every 1 -o "$d/boom.h5"
expect_runtime_error magnets-train "diverged"
if [[ -e "$d/boom.h5" ]]; then
    expect_err "last good checkpoint"
    if ((have_h5py)); then # the kept checkpoint is complete and finite
        /usr/bin/python3 "$root/scripts/check_h5py.py" -q "$d/boom.h5" >/dev/null || why+=("boom.h5 is not a valid checkpoint")
    fi
fi
done_case "a diverging run stops with a clear error; the last good checkpoint stays loadable"

# ---- distillation ----------------------------------------------------------------------
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" --val "$tmp/val.h5" -o "$d/prog.h5" --steps 10 \
    --log-every 5 --threads 2
expect_rc 0
expect_err "objective  *progressive"; expect_err "validation before -> after"; expect_err "m8  *ce .* -> "
expect_file "$d/prog.h5"
done_case "progressive distillation from a checkpoint, validated before and after"
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" --val "$tmp/val.h5" -o "$d/only.h5" --steps 10 \
    --objective distill-only --threads 2
[[ "$rc" == 0 || "$rc" == 1 ]] || why+=("exit status $rc")
expect_err "distill-only"
done_case "distill-only runs and reports (degradation or divergence), no crash"
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" -o "$d/full.h5"
expect_usage_error magnets-distill "must differ"
done_case "distill refuses to overwrite its source"
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" -o "$d/p2.h5" --steps 10 --stop-after 4 --threads 2
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" -o "$d/p2.h5" --steps 10 --resume --threads 2
h1="$(printed_hash)"
run "$distill" --from "$d/full.h5" --tokens "$tmp/train.h5" -o "$d/p3.h5" --steps 10 --threads 2
[[ -n "$h1" && "$h1" == "$(printed_hash)" ]] || why+=("distill resume hash $h1, uninterrupted $(printed_hash)")
done_case "distillation resumes bit-identically"

finish
