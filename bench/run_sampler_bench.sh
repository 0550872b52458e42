#!/usr/bin/env bash
# Sampling throughput: magnets (bench_sampler: magnets::sample, decode-time
# model scaling with the KV cache) against the same MaskGIT decoding in PyTorch
# (bench/sampler_torch.py, no KV cache), side by side in one run, alternating
# the variants so machine noise hits all alike.
#
#   bench/run_sampler_bench.sh [--shape small|maskgit-b|all] [--threads "1 2"] [--repeats N]
#                              [--images N] [--batch N] [--warmup-images N] [--forward-iters N]
#                              [--base SCHED] [--nested SCHED] [--cfg S] [--backend NAME]
#
# Per repeat: magnets BASE (cache none), magnets NESTED (cache on-switch and
# none), PyTorch BASE, PyTorch NESTED, then one full-model forward
# (--forward-only, p = 1, B sequences) of each. CFG on (scale 2.0), cosine
# mask schedule, choice temperature 4.5, random weights.
#   small:     D=256 L=8 H=8, 8x8 tokens, K=512 C=10, factors 8,4,2,1, batch 64,
#              BASE 1:12, NESTED 8:3,4:3,2:3,1:3
#   maskgit-b: D=768 L=24 H=16, 16x16 tokens, K=1024 C=1000, batch 8,
#              BASE 1:2, NESTED 8:1,4:1,2:1,1:1 (few steps: a run is minutes)
# --images defaults to one batch; --batch/--images/--base/--nested apply to
# every shape run. Needs the build (ninja -C build bench/bench_sampler) and
# PyTorch in $TORCH_VENV (default /opt/torch-venv). Prints a table (images/s
# mean and deviation, GFLOP/image, GFLOP/s, fraction of the CPU's f32 peak,
# ratios against the targets) and keeps the raw JSON lines and the table in
# out/bench/sampler-<shape>-<UTC time>.{jsonl,txt}. Never run by tests or CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${MAGNETS_BUILD_DIR:-build}
venv=${TORCH_VENV:-/opt/torch-venv}
threads="$(nproc)"
repeats=3
shapes=small
images=
batch=
warmup_images=
forward_iters=3
base=
nested=
cfg=2.0
backend=auto
command_line="bench/run_sampler_bench.sh$(printf " %q" "$@")"

while (($#)); do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --shape) shapes=$2; shift 2 ;;
        --images) images=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --warmup-images) warmup_images=$2; shift 2 ;;
        --forward-iters) forward_iters=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        --nested) nested=$2; shift 2 ;;
        --cfg) cfg=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        -h|--help) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "run_sampler_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$shapes" == all ]] && shapes="small maskgit-b"

bench="$build/bench/bench_sampler"
python="$venv/bin/python"
[[ -x "$bench" ]] || { echo "run_sampler_bench.sh: $bench missing; run: ninja -C $build bench/bench_sampler" >&2; exit 1; }
if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "run_sampler_bench.sh: no PyTorch in $venv" >&2
    echo "hint: python3 -m venv $venv && $venv/bin/pip install torch numpy" >&2
    exit 1
fi

# The CPU's f32 peak per core, measured (bench/cpu_peak.h: FMA chains in
# the widest vectors the CPU has, at the clock it really runs).
peak="$("$build/bench/cpu_peak" 2>/dev/null || true)"
mkdir -p out/bench
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

