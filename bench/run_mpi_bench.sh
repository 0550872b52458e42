#!/usr/bin/env bash
# Data-parallel training throughput: the same magnets-train run as one process
# and under mpirun with several ranks, alternated repeat by repeat, so the ratio
# is measured side by side on a noisy machine.
#
#   bench/run_mpi_bench.sh                                  # demo preset, 1 x 2 threads vs 2 ranks x 1 thread
#   bench/run_mpi_bench.sh --ranks "2 4" --threads-per-rank 1 --steps 30 --repeats 3
#   bench/run_mpi_bench.sh --tokens train.h5 --preset small --batch-size 64
#
# Rows (per repeat, then mean and deviation over the repeats):
#   single   one process with ranks x threads-per-rank threads (the same cores)
#   base     one process with threads-per-rank threads (one rank's share)
#   mpi-R    mpirun -n R, threads-per-rank threads each
# Tokens/s are the mean of the logged steps after --warmup steps (the
# per-step log's tokens_per_s, which counts the global batch). Scaling
# efficiency = mpi-R / (R x base); "vs single" = mpi-R / single.
# Without --tokens, the test fixture tokenizer encodes 4,096 Fashion-MNIST
# training items (8x8 tokens), which the demo transformer preset fits.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${MAGNETS_BUILD_DIR:-build}
tools="$build/tools"
ranks="2"; tpr=1; steps=30; warmup=5; repeats=3; preset=demo; tokens=""; batch=""
while (($#)); do
    case "$1" in
        --ranks) ranks=$2; shift 2 ;;
        --threads-per-rank) tpr=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --tokens) tokens=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "run_mpi_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
((warmup < steps)) || { echo "run_mpi_bench.sh: --warmup must be below --steps" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "run_mpi_bench.sh: no mpirun (Debian: openmpi-bin)" >&2; exit 1; }
[[ -x "$tools/magnets-train" ]] || { echo "run_mpi_bench.sh: build first (meson compile -C $build)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/magnets-mpi-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [[ -z "$tokens" ]]; then
    tokens="$tmp/train.h5"
    "$tools/magnets-tokenize" encode --tokenizer tests/fixtures/tok_tiny.h5 --split train --limit 4096 -o "$tokens" -q
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
over=()
if mpirun --version 2>&1 | grep -q "Open MPI"; then over=(--oversubscribe --bind-to none); fi
common=(--preset "$preset" --tokens "$tokens" --steps "$steps" --log-every 1 --checkpoint-every 0 -q)
[[ -n "$batch" ]] && common+=(--batch-size "$batch")

# mean tokens/s of a log's steps after the warm-up
rate() {
    /usr/bin/python3 - "$1" "$warmup" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
r = [x["tokens_per_s"] for x in rows if "tokens_per_s" in x and x["step"] > int(sys.argv[2])]
if not r: sys.exit("no step lines after the warm-up")
print(f"{sum(r) / len(r):.1f}")
PY
}

declare -A results
maxr=0
for r in $ranks; do ((r > maxr)) && maxr=$r; done
for ((i = 1; i <= repeats; i++)); do
    "$tools/magnets-train" "${common[@]}" --threads $((maxr * tpr)) -o "$tmp/m.h5" --log "$tmp/l.jsonl"
    results[single]+=" $(rate "$tmp/l.jsonl")"
    "$tools/magnets-train" "${common[@]}" --threads "$tpr" -o "$tmp/m.h5" --log "$tmp/l.jsonl"
    results[base]+=" $(rate "$tmp/l.jsonl")"
    for r in $ranks; do
        mpirun -n "$r" "${over[@]}" "$tools/magnets-train" "${common[@]}" --threads "$tpr" -o "$tmp/m.h5" --log "$tmp/l.jsonl"
        results[mpi-$r]+=" $(rate "$tmp/l.jsonl")"
    done
    echo "repeat $i/$repeats done" >&2
done

echo "# magnets-train --preset $preset, steps $steps (first $warmup not timed), $repeats repeats, $(nproc) cores"
echo "# $(mpirun --version 2>&1 | head -1); single = one process with $((maxr * tpr)) threads, base = one with $tpr"
mpi_args=()
for r in $ranks; do mpi_args+=("${results[mpi-$r]}"); done
/usr/bin/python3 - "$ranks" "${results[single]}" "${results[base]}" "${mpi_args[@]}" <<'PY'
import statistics as st, sys
ranks = [int(r) for r in sys.argv[1].split()]
single, base = [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
mpi = {r: [float(x) for x in s.split()] for r, s in zip(ranks, sys.argv[4:])}
def fmt(v): return f"{st.mean(v):10.0f} {st.pstdev(v):8.0f}"
print(f"{'run':<10} {'tok/s':>10} {'dev':>8} {'vs single':>10} {'efficiency':>10}")
print(f"{'single':<10} {fmt(single)}")
print(f"{'base':<10} {fmt(base)}")
for r in ranks:
    v = mpi[r]
    print(f"{'mpi-' + str(r):<10} {fmt(v)} {st.mean(v) / st.mean(single):9.2f}x {st.mean(v) / (r * st.mean(base)):9.0%}")
PY
