#!/usr/bin/env bash
# Nested transformer training throughput: magnets (bench_transformer) against
# the same model and joint training step in PyTorch (bench/transformer_torch.py),
# side by side in one run, alternating the two so machine noise hits both alike.
#
#   bench/run_transformer_bench.sh [--threads "1 2"] [--steps N] [--warmup N]
#                                  [--repeats N] [--shape demo|small] [--backend NAME]
#                                  [--torch-head-rows "masked all"]
#
# Shapes: demo (D=128, 4 layers, 8 heads, batch 64) and small (D=256, 8 layers,
# 8 heads, batch 128); both Fashion-MNIST token grids (8x8, K=512, 10 classes),
# factors 8,4,2,1, width nesting. Needs the build and a current PyTorch from
# PyPI in $TORCH_VENV (default /opt/torch-venv):
#   python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy
# Prints a table (tokens/s mean and deviation, ratio magnets / PyTorch, GFLOP/s
# and the fraction of the CPU's f32 peak) and keeps the raw JSON lines in
# out/bench/. Both run the output head on the masked positions only (the
# loss needs no other logits); --torch-head-rows "masked all" also times the
# plain PyTorch formulation (head on every position) as "pytorch-allrows".
# Raw results in
# out/bench/. Never run by tests or CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${MAGNETS_BUILD_DIR:-build}
venv=${TORCH_VENV:-/opt/torch-venv}
threads="$(nproc)"
steps=10
warmup=2
repeats=3
shape=demo
backend=auto
torch_head_rows=masked
command_line="bench/run_transformer_bench.sh$(printf " %q" "$@")"

while (($#)); do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --shape) shape=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --torch-head-rows) torch_head_rows=$2; shift 2 ;;
        -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "run_transformer_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$shape" in
    demo) model=(--width 128 --heads 8 --layers 4 --batch 64) ;;
    small) model=(--width 256 --heads 8 --layers 8 --batch 128) ;;
    *) echo "run_transformer_bench.sh: unknown shape $shape (demo or small)" >&2; exit 2 ;;
esac

bench="$build/bench/bench_transformer"
python="$venv/bin/python"
[[ -x "$bench" ]] || { echo "run_transformer_bench.sh: $bench missing; run: meson compile -C $build" >&2; exit 1; }
if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "run_transformer_bench.sh: no PyTorch in $venv" >&2
    echo "hint: python3 -m venv $venv && $venv/bin/pip install torch numpy" >&2
    exit 1
fi

mkdir -p out/bench
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
raw="out/bench/transformer-$shape-$stamp.jsonl"
table="out/bench/transformer-$shape-$stamp.txt"

for t in $threads; do
    for ((r = 1; r <= repeats; r++)); do
        echo "run_transformer_bench.sh: threads $t, repeat $r/$repeats" >&2
        OMP_NUM_THREADS=$t "$bench" "${model[@]}" --backend "$backend" --threads "$t" \
            --steps "$steps" --warmup "$warmup" >>"$raw"
        for hr in $torch_head_rows; do
            OMP_NUM_THREADS=$t "$python" bench/transformer_torch.py "${model[@]}" --threads "$t" \
                --steps "$steps" --warmup "$warmup" --head-rows "$hr" >>"$raw"
        done
    done
done

# The CPU's f32 peak per core, measured (bench/cpu_peak.h: FMA chains in
# the widest vectors the CPU has, at the clock it really runs).
peak="$("$build/bench/cpu_peak" 2>/dev/null || true)"

"$python" - "$raw" "$shape" "$command_line" "$peak" <<'PY' | tee "$table"
import json, platform, statistics, sys
raw, shape, command, peak = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(raw) if l.strip()]
for r in rows:  # the plain PyTorch formulation (head on every position) is its own row
    if r["impl"] == "pytorch" and r.get("head_rows") == "all":
        r["impl"] = "pytorch-allrows"
peak = float(peak) if peak else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
m = next(r["model"] for r in rows if "model" in r)
print(f"nested transformer training throughput ({shape}), f32 on the CPU ({cpu})")
print(f"model: D={m['width']} H={m['heads']} L={m['layers']} K={m['K']} grid {m['grid']} "
      f"factors {m['factors']} ({m['nesting']}), every sub-model per step; AdamW, clip 1.0")
print()
hdr = f"{'impl':<15} {'version':<14} {'threads':>7} {'tokens/s':>10} {'sd':>8} {'GFLOP/s':>8} {'of peak':>8} {'n':>3} {'magnets/torch':>14}"
print(hdr)
print("-" * len(hdr))
by = {}
for r in rows:
    by.setdefault((r["threads"], r["impl"]), []).append(r)
gflop_per_token = {}
for r in rows:
    if r["impl"] == "magnets":
        gflop_per_token[r["threads"]] = r["gflop_per_s"] / r["tokens_per_s"]
for threads in sorted({k[0] for k in by}):
    for impl in ("magnets", "pytorch", "pytorch-allrows"):
        rs = by.get((threads, impl), [])
        if not rs:
            continue
        tps = [r["tokens_per_s"] for r in rs]
        mean = statistics.mean(tps)
        sd = statistics.stdev(tps) if len(tps) > 1 else 0.0
        gf = mean * gflop_per_token.get(threads, 0.0)
        frac = f"{100 * gf / (peak * threads):.0f}%" if peak else "-"
        ratio = f"{statistics.mean([r['tokens_per_s'] for r in by[(threads, 'magnets')]]) / mean:.2f}x" \
            if impl != "magnets" and (threads, "magnets") in by else ""
        version = rs[0].get("version") or rs[0].get("torch")
        print(f"{impl:<15} {version:<14} {threads:>7} {mean:>10.0f} {sd:>8.0f} {gf:>8.1f} {frac:>8} {len(rs):>3} {ratio:>14}")
print()
print("magnets/torch: magnets' tokens/s over that row's; pytorch runs the head on the masked rows as magnets does")
print(f"GFLOP/s counts the model's matmul and attention FLOPs (3x forward, head on every position) for all; f32 peak per core: "
      f"{peak if peak else 'unknown'} GFLOP/s (measured by bench/cpu_peak: FMA chains in the widest vectors)")
print(f"each run: {rows[0]['steps']} timed steps after warm-up; runs alternate magnets/PyTorch")
print(f"command: {command}")
print(f"raw results: {raw}")
PY
echo "table: $table" >&2
