#!/usr/bin/env python3
"""The magnets VQ tokenizer and its training step in PyTorch, for throughput comparison.

Same architecture, parameter names and layouts as lib/nn/tokenizer.cpp (see
magnets-formats(5); checked by loading a magnets checkpoint's /weights into it
and comparing tokens); same training step as lib/nn/tokenizer_train.cpp: random
batch from Fashion-MNIST (28x28 padded to image_size), encoder, nearest-code
quantizer with straight-through gradients, decoder, loss = recon +
beta * commitment (+ codebook loss for quantizer=loss), EMA codebook update
(decay, Laplace smoothing) for quantizer=ema, Adam(lr, 0.9/0.999, eps 1e-8) with
warm-up + cosine schedule, dead-code restarts, codebook initialised from the
first batch's encoder outputs. f32 on the CPU with torch.set_num_threads(threads).

Prints one JSON object to stdout. Used by bench/run_tokenizer_bench.sh; never by tests.

    python tokenizer_torch.py --config "$(build/bench/bench_tokenizer --print-config)" --threads 2
"""
import argparse
import gzip
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    # h + conv_b(relu(conv_a(relu(h)))): conv_a 3x3 p1, conv_b 1x1.
    def __init__(self, ch):
        super().__init__()
        self.conv_a = nn.Conv2d(ch, ch, 3, 1, 1)
        self.conv_b = nn.Conv2d(ch, ch, 1, 1, 0)

    def forward(self, h):
        return h + self.conv_b(F.relu(self.conv_a(F.relu(h))))


class Encoder(nn.Module):
    # Stage 1 of num_down is a pixel unshuffle (space-to-depth), so no conv runs
    # at full resolution; then num_down - 1 stride-2 convs.
    def __init__(self, cfg):
        super().__init__()
        B, H = cfg["base_channels"], cfg["hidden_channels"]
        self.conv_in = nn.Conv2d(4 * cfg["channels"], B, 3, 1, 1)
        for i in range(cfg["num_down"] - 1):
            setattr(self, f"down{i}", nn.Conv2d(B if i == 0 else H, H, 4, 2, 1))
        for j in range(cfg["res_blocks"]):
            setattr(self, f"res{j}", ResBlock(H))
        self.conv_out = nn.Conv2d(H, cfg["code_dim"], 1, 1, 0)
        self.num_down, self.res_blocks = cfg["num_down"], cfg["res_blocks"]

    def forward(self, x):
        h = F.relu(self.conv_in(F.pixel_unshuffle(x, 2)))
        for i in range(self.num_down - 1):
            h = F.relu(getattr(self, f"down{i}")(h))
        for j in range(self.res_blocks):
            h = getattr(self, f"res{j}")(h)
        return self.conv_out(F.relu(h))


class Decoder(nn.Module):
    # Mirror of the encoder: num_down - 1 (nearest x2, conv3x3) stages, then a
    # conv to 4 * tail_channels, a pixel shuffle, ReLU and a full-resolution 3x3
    # conv ("tail") to the image channels.
    def __init__(self, cfg):
        super().__init__()
        B, H = cfg["base_channels"], cfg["hidden_channels"]
        n = cfg["num_down"]
        self.conv_in = nn.Conv2d(cfg["code_dim"], H, 3, 1, 1)
        for j in range(cfg["res_blocks"]):
            setattr(self, f"res{j}", ResBlock(H))
        for i in range(n - 1):
            setattr(self, f"up{i}", nn.Conv2d(H, B if i == n - 2 else H, 3, 1, 1))
        self.conv_out = nn.Conv2d(B if n > 1 else H, 4 * cfg["tail_channels"], 3, 1, 1)
        self.tail = nn.Conv2d(cfg["tail_channels"], cfg["channels"], 3, 1, 1)
        self.num_down, self.res_blocks = n, cfg["res_blocks"]

    def forward(self, z):
        h = self.conv_in(z)
        for j in range(self.res_blocks):
            h = getattr(self, f"res{j}")(h)
        h = F.relu(h)
        for i in range(self.num_down - 1):
            h = F.relu(getattr(self, f"up{i}")(F.interpolate(h, scale_factor=2, mode="nearest")))
        return self.tail(F.relu(F.pixel_shuffle(self.conv_out(h), 2)))


