#!/usr/bin/python3
"""PyTorch reference for the magnets VQ tokenizer (tests/fixtures/tokenizer_fixture.h5).

Builds the architecture of lib/nn/tokenizer.cpp at a tiny size in PyTorch
(f64 for the reference numbers), runs one training forward/backward with the
"loss" quantizer (codebook + commitment losses, straight-through) and stores:
  /weights/<name>        the weights (as a magnets-tokenizer checkpoint, so the
                         library's own reader loads them)
  /fixture/x             input images [n, C, S, S]
  /fixture/z_e, x_hat    encoder output, reconstruction
  /fixture/codes         chosen codes (int32)
  /fixture/grads/<name>  d(loss)/d(weight)
  root attrs             the model configuration, loss terms (fixture_loss, ...)
Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_tokenizer_fixture.py
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

cfg = dict(image_size=16, channels=1, base_channels=4, hidden_channels=6, num_down=2, res_blocks=1, tail_channels=2,
           codebook_size=16, code_dim=3, quantizer="loss", commitment=0.25, ema_decay=0.99, recon_loss="l2")
N = 3
out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tokenizer_fixture.h5"
torch.manual_seed(0)
dt = torch.float64


def conv_param(name, ci, co, k, params):
    bound = (6.0 / (ci * k * k)) ** 0.5
    params[name + ".weight"] = (torch.rand(co, ci, k, k, dtype=dt) * 2 - 1) * bound
    params[name + ".bias"] = (torch.rand(co, dtype=dt) * 2 - 1) * 0.1


def build():
    p = {}
    B, H, C, c = cfg["base_channels"], cfg["hidden_channels"], cfg["channels"], cfg["code_dim"]
    conv_param("enc.conv_in", 4 * C, B, 3, p)
    for i in range(cfg["num_down"] - 1):
        conv_param(f"enc.down{i}", B if i == 0 else H, H, 4, p)
    for j in range(cfg["res_blocks"]):
        conv_param(f"enc.res{j}.conv_a", H, H, 3, p)
        conv_param(f"enc.res{j}.conv_b", H, H, 1, p)
    conv_param("enc.conv_out", H, c, 1, p)
    conv_param("dec.conv_in", c, H, 3, p)
    for j in range(cfg["res_blocks"]):
        conv_param(f"dec.res{j}.conv_a", H, H, 3, p)
        conv_param(f"dec.res{j}.conv_b", H, H, 1, p)
    for i in range(cfg["num_down"] - 1):
        conv_param(f"dec.up{i}", H, B if i == cfg["num_down"] - 2 else H, 3, p)
    conv_param("dec.conv_out", B, 4 * cfg["tail_channels"], 3, p)
    conv_param("dec.tail", cfg["tail_channels"], C, 3, p)
    return p


def conv(p, name, x, stride=1, pad=None):
    w = p[name + ".weight"]
    k = w.shape[-1]
    if pad is None:
        pad = 1 if k == 3 else 0
    return F.conv2d(x, w, p[name + ".bias"], stride=stride, padding=pad)


def res(p, name, h):
    return h + conv(p, name + ".conv_b", F.relu(conv(p, name + ".conv_a", F.relu(h))))


def encode(p, x):
    h = F.relu(conv(p, "enc.conv_in", F.pixel_unshuffle(x, 2)))
    for i in range(cfg["num_down"] - 1):
        h = F.relu(conv(p, f"enc.down{i}", h, stride=2, pad=1))
    for j in range(cfg["res_blocks"]):
        h = res(p, f"enc.res{j}", h)
    return conv(p, "enc.conv_out", F.relu(h))


def decode(p, zq):
    h = conv(p, "dec.conv_in", zq)
    for j in range(cfg["res_blocks"]):
        h = res(p, f"dec.res{j}", h)
    h = F.relu(h)
    for i in range(cfg["num_down"] - 1):
        h = F.relu(conv(p, f"dec.up{i}", F.interpolate(h, scale_factor=2, mode="nearest")))
    t = F.relu(F.pixel_shuffle(conv(p, "dec.conv_out", h), 2))
    return conv(p, "dec.tail", t)


for attempt in range(100):
    params = build()
    x = torch.rand(N, cfg["channels"], cfg["image_size"], cfg["image_size"], dtype=dt)
    with torch.no_grad():
        ze = encode(params, x)
    rows = ze.permute(0, 2, 3, 1).reshape(-1, cfg["code_dim"])
    # Codebook near the data so several codes are in use.
    pick = torch.randperm(rows.shape[0])[: cfg["codebook_size"]]
    params["quant.codebook"] = rows[pick].clone() + 0.05 * torch.randn(cfg["codebook_size"], cfg["code_dim"], dtype=dt)
    d = torch.cdist(rows, params["quant.codebook"])
    top2 = torch.topk(d, 2, largest=False).values
    # f32 rounding in the library must not flip an argmin: demand a clear margin.
    if float((top2[:, 1] - top2[:, 0]).min()) > 1e-3:
        break
else:
    raise SystemExit("could not draw a fixture without near-ties")

# Round everything to f32 so both sides start from identical values.
for k in params:
    params[k] = params[k].float().double().requires_grad_(True)
x = x.float().double()

ze = encode(params, x)
rows = ze.permute(0, 2, 3, 1).reshape(-1, cfg["code_dim"])
codes = torch.cdist(rows, params["quant.codebook"]).argmin(dim=1)
zq_rows = params["quant.codebook"][codes]
zq = zq_rows.reshape(ze.shape[0], ze.shape[2], ze.shape[3], -1).permute(0, 3, 1, 2)
zq_st = ze + (zq - ze).detach()
x_hat = decode(params, zq_st)
recon = F.mse_loss(x_hat, x)
commit = F.mse_loss(ze, zq.detach())
codebook_loss = F.mse_loss(zq, ze.detach())
loss = recon + cfg["commitment"] * commit + codebook_loss
loss.backward()

with h5py.File(out, "w") as f:
    f.attrs["format"] = "magnets-tokenizer"
    f.attrs["format_version"] = np.int64(1)
    f.attrs["creator"] = "scripts/gen_tokenizer_fixture.py"
    f.attrs["creator_version"] = "torch " + torch.__version__
    for k, v in cfg.items():
        f.attrs[k] = np.int64(v) if isinstance(v, int) else (np.float64(v) if isinstance(v, float) else v)
    f.attrs["tokens_h"] = np.int64(cfg["image_size"] >> cfg["num_down"])
    f.attrs["tokens_w"] = np.int64(cfg["image_size"] >> cfg["num_down"])
    f.attrs["fixture_loss"] = float(loss)
    f.attrs["fixture_recon"] = float(recon)
    f.attrs["fixture_commit"] = float(commit)
    for k, v in params.items():
        f.create_dataset("weights/" + k, data=v.detach().float().numpy())
        f.create_dataset("fixture/grads/" + k, data=v.grad.float().numpy())
    f.create_dataset("fixture/x", data=x.float().numpy())
    f.create_dataset("fixture/z_e", data=ze.detach().float().numpy())
    f.create_dataset("fixture/x_hat", data=x_hat.detach().float().numpy())
    f.create_dataset("fixture/codes", data=codes.int().numpy())
print(f"wrote {out}: loss {float(loss):.6f}, {len(set(codes.tolist()))} codes in use, torch {torch.__version__}")