for shape in $shapes; do
    case "$shape" in
        small)
            model=(--width 256 --heads 8 --layers 8 --mlp-ratio 4 --K 512 --C 10 --grid-h 8 --grid-w 8 --factors 8,4,2,1)
            b=${batch:-64}; sb=${base:-1:12}; sn=${nested:-8:3,4:3,2:3,1:3}; wi=${warmup_images:-8} ;;
        maskgit-b)
            model=(--width 768 --heads 16 --layers 24 --mlp-ratio 4 --K 1024 --C 1000 --grid-h 16 --grid-w 16 --factors 8,4,2,1)
            b=${batch:-8}; sb=${base:-1:2}; sn=${nested:-8:1,4:1,2:1,1:1}; wi=${warmup_images:-1} ;;
        *) echo "run_sampler_bench.sh: unknown shape $shape (small, maskgit-b or all)" >&2; exit 2 ;;
    esac
    n=${images:-$b}
    raw="out/bench/sampler-$shape-$stamp.jsonl"
    table="out/bench/sampler-$shape-$stamp.txt"
    common=(--images "$n" --batch "$b" --warmup-images "$wi" --cfg "$cfg")
    fwd=(--forward-only --batch "$b" --iters "$forward_iters" --warmup 1)

    for t in $threads; do
        for ((r = 1; r <= repeats; r++)); do
            echo "run_sampler_bench.sh: $shape, threads $t, repeat $r/$repeats" >&2
            export OMP_NUM_THREADS=$t
            "$bench" "${model[@]}" "${common[@]}" --threads "$t" --backend "$backend" --schedule "$sb" --cache none >>"$raw"
            "$bench" "${model[@]}" "${common[@]}" --threads "$t" --backend "$backend" --schedule "$sn" --cache on-switch >>"$raw"
            "$bench" "${model[@]}" "${common[@]}" --threads "$t" --backend "$backend" --schedule "$sn" --cache none >>"$raw"
            "$python" bench/sampler_torch.py "${model[@]}" "${common[@]}" --threads "$t" --schedule "$sb" >>"$raw"
            "$python" bench/sampler_torch.py "${model[@]}" "${common[@]}" --threads "$t" --schedule "$sn" >>"$raw"
            "$bench" "${model[@]}" "${fwd[@]}" --threads "$t" --backend "$backend" >>"$raw"
            "$python" bench/sampler_torch.py "${model[@]}" "${fwd[@]}" --threads "$t" >>"$raw"
        done
    done
    unset OMP_NUM_THREADS

    "$python" - "$raw" "$shape" "$command_line" "$peak" "$sb" "$sn" <<'PY' | tee "$table"
import json, platform, statistics, sys
raw, shape, command, peak, sb, sn = sys.argv[1:7]
rows = [json.loads(l) for l in open(raw) if l.strip()]
peak = float(peak) if peak else None
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
m = rows[0]["model"]
s0 = next(r for r in rows if r["mode"] == "sample")
print(f"MaskGIT sampling throughput ({shape}), f32 on the CPU ({cpu})")
print(f"model: D={m['width']} H={m['heads']} L={m['layers']} K={m['K']} C={m['C']} grid {m['grid']} "
      f"factors {m['factors']} ({m['nesting']}); CFG {s0['cfg']}, batch {s0['batch']}, "
      f"{s0['images']} timed images per run")
print()

def mean_sd(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)

def pct(gf, threads):
    return f"{100 * gf / (peak * threads):.0f}%" if peak else "-"

def fmt(x):
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"

variants = [("magnets", sb, "none"), ("magnets", sn, "on-switch"), ("magnets", sn, "none"),
            ("pytorch", sb, "none"), ("pytorch", sn, "none")]
