#!/usr/bin/env bash
# CLI tests of data-parallel training (magnets/dist.h) under mpirun: the ranks
# train as one process would (the same losses, the same weights up to float
# rounding), rank 0 alone writes and logs, resume after --stop-after and after
# SIGUSR1 is bit-exact, uneven splits work, and errors end every rank.
#
# Environment (set by tests/meson.build):
#   MAGNETS_BIN       folder with the tools
#   MAGNETS_FIXTURES  tests/fixtures (tok_tiny.h5 makes the token files)
#   MAGNETS_HAVE_MPI  1 when the build has MPI
# Needs mpirun (Debian: openmpi-bin) for the MPI cases; without it, or in a
# build without MPI, only the "no MPI" case runs. Weight comparisons use
# /usr/bin/python3 with h5py and are skipped without it.
set -u

train="${MAGNETS_BIN:?set MAGNETS_BIN}/magnets-train"
distill="$MAGNETS_BIN/magnets-distill"
tokenize="$MAGNETS_BIN/magnets-tokenize"
fixtures="${MAGNETS_FIXTURES:?set MAGNETS_FIXTURES to tests/fixtures}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/magnets-cli-mpi.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$tokenize" encode --tokenizer "$fixtures/tok_tiny.h5" --split train --limit 256 -o "$tmp/train.h5" -q
"$tokenize" encode --tokenizer "$fixtures/tok_tiny.h5" --split test --limit 64 -o "$tmp/val.h5" -q
[[ -s "$tmp/train.h5" && -s "$tmp/val.h5" ]] || { echo "Bail out! cannot make token files"; exit 1; }
# One thread per rank: two ranks fill this machine's two cores.
tiny=(--preset tiny --tokens "$tmp/train.h5" --val "$tmp/val.h5" --threads 1 --log-every 5)

if [[ "${MAGNETS_HAVE_MPI:-0}" != 1 ]]; then
    # A launcher that starts several copies of a build without MPI must not
    # let each train alone and overwrite the others' checkpoint.
    run env OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=0 "$train" "${tiny[@]}" --steps 2 -o "$tmp/x.h5"
    expect_runtime_error magnets-train "this build has no MPI"
    expect_no_file "$tmp/x.h5"
    done_case "a build without MPI refuses to run as one of several ranks"
    skip_case "data-parallel training" "this build has no MPI (install libopenmpi-dev, meson -Dmpi=enabled)"
    finish
    exit
fi
if ! command -v mpirun >/dev/null; then
    skip_case "data-parallel training" "no mpirun (Debian: openmpi-bin)"
    finish
    exit
fi

# Open MPI refuses root without these; in containers its shared-memory
# transport cannot always use cross-memory attach.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
over=()
if mpirun --version 2>&1 | grep -q "Open MPI"; then over=(--oversubscribe); fi
# mpi N ARGS...: run ARGS under mpirun with N ranks; a hang fails after 120 s.
mpi() { local n=$1; shift; run timeout 120 mpirun -n "$n" "${over[@]}" "$@"; }

# The step and validation lines' numbers, without the throughput.
numbers() { grep -E '^(step|val) ' "$1" | sed 's/|[^|]*tok\/s$//'; }
# Same losses to within 1e-3 (the ranks sum gradients in another order).
same_losses() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import re, sys
a, b = (open(p).read().split("\n") for p in sys.argv[1:3])
if len(a) != len(b) or len(a) < 3: sys.exit(f"{len(a)} vs {len(b)} log lines")
num = re.compile(r"-?\d+\.\d+")
for x, y in zip(a, b):
    u, v = [float(t) for t in num.findall(x)], [float(t) for t in num.findall(y)]
    if len(u) != len(v) or any(abs(p - q) > 1e-3 * max(1.0, abs(p)) for p, q in zip(u, v)):
        sys.exit(f"differ:\n  {x}\n  {y}")
PY
}
# Same weights up to float rounding: |a - b| <= 1e-5 * max(1, max |a|) per tensor.
close_weights() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
for k in a["weights"]:
    x, y = a["weights"][k][()].astype(np.float64), b["weights"][k][()].astype(np.float64)
    d = float(np.abs(x - y).max())
    if d > 1e-5 * max(1.0, float(np.abs(x).max())): sys.exit(f"{k}: max difference {d}")
PY
}
printed_hash() { grep -o 'weights hash [0-9a-f]*' "$tmp/err" | tail -1 | cut -d' ' -f3; }

# ---- one process as the reference ------------------------------------------------------
run "$train" "${tiny[@]}" --steps 20 -o "$tmp/one.h5"
[[ "$rc" == 0 ]] || { echo "Bail out! the one-process run failed"; sed 's/^/# /' "$tmp/err"; exit 1; }
numbers "$tmp/err" >"$tmp/one.txt"

