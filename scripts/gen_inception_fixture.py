#!/usr/bin/python3
"""PyTorch reference for magnets::InceptionV3 (the FID Inception-v3).

  /usr/bin/python3 scripts/gen_inception_fixture.py OUT.h5

Builds torchvision's inception_v3 (num_classes 1008, no aux head) with
pytorch-fid's FID patches (FIDInceptionA/C/E_1/E_2 below: average pools with
count_include_pad=False, a max pool in Mixed_7c's pool branch), gives it random
weights (torch.manual_seed(0); He-normal convs, random BatchNorm affine
parameters and running statistics: calibrated on the inputs, then perturbed so
that every statistic changes the result) and runs pytorch-fid's forward
(bilinear resize to 299, align_corners=False; 2x - 1; blocks 0..3; global
average pool) on 2 RGB 64x64 images, in float64 from the float32 weights.

OUT is a magnets-inception file (written by convert_inception.py's writer, so
the library's own reader loads it) plus:
  /fixture/x                 inputs [2, 3, 64, 64] float32 in [0, 1]
  /fixture/features          pool3 features [2, 2048] (float64 reference, stored f32)
  /fixture/features_f32      the same computed by torch in float32
  /fixture/means/<stage>     float64 [1], mean of each stage's output (input,
                             Conv2d_1a_3x3, ..., maxpool1, Mixed_5b, ..., avgpool)
  root attrs fixture_seed, fixture_torch_f32_rel_err (max |f32 - f64| / max |f64|
             of the features: the float32 noise floor)
About 90 MB (the full network), so it is not committed: tests/meson.build
generates it into the build directory when torch, torchvision and h5py are
importable; test_inception skips otherwise.
Needs Debian's python3-torch, python3-torchvision, python3-h5py.
"""
import copy
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert_inception  # noqa: E402

SEED = 0
out_path = sys.argv[1] if len(sys.argv) > 1 else "inception_fixture.h5"


# ---- pytorch-fid's FID blocks (same forward as pytorch_fid/inception.py) ----
class FIDInceptionA(InceptionA):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, bp], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, bp], 1)


class FIDInceptionE(InceptionE):
    """FIDInceptionE_1 (max_pool=False) and FIDInceptionE_2 (max_pool=True)."""

    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        if self.max_pool:
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(p)], 1)


def fid_inception_v3():
    m = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    m.Mixed_5b = FIDInceptionA(192, pool_features=32)
    m.Mixed_5c = FIDInceptionA(256, pool_features=64)
    m.Mixed_5d = FIDInceptionA(288, pool_features=64)
    m.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    m.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    m.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    m.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    m.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    return m


STAGES = ["input", "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
          "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
          "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"]


def fid_forward(m, x, taps=None):
    """pytorch-fid's InceptionV3 forward (resize_input, normalize_input, blocks 0..3)."""
    def tap(name, t):
        if taps is not None:
            taps[name] = t
        return t

    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = tap("input", 2 * x - 1)
    for name in STAGES[1:]:
        if name in ("maxpool1", "maxpool2"):
            x = F.max_pool2d(x, kernel_size=3, stride=2)
        elif name == "avgpool":
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        else:
            x = getattr(m, name)(x)
        tap(name, x)
    return x.flatten(1)


def main():
    torch.manual_seed(SEED)
    m = fid_inception_v3()
    # Random weights: He-normal convs, BatchNorm affine parameters around (1, 0).
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
        m.fc.weight.normal_(0.0, 0.02)
        m.fc.bias.zero_()

    # Inputs: one uniform-noise image and one smooth one (upsampled 8x8 noise).
    x = torch.empty(2, 3, 64, 64)
    x[0] = torch.rand(3, 64, 64)
    x[1] = F.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bilinear", align_corners=False)[0]

    # Running statistics: calibrate on the inputs (one train-mode pass, cumulative
    # average = the batch statistics), so activations stay O(1) through the ~50
    # layers, then perturb them so that a mishandled mean or variance shows.
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    m.train()
    with torch.no_grad():
        fid_forward(m, x)
        for bn in bns:
            std = bn.running_var.sqrt()
            bn.running_mean += 0.3 * std * torch.randn_like(std)
            bn.running_var *= torch.empty_like(std).uniform_(0.5, 2.0)
    m.eval()

    state = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    weights = convert_inception.select_weights(state)
    # The reference runs in float64 from exactly the float32 weights in the file.
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        taps = {}
        f64 = fid_forward(m64, x.double(), taps)
        f32 = fid_forward(m, x)
    rel = float((f32.double() - f64).abs().max() / f64.abs().max())
    means = {k: float(v.mean()) for k, v in taps.items()}
    print(f"features: mean {f64.mean():.4f}, max {f64.max():.4f}, min {f64.min():.4f}; "
          f"torch f32 vs f64 max rel err {rel:.2e}")
    print("stage means: " + ", ".join(f"{k} {means[k]:.4f}" for k in STAGES))

    def extra(f):
        f.attrs["fixture_seed"] = np.int64(SEED)
        f.attrs["fixture_torch_f32_rel_err"] = np.float64(rel)
        g = f.create_group("fixture")
        g.create_dataset("x", data=x.numpy().astype(np.float32))
        g.create_dataset("features", data=f64.numpy().astype(np.float32))
        g.create_dataset("features_f32", data=f32.numpy().astype(np.float32))
        for k in STAGES:
            g.create_dataset("means/" + k, data=np.array([means[k]], dtype=np.float64))

    convert_inception.write_inception_h5(out_path, weights, "scripts/gen_inception_fixture.py",
                                         f"torch {torch.__version__}, torchvision {torchvision.__version__}",
                                         source="random (torch.manual_seed(0))", extra=extra)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