class Tokenizer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        K, c = cfg["codebook_size"], cfg["code_dim"]
        self.enc = Encoder(cfg)
        self.dec = Decoder(cfg)
        self.quant = nn.Module()
        ema = cfg["quantizer"] == "ema"
        self.quant.codebook = nn.Parameter(torch.randn(K, c) / math.sqrt(c), requires_grad=not ema)
        self.register_buffer("ema_count", torch.ones(K))
        self.register_buffer("ema_sum", self.quant.codebook.detach().clone())

    def nearest(self, rows):
        # rows [m, c] -> code index [m] by L2 distance.
        cb = self.quant.codebook
        d = (rows * rows).sum(1, keepdim=True) - 2.0 * rows @ cb.t() + (cb * cb).sum(1)[None, :]
        return d.argmin(1)

    def step_loss(self, x):
        cfg = self.cfg
        z_e = self.enc(x)                                    # [n, c, h, w]
        n, c, h, w = z_e.shape
        rows = z_e.permute(0, 2, 3, 1).reshape(-1, c)        # [n*h*w, c]
        with torch.no_grad():
            codes = self.nearest(rows)
        z_q_rows = F.embedding(codes, self.quant.codebook)
        z_q = z_q_rows.reshape(n, h, w, c).permute(0, 3, 1, 2)
        z_st = z_e + (z_q - z_e).detach()                    # straight-through
        x_hat = self.dec(z_st)
        recon = F.mse_loss(x_hat, x) if cfg["recon_loss"] == "l2" else F.l1_loss(x_hat, x)
        commit = F.mse_loss(z_e, z_q.detach())
        loss = recon + cfg["commitment"] * commit
        if cfg["quantizer"] == "loss":
            loss = loss + F.mse_loss(z_q, z_e.detach())
        return loss, rows.detach(), codes, x_hat.detach()

    @torch.no_grad()
    def ema_update(self, rows, codes):
        K = self.cfg["codebook_size"]
        d = self.cfg["ema_decay"]
        counts = torch.bincount(codes, minlength=K).to(rows.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, rows)
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.ema_count.sum()
        eps = 1e-5
        cnt = (self.ema_count + eps) / (total + K * eps) * total
        self.quant.codebook.copy_(self.ema_sum / cnt[:, None])
        return counts

    @torch.no_grad()
    def reseed(self, which, rows, gen):
        if len(which) == 0:
            return
        pick = torch.randint(0, rows.shape[0], (len(which),), generator=gen)
        self.quant.codebook[which] = rows[pick]
        self.ema_sum[which] = rows[pick]
        self.ema_count[which] = 1.0


def load_fashion_mnist(directory, size):
    with gzip.open(os.path.join(directory, "train-images-idx3-ubyte.gz"), "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    imgs = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, 28, 28)
    pad = (size - 28) // 2
    out = np.zeros((n, 1, size, size), dtype=np.uint8)
    out[:, :, pad:pad + 28, pad:pad + 28] = imgs
    return torch.from_numpy(out)


def lr_at(step, cfg, total):
    peak, warmup, lo = cfg["lr"], cfg["warmup"], cfg["lr"] * cfg["lr_min_ratio"]
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(total - warmup, 1))
    return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="JSON from bench_tokenizer --print-config")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", choices=["train", "fwdbwd"], default="train")
    ap.add_argument("--restart-every", type=int, default=50)
    ap.add_argument("--dead-threshold", type=float, default=1e-3)
    ap.add_argument("--data", default=os.environ.get("MAGNETS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    cfg = json.loads(args.config)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = load_fashion_mnist(args.data, cfg["image_size"])
    model = Tokenizer(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    B, K = cfg["batch_size"], cfg["codebook_size"]
    total = args.warmup + args.steps
    perm = torch.randperm(data.shape[0], generator=gen)
    window = torch.zeros(K)

    def batch_at(step):
        idx = perm[(step * B + torch.arange(B)) % data.shape[0]]
        return data[idx].to(torch.float32).div_(255.0)

    fixed = batch_at(0)
    with torch.no_grad():  # codebook from data, as the C++ trainer does
        z = model.enc(fixed).permute(0, 2, 3, 1).reshape(-1, cfg["code_dim"])
        model.reseed(torch.arange(K), z, gen)

    t_start = time.perf_counter()
    for step in range(total):
        if step == args.warmup:
            t_start = time.perf_counter()
        x = fixed if args.mode == "fwdbwd" else batch_at(step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, total)
        opt.zero_grad(set_to_none=True)
        loss, rows, codes, x_hat = model.step_loss(x)
        loss.backward()
        if cfg["quantizer"] == "ema":
            window += model.ema_update(rows, codes)
        else:
            window += torch.bincount(codes, minlength=K).float()
        if args.mode == "train":
            opt.step()
            if args.restart_every > 0 and (step + 1) % args.restart_every == 0:
                dead = torch.nonzero(window <= args.dead_threshold * window.sum() / K).flatten()
                model.reseed(dead, rows, gen)
                window.zero_()
        with torch.no_grad():  # batch PSNR, as the C++ step reports it
            mse = (x_hat.clamp(0, 1) - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
            psnr = float((-10.0 * torch.log10(mse)).mean())
    t_end = time.perf_counter()

    seconds = t_end - t_start
    print(json.dumps({
        "impl": "torch", "version": torch.__version__, "mode": args.mode,
        "threads": torch.get_num_threads(), "batch_size": B, "steps": args.steps, "warmup": args.warmup,
        "seconds": round(seconds, 4), "ms_per_step": round(1e3 * seconds / args.steps, 3),
        "images_per_s": round(args.steps * B / seconds, 2), "final_loss": round(float(loss.detach()), 6), "final_psnr": round(psnr, 3),
    }))


if __name__ == "__main__":
    main()
