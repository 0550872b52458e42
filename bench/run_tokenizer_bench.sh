#!/usr/bin/env bash
# Tokenizer training throughput: magnets (bench_tokenizer) against the same
# model and training step in PyTorch (bench/tokenizer_torch.py), side by side in
# one run, alternating the two so that machine noise hits both alike.
#
#   bench/run_tokenizer_bench.sh [--threads "1 2"] [--steps N] [--warmup N]
#                                [--repeats N] [--preset NAME] [--backend NAME]
#                                [--direct-too]
#
# Needs the build (meson compile -C build) and a current PyTorch from PyPI in
# $TORCH_VENV (default /opt/torch-venv):
#   python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy
# Prints a table (images/s mean and deviation over the repeats, the ratio
# magnets / PyTorch, the PyTorch version and thread count, the command) and
# keeps the raw JSON lines and the table in out/bench/. Never run by tests or CI.
# --direct-too adds a magnets row with MAGNETS_WINOGRAD=0 (oneDNN's direct 3x3
# convolutions, as PyTorch uses, in place of lib/cpu/winograd).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${MAGNETS_BUILD_DIR:-build}
venv=${TORCH_VENV:-/opt/torch-venv}
threads="$(nproc)"
steps=20
warmup=3
repeats=3
preset=demo
backend=auto
direct_too=0
command_line="bench/run_tokenizer_bench.sh$(printf " %q" "$@")"

while (($#)); do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --repeats) repeats=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --backend) backend=$2; shift 2 ;;
        --direct-too) direct_too=1; shift ;;
        -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "run_tokenizer_bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

bench="$build/bench/bench_tokenizer"
python="$venv/bin/python"
[[ -x "$bench" ]] || { echo "run_tokenizer_bench.sh: $bench missing; run: meson compile -C $build" >&2; exit 1; }
if ! "$python" -c 'import torch' 2>/dev/null; then
    echo "run_tokenizer_bench.sh: no PyTorch in $venv" >&2
    echo "hint: python3 -m venv $venv && $venv/bin/pip install torch numpy" >&2
    exit 1
fi

mkdir -p out/bench
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
raw="out/bench/tokenizer-$stamp.jsonl"
table="out/bench/tokenizer-$stamp.txt"
config="$("$bench" --print-config --preset "$preset")"

for t in $threads; do
    for ((r = 1; r <= repeats; r++)); do
        echo "run_tokenizer_bench.sh: threads $t, repeat $r/$repeats" >&2
        OMP_NUM_THREADS=$t "$bench" --preset "$preset" --backend "$backend" --threads "$t" \
            --steps "$steps" --warmup "$warmup" >>"$raw"
        if ((direct_too)); then # oneDNN's direct convolutions in place of Winograd (lib/cpu/winograd.h)
            MAGNETS_WINOGRAD=0 OMP_NUM_THREADS=$t "$bench" --preset "$preset" --backend "$backend" --threads "$t" \
                --steps "$steps" --warmup "$warmup" | sed 's/"impl":"magnets"/"impl":"magnets-direct"/' >>"$raw"
        fi
        OMP_NUM_THREADS=$t "$python" bench/tokenizer_torch.py --config "$config" --threads "$t" \
            --steps "$steps" --warmup "$warmup" >>"$raw"
    done
done

"$python" - "$raw" "$config" "$command_line" <<'PY' | tee "$table"
import json, platform, statistics, sys
raw, config, command = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(raw) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"tokenizer training throughput, f32 on the CPU ({cpu})")
print(f"model: {config['image_size']}x{config['image_size']}x{config['channels']} -> "
      f"{config['image_size'] >> config['num_down']}x{config['image_size'] >> config['num_down']} tokens, "
      f"B={config['base_channels']} Hc={config['hidden_channels']} res={config['res_blocks']} "
      f"K={config['codebook_size']} c={config['code_dim']} {config['quantizer']}; batch {config['batch_size']}, Adam")
print()
hdr = f"{'impl':<15} {'version':<14} {'backend':<8} {'threads':>7} {'img/s':>9} {'sd':>7} {'ms/step':>9} {'n':>3} {'magnets/torch':>14}"
print(hdr)
print("-" * len(hdr))
by = {}
for r in rows:
    by.setdefault((r["threads"], r["impl"]), []).append(r)
for threads in sorted({k[0] for k in by}):
    torch_ips = [r["images_per_s"] for r in by.get((threads, "torch"), [])]
    for impl in ("magnets", "magnets-direct", "torch"):
        rs = by.get((threads, impl), [])
        if not rs:
            continue
        ips = [r["images_per_s"] for r in rs]
        mean = statistics.mean(ips)
        sd = statistics.stdev(ips) if len(ips) > 1 else 0.0
        ms = statistics.mean(r["ms_per_step"] for r in rs)
        ratio = f"{mean / statistics.mean(torch_ips):.2f}x" if impl != "torch" and torch_ips else ""
        print(f"{impl:<15} {rs[0]['version']:<14} {rs[0].get('backend', '-'):<8} {threads:>7} "
              f"{mean:>9.1f} {sd:>7.1f} {ms:>9.1f} {len(rs):>3} {ratio:>14}")
print()
print(f"each run: {rows[0]['warmup']} warm-up steps, then {rows[0]['steps']} timed steps; runs alternate magnets/torch")
if any(r["impl"] == "magnets-direct" for r in rows):
    print("magnets-direct: MAGNETS_WINOGRAD=0, oneDNN's direct convolutions (as PyTorch uses) for the 3x3 ones")
print(f"command: {command}")
print(f"raw results: {raw}")
PY
echo "table: $table" >&2