for threads in sorted({r["threads"] for r in rows}):
    rs_t = [r for r in rows if r["threads"] == threads]
    hdr = (f"{'impl':<8} {'version':<13} {'schedule':<16} {'cache':<9} {'images/s':>9} {'sd':>7} "
           f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'of peak':>7} {'n':>3}")
    print(f"threads {threads}")
    print(hdr)
    print("-" * len(hdr))
    ips = {}  # variant -> per-repeat images/s (runs alternate, so index i is repeat i)
    for v in variants:
        rs = [r for r in rs_t if r["mode"] == "sample" and (r["impl"], r["schedule"], r["cache"]) == v]
        if not rs:
            continue
        ips[v] = [r["images_per_s"] for r in rs]
        mean, sd = mean_sd(ips[v])
        gfi = rs[0]["gflop_per_image"]
        gf = mean * gfi
        version = rs[0].get("version") or rs[0].get("torch")
        print(f"{v[0]:<8} {version:<13} {v[1]:<16} {v[2]:<9} {fmt(mean):>9} {fmt(sd):>7} "
              f"{gfi:>9.2f} {gf:>8.1f} {pct(gf, threads):>7} {len(rs):>3}")
    fw = {}
    for impl in ("magnets", "pytorch"):
        rs = [r for r in rs_t if r["mode"] == "forward" and r["impl"] == impl]
        if not rs:
            continue
        fw[impl] = [r["gflop_per_s"] for r in rs]
        mean, sd = mean_sd(fw[impl])
        version = rs[0].get("version") or rs[0].get("torch")
        print(f"{impl:<8} {version:<13} {'forward p=1':<16} {'-':<9} {'':>9} {'':>7} "
              f"{rs[0]['gflop'] / rs[0]['batch']:>9.2f} {mean:>8.1f} {pct(mean, threads):>7} {len(rs):>3}"
              f"   (B={rs[0]['batch']} x S={rs[0]['seq']}, sd {sd:.1f} GFLOP/s)")
    print()

    def ratio(a, b, label, target=None):
        if a not in ips or b not in ips:
            return
        per = [x / y for x, y in zip(ips[a], ips[b])]
        r = statistics.mean(ips[a]) / statistics.mean(ips[b])
        verdict = "" if target is None else f"  target >= {target}x: {'met' if r >= target else 'NOT met'}"
        print(f"  {label:<60} {r:6.2f}x  (per repeat {min(per):.2f}-{max(per):.2f}){verdict}")

    print("ratios (images/s, mean over repeats):")
    ratio(("magnets", sn, "on-switch"), ("magnets", sb, "none"), f"magnets {sn} cache / magnets {sb}", 2.5)
    ratio(("magnets", sn, "none"), ("magnets", sb, "none"), f"magnets {sn} no cache / magnets {sb}")
    ratio(("magnets", sb, "none"), ("pytorch", sb, "none"), f"magnets {sb} / PyTorch {sb}", 1.5)
    ratio(("magnets", sn, "on-switch"), ("pytorch", sn, "none"), f"magnets {sn} cache / PyTorch {sn}")
    ratio(("magnets", sn, "none"), ("pytorch", sn, "none"), f"magnets {sn} no cache / PyTorch {sn}")
    ratio(("pytorch", sn, "none"), ("pytorch", sb, "none"), f"PyTorch {sn} / PyTorch {sb}")
    if "magnets" in fw:
        g = statistics.mean(fw["magnets"])
        line = f"  {'magnets full-model forward, of f32 peak':<60} {pct(g, threads):>7}"
        if peak and shape == "maskgit-b":
            line += f"  target >= 60%: {'met' if g >= 0.6 * peak * threads else 'NOT met'}"
        print(line)
        if "pytorch" in fw:
            print(f"  {'magnets / PyTorch full-model forward (GFLOP/s)':<60} {g / statistics.mean(fw['pytorch']):6.2f}x")
    print()

print("GFLOP/img counts the model's matmul and attention FLOPs actually computed per image, both branches "
      "(magnets::step_flops; the cache cuts rows, PyTorch recomputes every position); "
      f"f32 peak per core: {peak if peak else 'unknown'} GFLOP/s (measured by bench/cpu_peak: FMA chains in the widest vectors)")
a = next((r for r in rows if r["impl"] == "pytorch"), None)
if a:
    print(f"PyTorch: attention {a['attention']}, weights {a['weights']} (per sub-model packed, fused qkv), "
          "no KV cache, inference_mode")
print("each run: an untimed warm-up, then the timed images; runs alternate magnets/PyTorch within a repeat")
print(f"command: {command}")
print(f"raw results: {raw}")
PY
    echo "table: $table" >&2
done
