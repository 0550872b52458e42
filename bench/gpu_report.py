#!/usr/bin/env python3
"""The issue-6 sampling table from one GPU run: magnets against PyTorch on the same card.

Reads the JSON lines that scripts/gpu_check.sh writes ($OUT/magnets-gpu.jsonl from
bench_sampler --backend cuda, $OUT/torch-baselines.jsonl from bench/sampler_torch.py)
and prints images/s per implementation, precision, schedule and cache, then the
issue's targets as ratios measured in that run:

  magnets MaGNeTS with cache     >= 1.5x torch.compile's MaGNeTS
  magnets full model (1:12)      >= 1.2x torch.compile's full model
  magnets MaGNeTS with cache     >= 2.5x magnets' full model
  magnets training step          >= 1.0x PyTorch eager bf16 (tokens/s)

For each magnets ratio the faster magnets precision is used (and named). Missing
runs are reported as missing, never guessed. Standard library only (the GPU
machine's python3 has no extras beyond PyTorch).

    python3 bench/gpu_report.py DIR            # DIR holds the two .jsonl files
    python3 bench/gpu_report.py A.jsonl B.jsonl
"""
import json
import os
import sys


def load(paths):
    rows = []
    for p in paths:
        if os.path.isdir(p):
            load_dir = [os.path.join(p, f) for f in ("magnets-gpu.jsonl", "torch-baselines.jsonl")]
            rows += load([f for f in load_dir if os.path.exists(f)])
            continue
        if not os.path.exists(p):
            print(f"gpu_report.py: {p}: no such file (skipped)", file=sys.stderr)
            continue
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return rows


def key(r):
    if r.get("impl") == "magnets":
        variant = "magnets " + r.get("precision", "f32")
    else:
        variant = "torch " + r.get("dtype", "?") + (" compile" if r.get("compile") else " eager")
    return variant, r.get("batch"), r.get("schedule"), r.get("cache", "none")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    every = load(argv[1:])
    rows = [r for r in every if r.get("mode") == "sample"]
    train = [r for r in every if r.get("mode") == "train"]
    if not rows and not train:
        print("gpu_report.py: no sampling results in " + " ".join(argv[1:]), file=sys.stderr)
        pipeline_report(argv[1:])
        return 1
    best = {}
    if not rows:
        print("gpu_report.py: no sampling results")
    for r in rows:
        k = key(r)
        best[k] = max(best.get(k, 0.0), float(r["images_per_s"]))
    gpu = next((r.get("gpu") for r in rows if r.get("gpu")), None)
    print(f"sampling throughput on the GPU{' (' + gpu + ')' if gpu else ''}: images/s, best run of each")
    print(f"{'variant':<22} {'batch':>5} {'schedule':<16} {'cache':<10} {'images/s':>9}")
    for k in sorted(best, key=lambda k: (k[1] or 0, k[2] or "", k[0], k[3])):
        print(f"{k[0]:<22} {k[1]!s:>5} {k[2]!s:<16} {k[3]:<10} {best[k]:>9.1f}")

    full, nested = "1:12", "8:3,4:3,2:3,1:3"
    print()
    for batch in sorted({k[1] for k in best}):
        def get(variant, sched, cache):
            return best.get((variant, batch, sched, cache))

        def ours(sched, cache):
            cands = [(v, p) for p in ("f32", "bf16") if (v := get("magnets " + p, sched, cache))]
            return max(cands) if cands else (None, None)

        def ratio(label, num, den, target):
            if num is None or den is None:
                print(f"  batch {batch}: {label:<58} missing")
                return
            r = num / den
            print(f"  batch {batch}: {label:<58} {r:5.2f}x  target >= {target}x: {'met' if r >= target else 'NOT met'}")

        tc_nested = get("torch bf16 compile", nested, "none")
        tc_full = get("torch bf16 compile", full, "none")
        (ours_nested, p_n), (ours_full, p_f) = ours(nested, "on-switch"), ours(full, "none")
        ratio(f"magnets MaGNeTS+cache ({p_n}) / torch.compile MaGNeTS", ours_nested, tc_nested, 1.5)
        ratio(f"magnets 1:12 ({p_f}) / torch.compile 1:12", ours_full, tc_full, 1.2)
        for p in ("f32", "bf16"):
            ratio(f"magnets MaGNeTS+cache / magnets 1:12 ({p})", get("magnets " + p, nested, "on-switch"),
                  get("magnets " + p, full, "none"), 2.5)

    # training throughput (tokens/s, every sub-model per step)
    ours = max((float(r["tokens_per_s"]) for r in train if r.get("impl") == "magnets"), default=None)
    for r in train:
        if r.get("impl") == "magnets":
            print(f"magnets training ({r.get('precision', 'f32')}): {float(r['tokens_per_s']):.0f} tokens/s")
    torch_eager = max((float(r["tokens_per_s"]) for r in train
                       if r.get("impl") == "pytorch" and not r.get("compile")), default=None)
    print()
    print(f"training tokens/s: magnets {ours if ours is not None else 'missing'}, "
          f"PyTorch eager bf16 {torch_eager if torch_eager is not None else 'missing'}")
    if ours is not None and torch_eager is not None:
        r = ours / torch_eager
        print(f"  magnets training / PyTorch eager bf16: {r:5.2f}x  target >= 1.0x: {'met' if r >= 1.0 else 'NOT met'}")
    pipeline_report(argv[1:])
    return 0


def pipeline_report(paths):
    """The demo pipeline stage: FID of the GPU's samples against the CPU's (same
    seed) and the seed noise (two CPU seeds), all measured on the GPU."""
    rows = {}
    for p in paths:
        f = os.path.join(p, "pipeline.jsonl") if os.path.isdir(p) else None
        if not f or not os.path.exists(f):
            continue
        with open(f) as fh:
            for line in fh:
                if line.startswith("{"):
                    try:
                        r = json.loads(line)
                        rows[r["set"]] = r if r["set"] == "agreement" else r["metrics"]
                    except (ValueError, KeyError):
                        pass
    if not rows:
        return
    print()
    print("demo pipeline (magnets-eval --device cuda, 1,000 samples, classifier features):")
    ag = rows.get("agreement")
    if ag:
        print(f"  GPU tokens equal to the CPU's (seed 1): {ag['tokens_equal']} of {ag['tokens']} tokens "
              f"({100.0 * ag['tokens_equal'] / max(ag['tokens'], 1):.2f}%), "
              f"{ag['images_equal']} of {ag['images']} whole images")
    for k in ("gpu_s1", "cpu_s1", "cpu_s2"):
        m = rows.get(k)
        print(f"  {k:<7} FID {m['fid']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}" if m
              else f"  {k:<7} missing")
    if all(k in rows for k in ("gpu_s1", "cpu_s1", "cpu_s2")):
        noise = abs(rows["cpu_s1"]["fid"] - rows["cpu_s2"]["fid"])
        d = abs(rows["gpu_s1"]["fid"] - rows["cpu_s1"]["fid"])
        print(f"  |FID gpu - FID cpu| (seed 1) = {d:.3f}; seed noise |FID cpu s1 - cpu s2| = {noise:.3f}: "
              f"{'within' if d <= max(noise, 0.5) else 'OUTSIDE'} noise")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
