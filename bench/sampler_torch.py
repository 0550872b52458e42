#!/usr/bin/env python3
"""MaGNeTS sampling (MaskGIT decoding with decode-time model scaling) in PyTorch, for throughput comparison.

The same algorithm as magnets::sample (METHOD section 6) on the nested model of
scripts/magnets_torch.py (same parameter names, shapes and sub-model slicing):
T = sum of the schedule's steps; step t runs sub-model m_p of the size schedule
(e.g. 8:3,4:3,2:3,1:3) on every position (no KV cache: "cache": "none"), takes
the logits of the still-masked positions, classifier-free guidance with the
conditional and the NULL-class branch batched together
(l = l_c + s (l_c - l_u)), samples a token per masked position from
softmax(l / tau) (Gumbel-max), scores it with log p + tau_c (1 - t/T) Gumbel
noise (tau_c = 4.5) and reveals the most confident so that
floor(N cos(pi/2 t/T)) stay masked (at least one revealed per step, none left
after step T). Every image of a batch has the same number of masked positions,
so the masked rows are a dense [batch, M] gather: the last layer computes
keys and values for every position and everything else (queries, attention,
output projection, MLP, final LayerNorm, head) for those rows only, as
magnets' decoder does.

Efficient inference: torch.inference_mode, f32, batched; per sub-model the
weight prefixes are packed once before timing into contiguous tensors with q,
k and v fused into one matrix (--weights view keeps strided views of the full
weights instead); attention through F.scaled_dot_product_attention when the
torch version has it (--attention). Random weights of the benchmark's scheme
(matrices N(0, 0.5^2 / in), head N(0, 2^2 / in), embeddings N(0, 0.5^2),
biases 0, LayerNorm gains 1); the values need not match magnets'.

--device cuda runs it on the GPU (timings after torch.cuda.synchronize);
--dtype bf16 casts the weights (activations follow; softmax and sampling in
f32); --compile wraps each sub-model's forward in torch.compile (compiled and
run once per sub-model before timing). These are the issue-6 baselines: eager
and compiled bf16 on the same card as magnets.

--forward-only times one full forward of the full model (p = 1) over --batch
sequences of S = N + 1 tokens plus the head on the N image rows (median of
--iters after --warmup), with magnets' FLOP count.

Prints one JSON object to stdout; never used by tests.

    /opt/torch-venv/bin/python bench/sampler_torch.py --schedule 8:3,4:3,2:3,1:3 --images 64 --batch 64
    /opt/torch-venv/bin/python bench/sampler_torch.py --device cuda --dtype bf16 --compile --width 768 --layers 24 \
        --heads 16 --grid-h 16 --grid-w 16 --K 1024 --schedule 1:12 --images 256 --batch 64
    /usr/bin/python3 bench/sampler_torch.py --width 64 --layers 2 --grid-h 4 --grid-w 4 --K 64 --schedule 1:4 --images 4 --batch 4
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import magnets_torch as mt  # noqa: E402


def parse_schedule(s):
    out = []
    for item in s.split(","):
        p, k = item.split(":")
        out.append((int(p), int(k)))
    if not out or any(p < 1 or k < 1 for p, k in out):
        raise SystemExit(f"invalid schedule {s!r}: write p:k pairs, e.g. 8:3,4:3,2:3,1:3")
    return out


def step_flops(cfg, p, rows, keys, head_rows):
    """magnets::step_flops: forward FLOPs per sequence (2 per multiply-add); the
    last layer computes keys and values for `rows`, the rest for `head_rows`."""
    r, a, _, f = cfg.sub(p)
    kv = lambda n: 2.0 * n * (2 * r * a)
    rest = lambda n: 2.0 * n * (r * a + a * r + 2 * r * f) + 4.0 * n * keys * a
    L = cfg.layers
    return L * kv(rows) + (L - 1) * rest(rows) + rest(head_rows) + 2.0 * head_rows * r * cfg.codebook_size


@torch.no_grad()
def init_bench(model, gen):
    for name, p in model.named_parameters():
        if p.dim() == 2:
            z = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
            if name.endswith("_emb.weight"):
                p.copy_(0.5 * z)
            else:
                gain = 2.0 if name.startswith("head.") else 0.5
                p.copy_(z * (gain / math.sqrt(p.shape[1])))
        elif ".ln" in "." + name and name.endswith(".weight"):
            p.fill_(1.0)
        else:
            p.zero_()


class SubModel:
    """The weights of sub-model m_p, packed for inference."""

    def __init__(self, model, p, weights):
        cfg = model.cfg
        self.cfg = cfg
        self.p = p
        self.r, self.a, self.nh, self.f = cfg.sub(p)
        r, a, f = self.r, self.a, self.f
        pack = (lambda t: t.contiguous().clone()) if weights == "contiguous" else (lambda t: t)
        self.tok = pack(model.tok_emb.weight[:, :r])
        self.pos = pack(model.pos_emb.weight[:, :r])
        self.layers = []
        for blk in model.blocks:
            at = blk.attn
            if weights == "contiguous":
                wqkv = torch.cat([at.q.weight[:a, :r], at.k.weight[:a, :r], at.v.weight[:a, :r]], 0).contiguous()
                bqkv = torch.cat([at.q.bias[:a], at.k.bias[:a], at.v.bias[:a]], 0).contiguous()
                qkv = (wqkv, bqkv)
            else:
                qkv = ((at.q.weight[:a, :r], at.q.bias[:a]), (at.k.weight[:a, :r], at.k.bias[:a]),
                       (at.v.weight[:a, :r], at.v.bias[:a]))
            self.layers.append(dict(
                ln1=(pack(blk.ln1.weight[:r]), pack(blk.ln1.bias[:r])), qkv=qkv,
                o=(pack(at.o.weight[:r, :a]), pack(at.o.bias[:r])),
                ln2=(pack(blk.ln2.weight[:r]), pack(blk.ln2.bias[:r])),
                fc1=(pack(blk.mlp.fc1.weight[:f, :r]), pack(blk.mlp.fc1.bias[:f])),
                fc2=(pack(blk.mlp.fc2.weight[:r, :f]), pack(blk.mlp.fc2.bias[:r]))))
        self.lnf = (pack(model.ln_f.weight[:r]), pack(model.ln_f.bias[:r]))
        self.head = (pack(model.head.weight[:, :r]), model.head.bias)
        self.fused = weights == "contiguous"
        self.forward = self.hidden

    def compile(self):
        self.forward = torch.compile(self.hidden)

    def hidden(self, ids, attention, rows):
        """ids [B, S], rows [B, M] (positions, ascending) -> final hidden rows
        of those positions after LN_f [B, M, r]. The last layer computes keys
        and values for all S positions and the rest for the M rows only, as
        magnets' decoder does (the other rows' outputs are never read)."""
        B, S = ids.shape
        r, a, nh = self.r, self.a, self.nh
        hd = self.cfg.head_dim
        eps = mt.LN_EPS
        x = F.embedding(ids, self.tok) + self.pos[:S]
        last = len(self.layers) - 1
        for li, L in enumerate(self.layers):
            h = F.layer_norm(x, (r,), L["ln1"][0], L["ln1"][1], eps)
            if self.fused:
                qkv = F.linear(h, *L["qkv"]).view(B, S, 3, nh, hd).permute(2, 0, 3, 1, 4)
                q, k, v = qkv[0], qkv[1], qkv[2]
            else:
                q, k, v = (F.linear(h, *wb).view(B, S, nh, hd).transpose(1, 2) for wb in L["qkv"])
            M = S
            if li == last:
                M = rows.shape[1]
                x = x.gather(1, rows[:, :, None].expand(B, M, r))
                q = q.gather(2, rows[:, None, :, None].expand(B, nh, M, hd))
            if attention == "sdpa":
                att = F.scaled_dot_product_attention(q, k, v)
            else:
                w = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)), dim=-1)
                att = torch.matmul(w, v)
            att = att.transpose(1, 2).reshape(B, M, a)
            x = x + F.linear(att, *L["o"])
            h2 = F.layer_norm(x, (r,), L["ln2"][0], L["ln2"][1], eps)
            x = x + F.linear(F.gelu(F.linear(h2, *L["fc1"])), *L["fc2"])
        return F.layer_norm(x, (r,), self.lnf[0], self.lnf[1], eps)

    def head_logits(self, h):
        return F.linear(h, *self.head)


def masked_after(N, T):
    """Masked positions per image after each step (cosine schedule), as magnets::sample."""
    out, prev = [], N
    for t in range(1, T + 1):
        keep = 0 if t == T else int(math.floor(N * math.cos(math.pi / 2 * t / T)))
        keep = max(0, min(keep, prev - 1))
        out.append(keep)
        prev = keep
    return out


def gumbel(shape, gen):
    u = torch.rand(shape, generator=gen, device=gen.device).clamp_(min=1e-20)
    return -torch.log(-torch.log(u))


def sample_batch(subs, cfg, step_p, keeps, classes, args, attention, gen):
    """Decodes one batch; returns tokens [B, N]."""
    B, N, S, K = classes.shape[0], cfg.tokens, cfg.seq, cfg.codebook_size
    T = len(step_p)
    cfg_on = args.cfg > 0
    nbr = 2 if cfg_on else 1
    dev = gen.device
    ids = torch.full((nbr * B, S), cfg.mask_id, dtype=torch.long, device=dev)
    ids[:B, 0] = cfg.codebook_size + 1 + classes.to(dev)
    if cfg_on:
        ids[B:, 0] = cfg.null_id
    tokens = torch.full((B, N), K, dtype=torch.long, device=dev)
    midx = torch.arange(N, device=dev).expand(B, N).contiguous()  # masked positions per image, ascending
    mask = torch.ones(B, N, dtype=torch.bool, device=dev)
    M = N
    for s in range(T):
        sub = subs[step_p[s]]
        t1 = (s + 1) / T
        gidx = midx.repeat(nbr, 1) if cfg_on else midx
        h = sub.forward(ids, attention, gidx + 1)                     # [nbr B, M, r], masked rows only
        logits = sub.head_logits(h).float()                           # [nbr B, M, K]
        if cfg_on:
            lc, lu = logits[:B], logits[B:]
            logits = lc + args.cfg * (lc - lu)
        if args.temperature != 1.0:
            logits = logits / args.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        tok = torch.argmax(logp_all + gumbel((B, M, K), gen), dim=-1)  # a draw from softmax
        logp = logp_all.gather(-1, tok[..., None])[..., 0]
        conf = logp + args.choice_temperature * (1.0 - t1) * gumbel((B, M), gen)
        keep = keeps[s]
        top = conf.topk(M - keep, dim=1).indices                      # most confident
        posn = midx.gather(1, top)
        val = tok.gather(1, top)
        tokens.scatter_(1, posn, val)
        ids[:B, 1:].scatter_(1, posn, val)
        if cfg_on:
            ids[B:, 1:].scatter_(1, posn, val)
        mask.scatter_(1, posn, False)
        M = keep
        if M:
            midx = mask.nonzero()[:, 1].view(B, M)
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=64, help="timed images")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup-images", type=int, default=-1, help="untimed images first (default min(batch, 8))")
    ap.add_argument("--schedule", default="8:3,4:3,2:3,1:3")
    ap.add_argument("--cache", default="none", choices=["none"], help="PyTorch runs without a KV cache")
    ap.add_argument("--cfg", type=float, default=2.0, help="guidance scale (0 = off)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--choice-temperature", type=float, default=4.5)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--iters", type=int, default=5, help="--forward-only: timed forwards")
    ap.add_argument("--warmup", type=int, default=1, help="--forward-only: untimed forwards")
    ap.add_argument("--K", type=int, default=512, help="codebook size")
    ap.add_argument("--C", type=int, default=10, help="number of classes")
    ap.add_argument("--grid-t", type=int, default=1)
    ap.add_argument("--grid-h", type=int, default=8)
    ap.add_argument("--grid-w", type=int, default=8)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--mlp-ratio", type=int, default=4)
    ap.add_argument("--nesting", choices=mt.NESTINGS, default="width")
    ap.add_argument("--factors", default="8,4,2,1")
    ap.add_argument("--attention", choices=["auto", "math", "sdpa"], default="auto",
                    help="math: explicit softmax(QK^T)V; sdpa: F.scaled_dot_product_attention "
                         "(torch >= 2.0); auto: sdpa when available")
    ap.add_argument("--weights", choices=["contiguous", "view"], default="contiguous",
                    help="contiguous: per sub-model packed copies (fused qkv), made before timing; "
                         "view: strided views of the full weights")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--compile", action="store_true", help="torch.compile each sub-model's forward")
    args = ap.parse_args()
    if args.images < 1 or args.batch < 1 or args.iters < 1:
        raise SystemExit("--images, --batch and --iters must be positive")
    warmup_images = min(args.batch, 8) if args.warmup_images < 0 else args.warmup_images

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: this torch sees no GPU (torch.cuda.is_available() is False)")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cpu_gen = torch.Generator().manual_seed(args.seed)   # weights and inputs, as on the CPU
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cfg = mt.Config(codebook_size=args.K, num_classes=args.C, grid_t=args.grid_t, grid_h=args.grid_h,
                    grid_w=args.grid_w, width=args.width, heads=args.heads, layers=args.layers,
                    mlp_ratio=args.mlp_ratio, nesting=args.nesting, factors=mt.parse_factors(args.factors))
    model = mt.NestedTransformer(cfg)
    init_bench(model, cpu_gen)
    model.to(device=dev, dtype=dtype)
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    has_sdpa = hasattr(F, "scaled_dot_product_attention")
    attention = args.attention
    if attention == "auto":
        attention = "sdpa" if has_sdpa else "math"
    if attention == "sdpa" and not has_sdpa:
        raise SystemExit(f"--attention sdpa needs torch >= 2.0 (this is {torch.__version__})")

    N, S, K, C = cfg.tokens, cfg.seq, cfg.codebook_size, cfg.num_classes
    model_info = {"K": K, "C": C, "grid": [cfg.grid_t, cfg.grid_h, cfg.grid_w], "width": cfg.width,
                  "heads": cfg.heads, "layers": cfg.layers, "mlp_ratio": cfg.mlp_ratio, "nesting": cfg.nesting,
                  "factors": mt.factors_to_string(cfg.factors),
                  "params": sum(prm.numel() for prm in model.parameters())}
    common = {"impl": "pytorch", "torch": str(torch.__version__), "threads": torch.get_num_threads(),
              "attention": attention, "weights": args.weights, "device": str(dev), "dtype": args.dtype,
              "compile": args.compile}
    if dev.type == "cuda":
        common["gpu"] = torch.cuda.get_device_name(dev)

    with torch.inference_mode():
        if args.forward_only:
            sub = SubModel(model, 1, args.weights)
            if args.compile:
                sub.compile()
            B = args.batch
            ids = torch.randint(0, K, (B, S), generator=cpu_gen)
            ids = torch.where(torch.rand(B, S, generator=cpu_gen) < 0.5, torch.full_like(ids, cfg.mask_id), ids)
            ids[:, 0] = K + 1 + torch.arange(B) % C
            ids = ids.to(dev)

            image_rows = torch.arange(1, S, device=dev).expand(B, N).contiguous()

            def run():
                return sub.head_logits(sub.forward(ids, attention, image_rows))

            for _ in range(max(args.warmup, 1 if args.compile else 0)):
                run()
            sync()
            times = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                run()
                sync()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            flops = step_flops(cfg, 1, S, S, N) * B
            print(json.dumps(dict(common, mode="forward", batch=B, seq=S, iters=args.iters,
                                  seconds=round(med, 5), seconds_mean=round(statistics.mean(times), 5),
                                  seconds_best=round(min(times), 5), gflop=round(flops / 1e9, 3),
                                  gflop_per_s=round(flops / med / 1e9, 2),
                                  gflop_per_s_best=round(flops / min(times) / 1e9, 2),
                                  seq_per_s=round(B / med, 2), model=model_info)))
            return

        sched = parse_schedule(args.schedule)
        step_p = [p for p, k in sched for _ in range(k)]
        T = len(step_p)
        for p in set(step_p):
            if p not in cfg.factors:
                raise SystemExit(f"the schedule names m_{p}; the model has p in {cfg.factors}")
        if T > N:
            raise SystemExit(f"{T} steps for {N} tokens: use at most N steps")
        subs = {p: SubModel(model, p, args.weights) for p in set(step_p)}
        if args.compile:
            for sub in subs.values():
                sub.compile()
        keeps = masked_after(N, T)
        nbr = 2 if args.cfg > 0 else 1
        masked_before = [N] + keeps[:-1]
        flops_per_image = sum(nbr * step_flops(cfg, step_p[s], S, S, masked_before[s]) for s in range(T))
        classes = torch.arange(max(args.images, warmup_images)) % C

        def run(n):
            for first in range(0, n, args.batch):
                sample_batch(subs, cfg, step_p, keeps, classes[first:min(n, first + args.batch)], args, attention,
                             gen)

        if args.compile: # compile every sub-model at the timed batch shape before timing
            run(min(args.batch, max(args.images, warmup_images)))
        if warmup_images > 0:
            run(warmup_images)
        sync()
        t0 = time.perf_counter()
        run(args.images)
        sync()
        seconds = time.perf_counter() - t0

    print(json.dumps(dict(common, mode="sample", schedule=",".join(f"{p}:{k}" for p, k in sched), steps=T,
                          cache="none", cfg=args.cfg, batch=args.batch, images=args.images,
                          warmup_images=warmup_images, seconds=round(seconds, 4),
                          images_per_s=round(args.images / seconds, 4),
                          gflop_per_image=round(flops_per_image / 1e9, 4),
                          gflop_per_s=round(flops_per_image * args.images / seconds / 1e9, 2), model=model_info)))


if __name__ == "__main__":
    main()
