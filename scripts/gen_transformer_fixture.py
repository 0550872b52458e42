#!/usr/bin/python3
"""PyTorch reference numbers for the magnets nested transformer (tests/fixtures/transformer_fixture.h5).

Read by the C++ test tests/test_transformer.cpp. Regenerate with Debian's
python3-torch / python3-h5py (takes a few seconds):

    /usr/bin/python3 scripts/gen_transformer_fixture.py [OUT.h5]

Model: scripts/magnets_torch.py (the reference of lib/magnets/transformer.h),
float32 throughout, tiny config K=16, C=3, grid 1x2x3 (N=6, S=7), D=16, H=4,
L=2, mlp_ratio=4, factors 4,2,1, batch 3; random weights (init_random, seed 0),
the same weights and batch for each nesting mode. For each mode in
width, mone, mlp, group /<mode> holds:

  attrs: codebook_size grid_t grid_h grid_w width heads layers mlp_ratio batch
         num_classes (int64); nesting, factors ("4,2,1") (UTF-8 strings);
         label_smoothing alpha lr beta1 beta2 eps weight_decay clip_norm (float64)
  weights/<name>            float32 initial weights (names as named_parameters())
  ids      int32 [B, S]     class token (or NULL) then codes, MASK = K where masked
  targets  int32 [B, N]     ground-truth codes
  mask     uint8 [B, N]     1 = masked
  sub<p>/logits   float32 [B, N, K]   sub-model m_p
  sub<p>/loss     float64 scalar      CE (label smoothing 0.1) of m_p over masked positions
  sub<p>/grads/<name>  float32        d sub<p>/loss / d weight (zeros where m_p does not reach)
  progressive/loss     float64 scalar joint loss, objective progressive, alpha 0.3, weights 1
  progressive/sub_loss float64 [len(factors)]  per sub-model, in factors order
  progressive/grads/<name> float32
  adamw/step<i>/weights/<name>  float32  after i = 1, 2, 3 steps of joint ground_truth training
                                         on this batch: clip_grad_norm_(clip_norm), then
                                         AdamW (lr constant, betas, eps, decay on matrices only)
  adamw/step<i>/loss       float64  joint loss before step i's update
  adamw/step<i>/grad_norm  float64  total gradient norm before clipping

/mone and /mlp share (HDF5 hard links) weights and sub1 with /width: the
initial weights are the same and m_1 is the full model in every mode; a reader
opening the paths sees ordinary groups and datasets.

AdamW as torch.optim.AdamW: p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps); clip_grad_norm_ scales by
clip / (norm + 1e-6) when that is below 1.

Comparing: blocks.*.attn.k.bias has a mathematically zero gradient (softmax is
invariant to a per-query constant), so its stored gradients are float32
rounding noise (|g| up to ~1e-7) and AdamW, which normalises g / sqrt(v),
turns that noise into updates of up to lr per step: compare attn.k.bias in
adamw/step<i>/weights with an absolute tolerance of about 3 * lr (or skip it),
and every gradient with an absolute tolerance as well as a relative one.
"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import magnets_torch as mt  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "transformer_fixture.h5"))
MODES = ["width", "mone", "mlp"]
BATCH = 3
SMOOTHING, ALPHA = 0.1, 0.3
LR, BETA1, BETA2, EPS, WD, CLIP = 0.01, 0.9, 0.96, 1e-8, 0.045, 1.0
ADAM_STEPS = 3

torch.set_num_threads(1)
torch.manual_seed(0)


def make_cfg(nesting):
    return mt.Config(codebook_size=16, num_classes=3, grid_t=1, grid_h=2, grid_w=3, width=16, heads=4,
                     layers=2, mlp_ratio=4, nesting=nesting, factors=[4, 2, 1])


def make_batch(cfg, gen):
    K, N = cfg.codebook_size, cfg.tokens
    targets = torch.randint(0, K, (BATCH, N), generator=gen)
    counts = [1, 3, 5]  # uneven counts: the mean is over all masked positions of the batch
    mask = torch.zeros(BATCH, N, dtype=torch.bool)
    for b, c in enumerate(counts):
        mask[b, torch.randperm(N, generator=gen)[:c]] = True
    cls = torch.tensor([cfg.class_id(2), cfg.null_id, cfg.class_id(0)])
    ids = torch.empty(BATCH, cfg.seq, dtype=torch.long)
    ids[:, 0] = cls
    ids[:, 1:] = torch.where(mask, torch.full_like(targets, cfg.mask_id), targets)
    return ids, targets, mask


def mkgroup(parent, name):
    # A group without modification times, so that the file is byte-reproducible.
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    group = parent
    for part in name.split("/"):
        if part in group:
            group = group[part]
        else:
            group = h5py.Group(h5py.h5g.create(group.id, part.encode(), gcpl=gcpl))
    return group


def write_params(group, named):
    for name, t in named:
        group.create_dataset(name, data=t.detach().cpu().numpy().astype(np.float32))


def grads_of(model):
    return [(n, p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()]


def same_as(group, logits, loss, grads):
    # Bitwise equal to an already written sub<p> group?
    return (np.array_equal(group["logits"][()], logits.detach().numpy())
            and group["loss"][()] == np.float64(loss.item())
            and all(np.array_equal(group["grads"][n][()], t.numpy()) for n, t in grads))


def main():
    gen = torch.Generator().manual_seed(1234)
    cfg0 = make_cfg("width")
    ids, targets, mask = make_batch(cfg0, gen)
    wgen = torch.Generator().manual_seed(0)
    ref = mt.NestedTransformer(cfg0)
    mt.init_random(ref, wgen)
    init_state = {k: v.clone() for k, v in ref.state_dict().items()}

    os.makedirs(os.path.dirname(os.path.abspath(OUT)), exist_ok=True)
    # HDF5 1.8 format (compact link storage keeps the file < 1 MB), no timestamps (reproducible bytes).
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_V18, h5py.h5f.LIBVER_V18)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    with h5py.File(h5py.h5f.create(OUT.encode(), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)) as f:
        f.attrs["description"] = "magnets nested transformer reference numbers (scripts/gen_transformer_fixture.py)"
        f.attrs["torch_version"] = str(torch.__version__)
        for mode in MODES:
            cfg = make_cfg(mode)
            model = mt.NestedTransformer(cfg)
            model.load_state_dict(init_state)
            g = mkgroup(f, mode)
            for k in ("codebook_size", "num_classes", "grid_t", "grid_h", "grid_w", "width", "heads",
                      "layers", "mlp_ratio"):
                g.attrs[k] = np.int64(getattr(cfg, k))
            g.attrs["batch"] = np.int64(BATCH)
            g.attrs["nesting"] = mode
            g.attrs["factors"] = mt.factors_to_string(cfg.factors)
            for k, v in (("label_smoothing", SMOOTHING), ("alpha", ALPHA), ("lr", LR), ("beta1", BETA1),
                         ("beta2", BETA2), ("eps", EPS), ("weight_decay", WD), ("clip_norm", CLIP)):
                g.attrs[k] = np.float64(v)
            if mode == MODES[0]:
                write_params(mkgroup(g, "weights"), model.named_parameters())
            else:  # the same initial weights in every mode: a hard link keeps the file small
                first = f[MODES[0] + "/weights"]
                assert all(np.array_equal(first[n][()], t.detach().numpy()) for n, t in model.named_parameters())
                g["weights"] = first
            g.create_dataset("ids", data=ids.numpy().astype(np.int32))
            g.create_dataset("targets", data=targets.numpy().astype(np.int32))
            g.create_dataset("mask", data=mask.numpy().astype(np.uint8))

            for p in cfg.factors:
                model.zero_grad(set_to_none=True)
                logits = model(ids, p)
                loss = mt.ce_loss(logits, targets, mask, SMOOTHING)
                loss.backward()
                if p == 1 and mode != MODES[0] and same_as(f[MODES[0] + "/sub1"], logits, loss, grads_of(model)):
                    g["sub1"] = f[MODES[0] + "/sub1"]  # m_1 is the full model in every mode: hard link
                    continue
                s = mkgroup(g, f"sub{p}")
                s.create_dataset("logits", data=logits.detach().numpy().astype(np.float32))
                s.create_dataset("loss", data=np.float64(loss.item()))
                write_params(mkgroup(s, "grads"), grads_of(model))

            model.zero_grad(set_to_none=True)
            total, subs = mt.joint_loss(model, ids, targets, mask, "progressive", ALPHA, [1.0] * len(cfg.factors),
                                        SMOOTHING)
            total.backward()
            s = mkgroup(g, "progressive")
            s.create_dataset("loss", data=np.float64(total.item()))
            s.create_dataset("sub_loss", data=np.array([x.item() for x in subs], dtype=np.float64))
            write_params(mkgroup(s, "grads"), grads_of(model))

            opt = mt.make_adamw(model, LR, (BETA1, BETA2), WD, EPS)
            norms = []
            for i in range(1, ADAM_STEPS + 1):
                opt.zero_grad(set_to_none=True)
                total, _ = mt.joint_loss(model, ids, targets, mask, "ground_truth", 1.0, [1.0] * len(cfg.factors),
                                         SMOOTHING)
                total.backward()
                norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), CLIP)
                opt.step()
                s = mkgroup(g, f"adamw/step{i}")
                s.create_dataset("loss", data=np.float64(total.item()))
                s.create_dataset("grad_norm", data=np.float64(float(norm)))
                write_params(mkgroup(s, "weights"), model.named_parameters())
                norms.append(float(norm))
            print(f"{mode}: sub losses " + " ".join(f"m{p}={g[f'sub{p}/loss'][()]:.4f}" for p in cfg.factors)
                  + f"; progressive {g['progressive/loss'][()]:.4f}; adamw grad norms "
                  + " ".join(f"{n:.3f}" for n in norms))
            if norms[0] <= CLIP:
                raise SystemExit(f"{mode}: step 1 grad norm {norms[0]} does not exceed clip {CLIP}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
