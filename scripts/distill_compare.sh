#!/usr/bin/env bash
# The distillation comparison of METHOD section 5 on equal budgets.
#
# From one jointly trained checkpoint (BASE, magnets-train), continue for the
# same number of steps with
#   progressive   magnets-distill --objective progressive (alpha 1 -> 0)
#   ground-truth  magnets-distill --objective ground-truth (joint training continued)
#   distill-only  magnets-distill --objective distill-only (alpha = 0 throughout)
# and train independent (non-nested) small models of the m_8 and m_4 shapes
# from scratch for as many steps as BASE + the continuation together
# (magnets-train --factors 1 --width D/p --heads H/p). Every run validates on the
# same held-out tokens with the same fixed masks; the table reports each
# sub-model's validation cross-entropy and masked-token accuracy.
#
#   scripts/distill_compare.sh --base out/demo/model.h5 --tokens out/train_tokens.h5 \
#       --val out/test_tokens.h5 --steps 600 --out out/distill
#
# Writes OUT/compare.md (the table, the commands, the machine) and OUT/*.h5,
# OUT/*.jsonl. Takes about 20 minutes at the demo shape on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${MAGNETS_BUILD_DIR:-build}
base="" tokens="" val="" out="out/distill" steps=600 threads=0
while (($#)); do
    case "$1" in
        --base) base=$2; shift 2 ;;
        --tokens) tokens=$2; shift 2 ;;
        --val) val=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        -h|--help) sed -n '2,21s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "distill_compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$base" && -n "$tokens" && -n "$val" ]] || { echo "distill_compare.sh: --base, --tokens and --val are required" >&2; exit 2; }
train="$build/tools/magnets-train"
distill="$build/tools/magnets-distill"
mkdir -p "$out"

# The base model's shape and step count, from its root attributes.
read -r width heads base_steps factors < <(/usr/bin/python3 - "$base" <<'PY'
import sys, h5py
a = h5py.File(sys.argv[1], "r").attrs
s = lambda k: a[k].decode() if isinstance(a[k], bytes) else a[k]
print(int(a["width"]), int(a["heads"]), int(a["train_steps"]), s("factors"))
PY
)
total=$((base_steps + steps))
echo "distill_compare.sh: base $base (D=$width, H=$heads, factors $factors, $base_steps steps); +$steps steps each" >&2

common=(--tokens "$tokens" --val "$val" --threads "$threads" --val-every 0 --checkpoint-every 0)
for obj in progressive ground-truth distill-only; do
    if [[ ! -s "$out/$obj.h5" ]]; then
        "$distill" --from "$base" "${common[@]}" --objective "$obj" --steps "$steps" \
            -o "$out/$obj.h5" --log "$out/$obj.jsonl" || echo "distill_compare.sh: $obj failed (reported above)" >&2
    fi
done
for p in 8 4; do
    if [[ ! -s "$out/independent-m$p.h5" ]]; then
        "$train" --preset demo "${common[@]}" --factors 1 --width $((width / p)) --heads $((heads / p)) \
            --steps "$total" -o "$out/independent-m$p.h5" --log "$out/independent-m$p.jsonl"
    fi
done

/usr/bin/python3 - "$out" "$base" "$steps" "$total" "$factors" <<'PY' | tee "$out/compare.md"
import json, os, platform, sys
out, base, steps, total, factors = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def last_val(path):
    first = last = None
    if not os.path.exists(path):
        return None, None
    for line in open(path):
        r = json.loads(line)
        if r.get("validation"):
            first = first or r
            last = r
    return first, last
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
ps = [int(p) for p in factors.split(",")]
print(f"# Distillation comparison (equal budgets)\n")
print(f"Base: `{base}` (joint ground-truth training); each nested run continues it for {steps} steps;")
print(f"independent models train from scratch for {total} steps. Validation: cross-entropy / masked-token accuracy,")
print(f"fixed masks, same held-out tokens. Machine: {cpu}, {os.cpu_count()} cores.\n")
print("| run | " + " | ".join(f"m{p}" for p in ps) + " |")
print("|---|" + "---|" * len(ps))
before = None
for name in ("progressive", "ground-truth", "distill-only"):
    first, last = last_val(f"{out}/{name}.jsonl")
    if last is None:
        print(f"| {name} | " + " | ".join("failed" for _ in ps) + " |")
        continue
    before = before or first
    subs = {s["p"]: s for s in last["subs"]}
    print(f"| {name} | " + " | ".join(f"{subs[p]['ce']:.4f} / {100 * subs[p]['accuracy']:.2f}%" for p in ps) + " |")
if before:
    subs = {s["p"]: s for s in before["subs"]}
    print("| (base, before) | " + " | ".join(f"{subs[p]['ce']:.4f} / {100 * subs[p]['accuracy']:.2f}%" for p in ps) + " |")
row = []
for p in ps:
    _, last = last_val(f"{out}/independent-m{p}.jsonl")
    row.append(f"{last['subs'][0]['ce']:.4f} / {100 * last['subs'][0]['accuracy']:.2f}%" if last else "-")
print("| independent (non-nested) | " + " | ".join(row) + " |")
print()
print("Commands: scripts/distill_compare.sh " + " ".join(sys.argv[1:2]) + f" (see the script; logs in {out}/*.jsonl)")
PY