# ---- two ranks train as one process ------------------------------------------------------
mpi 2 "$train" "${tiny[@]}" --steps 20 -o "$tmp/two.h5" --log "$tmp/two.jsonl"
expect_rc 0
expect_err "data parallel .*MPI.*2 ranks.*batch of 16 split 8 per rank"
expect_file "$tmp/two.h5"
numbers "$tmp/err" >"$tmp/two.txt"
[[ "$(grep -c '^step ' "$tmp/two.txt")" == 4 ]] || why+=("expected 4 step lines (rank 0 alone logs), got $(grep -c '^step ' "$tmp/two.txt")")
[[ "$(wc -l <"$tmp/two.jsonl")" == 5 ]] || why+=("--log has $(wc -l <"$tmp/two.jsonl") lines, expected 5 (4 steps, 1 validation)")
msg="$(same_losses "$tmp/one.txt" "$tmp/two.txt" 2>&1)" || why+=("losses differ from one process: $msg")
if ((have_h5py)); then
    msg="$(close_weights "$tmp/one.h5" "$tmp/two.h5" 2>&1)" || why+=("weights differ from one process: $msg")
fi
hash_two="$(printed_hash)"
done_case "mpirun -n 2: the same losses and weights as one process; rank 0 alone logs and writes"

# ---- a batch that does not split evenly -----------------------------------------------------
mpi 3 "$train" "${tiny[@]}" --steps 20 -o "$tmp/three.h5"
expect_rc 0
expect_err "3 ranks.*split 6-5 per rank"
numbers "$tmp/err" >"$tmp/three.txt"
msg="$(same_losses "$tmp/one.txt" "$tmp/three.txt" 2>&1)" || why+=("losses differ from one process: $msg")
done_case "mpirun -n 3 splits a batch of 16 as 6, 5, 5 and trains as one process"

# ---- exact resume: --stop-after, then --resume, both with two ranks ---------------------------
mpi 2 "$train" "${tiny[@]}" --steps 20 --stop-after 10 -o "$tmp/r.h5"
expect_rc 0
expect_err "resume with: mpirun -n 2 magnets-train --resume"
mpi 2 "$train" --resume --tokens "$tmp/train.h5" --val "$tmp/val.h5" --threads 1 -o "$tmp/r.h5"
expect_rc 0
[[ "$(printed_hash)" == "$hash_two" && -n "$hash_two" ]] || why+=("resumed hash $(printed_hash), uninterrupted $hash_two")
if ((have_h5py)); then
    msg="$(same_checkpoint "$tmp/two.h5" "$tmp/r.h5" 2>&1)" || why+=("resumed checkpoint differs: $msg")
fi
done_case "two ranks stopped at step 10 and resumed end bit for bit as the uninterrupted run"

# ---- SIGUSR1 to mpirun (which forwards it to every rank): the ranks stop at
# the same step, one checkpoint, exact resume -----------------------------------------------
long=(--steps 400 --log-every 100 --checkpoint-every 0)
mpi 2 "$train" "${tiny[@]}" "${long[@]}" -o "$tmp/full.h5"
full_hash="$(printed_hash)"
: >"$tmp/err" # the wait below must not see the previous run's lines
mpirun -n 2 "${over[@]}" "$train" "${tiny[@]}" "${long[@]}" -o "$tmp/sig.h5" >"$tmp/out" 2>"$tmp/err" &
pid=$!
(sleep 120; kill -KILL "$pid" 2>/dev/null) &
watchdog=$!
for _ in $(seq 100); do grep -q '^step ' "$tmp/err" 2>/dev/null && break; sleep 0.1; done
sleep 0.3
kill -USR1 "$pid" 2>/dev/null
wait "$pid"
rc=$?
kill "$watchdog" 2>/dev/null
if grep -q "reached step 400" "$tmp/err"; then
    skip_case "SIGUSR1 under mpirun" "the run finished before the signal"
else
    [[ "$rc" != 0 ]] || why+=("exit status 0 after SIGUSR1")
    expect_err "stopped at step [0-9]* of 400 by User defined signal 1"
    expect_err "resume with: mpirun -n 2"
    expect_file "$tmp/sig.h5"
    mpi 2 "$train" --resume --tokens "$tmp/train.h5" --val "$tmp/val.h5" --threads 1 -o "$tmp/sig.h5"
    expect_rc 0
    [[ "$(printed_hash)" == "$full_hash" && -n "$full_hash" ]] || why+=("resumed hash $(printed_hash), uninterrupted $full_hash")
    done_case "SIGUSR1 to mpirun: the ranks stop together, checkpoint, and resume exactly"
fi

# ---- errors end every rank (no rank left waiting) --------------------------------------------
mpi 3 "$train" "${tiny[@]}" --steps 5 --batch-size 2 -o "$tmp/small.h5"
[[ "$rc" != 0 && "$rc" != 124 ]] || why+=("exit status $rc (124: hung)")
expect_err "batch size 2 is smaller than the number of ranks 3"
expect_no_file "$tmp/small.h5"
done_case "a batch smaller than the number of ranks is refused"

mpi 2 "$train" "${tiny[@]}" --steps 20 --lr 1e4 --checkpoint-every 2 -o "$tmp/div.h5"
[[ "$rc" != 0 && "$rc" != 124 ]] || why+=("exit status $rc (124: hung)")
expect_err "training diverged"
done_case "a diverging run stops every rank with the divergence message"

# ---- distillation runs data-parallel too --------------------------------------------------------
mpi 2 "$distill" --from "$tmp/one.h5" --tokens "$tmp/train.h5" --val "$tmp/val.h5" --threads 1 --steps 10 \
    --log-every 5 -o "$tmp/dist.h5"
expect_rc 0
expect_err "data parallel .*2 ranks"
expect_file "$tmp/dist.h5"
done_case "magnets-distill under mpirun -n 2"

finish
