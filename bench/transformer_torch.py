#!/usr/bin/env python3
"""The magnets nested transformer's joint training step in PyTorch, for throughput comparison.

The model is scripts/magnets_torch.py (same parameter names, shapes and
sub-model slicing as lib/magnets/transformer.h). One step: a random masked
batch (class token, or NULL with probability --class-dropout; per example
r ~ U(0,1) and ceil(cos(pi/2 r) N) masked positions), the joint ground_truth
loss over every sub-model in --factors (CE with label smoothing 0.1 on the
masked positions, weights 1), backward, clip_grad_norm_(1.0), AdamW (betas
0.9/0.96, eps 1e-8, weight decay 0.045 on matrices, constant lr). All batches
are generated before timing. f32 on the CPU with torch.set_num_threads(threads);
--device cuda runs on the GPU (timed after torch.cuda.synchronize), --dtype bf16
under torch.autocast (bf16 matmuls, f32 master weights and optimizer: the
usual mixed-precision recipe, issue 6's "PyTorch eager bf16" baseline).

Prints one JSON object to stdout; never used by tests.

    /opt/torch-venv/bin/python bench/transformer_torch.py --threads 2 --steps 20 --warmup 3
    /opt/torch-venv/bin/python bench/transformer_torch.py --device cuda --dtype bf16 --width 768 --layers 24 \
        --heads 16 --grid-h 16 --grid-w 16 --K 1024 --batch 64
    /usr/bin/python3 bench/transformer_torch.py --steps 2 --warmup 1 --width 64 --layers 2
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import magnets_torch as mt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--K", type=int, default=512, help="codebook size")
    ap.add_argument("--C", type=int, default=10, help="number of classes")
    ap.add_argument("--grid-t", type=int, default=1)
    ap.add_argument("--grid-h", type=int, default=8)
    ap.add_argument("--grid-w", type=int, default=8)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--nesting", choices=mt.NESTINGS, default="width")
    ap.add_argument("--factors", default="8,4,2,1")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--class-dropout", type=float, default=0.1)
    ap.add_argument("--attention", choices=["auto", "math", "sdpa"], default="auto",
                    help="math: explicit softmax(QK^T)V; sdpa: F.scaled_dot_product_attention "
                         "(torch >= 2.0); auto: sdpa when available")
    ap.add_argument("--head-rows", choices=["masked", "all"], default="masked",
                    help="output head on the masked positions only (as magnets) or on all positions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="bf16: torch.autocast")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no GPU (torch.cuda.is_available() is False)")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = mt.Config(codebook_size=args.K, num_classes=args.C, grid_t=args.grid_t, grid_h=args.grid_h,
                    grid_w=args.grid_w, width=args.width, heads=args.heads, layers=args.layers,
                    mlp_ratio=args.mlp_ratio, nesting=args.nesting, factors=mt.parse_factors(args.factors))
    model = mt.NestedTransformer(cfg)
    mt.init_like_magnets(model, gen)
    model.to(dev)
    has_sdpa = hasattr(torch.nn.functional, "scaled_dot_product_attention")
    attention = args.attention
    if attention == "auto":
        attention = "sdpa" if has_sdpa else "math"
    if attention == "sdpa" and not has_sdpa:
        raise SystemExit(f"--attention sdpa needs torch >= 2.0 (this is {torch.__version__})")
    model.attention = attention
    model.head_rows = args.head_rows
    opt = mt.make_adamw(model, args.lr)
    params = list(model.parameters())

    B, N, K, C = args.batch, cfg.tokens, cfg.codebook_size, cfg.num_classes
    total = args.warmup + args.steps
    batches = []
    for _ in range(total):
        targets = torch.randint(0, K, (B, N), generator=gen)
        mask = mt.cosine_mask(N, B, gen)
        cls = K + 1 + torch.randint(0, C, (B,), generator=gen)
        drop = torch.rand(B, generator=gen) < args.class_dropout
        cls = torch.where(drop, torch.full_like(cls, cfg.null_id), cls)
        ids = torch.cat([cls[:, None], torch.where(mask, torch.full_like(targets, cfg.mask_id), targets)], 1)
        batches.append((ids.to(dev), targets.to(dev), mask.to(dev)))

    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    t_start = time.perf_counter()
    for step in range(total):
        if step == args.warmup:
            sync()
            t_start = time.perf_counter()
        ids, targets, mask = batches[step]
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = mt.joint_loss(model, ids, targets, mask, "ground_truth", 1.0, None, args.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    sync()
    t_end = time.perf_counter()

    seconds = t_end - t_start
    print(json.dumps({
        "impl": "pytorch", "torch": str(torch.__version__), "threads": torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "batch": B, "seconds": round(seconds, 4),
        "ms_per_step": round(1e3 * seconds / max(args.steps, 1), 3),
        "tokens_per_s": round(B * N * args.steps / seconds, 2) if seconds > 0 else None,
        "seq_per_s": round(B * args.steps / seconds, 2) if seconds > 0 else None,
        "final_loss": round(float(loss.detach()), 6), "attention": attention, "head_rows": args.head_rows,
        "device": str(dev), "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "model": {"K": K, "C": C, "grid": [cfg.grid_t, cfg.grid_h, cfg.grid_w], "width": cfg.width,
                  "heads": cfg.heads, "layers": cfg.layers, "mlp_ratio": cfg.mlp_ratio, "nesting": cfg.nesting,
                  "factors": mt.factors_to_string(cfg.factors),
                  "params": sum(p.numel() for p in params)},
    }))


if __name__ == "__main__":
    main()
