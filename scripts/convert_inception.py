#!/usr/bin/python3
"""Convert Inception-v3 weights for FID into a magnets-inception file (HDF5).

  /usr/bin/python3 scripts/convert_inception.py pt_inception-2015-12-05-6726825d.pth inception.h5

INPUT is a PyTorch file holding an Inception-v3 state_dict with torchvision's
key names: pytorch-fid's FID weights (pt_inception-2015-12-05-*.pth, the
standard for FID; 1008 classes) or a torchvision inception_v3 state_dict (its
ImageNet weights give features that are NOT comparable to published FID);
{"state_dict": ...} is accepted too. Only tensors are unpickled (weights_only),
so a pickled whole model is refused: save its state_dict(). No download happens.

OUTPUT layout (magnets-formats(5) checkpoint, read by magnets::InceptionV3):
  root attrs  format "magnets-inception", format_version 1, creator,
              creator_version, created, variant "fid", bn_eps 0.001, source,
              source_sha256, num_classes (when fc.* is present)
  /weights/<state_dict key>  float32, e.g. Conv2d_1a_3x3.conv.weight,
              Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var};
              fc.weight / fc.bias kept when present; AuxLogits.* and
              num_batches_tracked dropped.
The file is written atomically (temporary name, then rename).
Needs torch and h5py (Debian: python3-torch python3-h5py).
"""
import argparse
import hashlib
import os
import pickle
import sys
import time

import h5py
import numpy as np

FORMAT = "magnets-inception"
FORMAT_VERSION = 1
BN_EPS = 0.001  # torchvision BasicConv2d's BatchNorm2d(eps=0.001)
BN_PARTS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def _a(v, p, ci, pool):
    v += [(p + ".branch1x1", ci, 64, 1, 1), (p + ".branch5x5_1", ci, 48, 1, 1), (p + ".branch5x5_2", 48, 64, 5, 5),
          (p + ".branch3x3dbl_1", ci, 64, 1, 1), (p + ".branch3x3dbl_2", 64, 96, 3, 3),
          (p + ".branch3x3dbl_3", 96, 96, 3, 3), (p + ".branch_pool", ci, pool, 1, 1)]


def _b(v, p, ci):
    v += [(p + ".branch3x3", ci, 384, 3, 3), (p + ".branch3x3dbl_1", ci, 64, 1, 1),
          (p + ".branch3x3dbl_2", 64, 96, 3, 3), (p + ".branch3x3dbl_3", 96, 96, 3, 3)]


def _c(v, p, ci, c7):
    v += [(p + ".branch1x1", ci, 192, 1, 1), (p + ".branch7x7_1", ci, c7, 1, 1), (p + ".branch7x7_2", c7, c7, 1, 7),
          (p + ".branch7x7_3", c7, 192, 7, 1), (p + ".branch7x7dbl_1", ci, c7, 1, 1),
          (p + ".branch7x7dbl_2", c7, c7, 7, 1), (p + ".branch7x7dbl_3", c7, c7, 1, 7),
          (p + ".branch7x7dbl_4", c7, c7, 7, 1), (p + ".branch7x7dbl_5", c7, 192, 1, 7),
          (p + ".branch_pool", ci, 192, 1, 1)]


def _d(v, p, ci):
    v += [(p + ".branch3x3_1", ci, 192, 1, 1), (p + ".branch3x3_2", 192, 320, 3, 3),
          (p + ".branch7x7x3_1", ci, 192, 1, 1), (p + ".branch7x7x3_2", 192, 192, 1, 7),
          (p + ".branch7x7x3_3", 192, 192, 7, 1), (p + ".branch7x7x3_4", 192, 192, 3, 3)]


def _e(v, p, ci):
    v += [(p + ".branch1x1", ci, 320, 1, 1), (p + ".branch3x3_1", ci, 384, 1, 1),
          (p + ".branch3x3_2a", 384, 384, 1, 3), (p + ".branch3x3_2b", 384, 384, 3, 1),
          (p + ".branch3x3dbl_1", ci, 448, 1, 1), (p + ".branch3x3dbl_2", 448, 384, 3, 3),
          (p + ".branch3x3dbl_3a", 384, 384, 1, 3), (p + ".branch3x3dbl_3b", 384, 384, 3, 1),
          (p + ".branch_pool", ci, 192, 1, 1)]


def conv_specs():
    """(name, c_in, c_out, kh, kw) of every BasicConv2d of the FID graph (as lib/eval/inception.cpp)."""
    v = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
         ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    _a(v, "Mixed_5b", 192, 32); _a(v, "Mixed_5c", 256, 64); _a(v, "Mixed_5d", 288, 64)
    _b(v, "Mixed_6a", 288)
    _c(v, "Mixed_6b", 768, 128); _c(v, "Mixed_6c", 768, 160); _c(v, "Mixed_6d", 768, 160); _c(v, "Mixed_6e", 768, 192)
    _d(v, "Mixed_7a", 768)
    _e(v, "Mixed_7b", 1280); _e(v, "Mixed_7c", 2048)
    return v


def required_shapes():
    out = {}
    for name, ci, co, kh, kw in conv_specs():
        out[name + ".conv.weight"] = (co, ci, kh, kw)
        for part in BN_PARTS:
            out[name + "." + part] = (co,)
    return out


def to_numpy_state(obj):
    """A {key: float32 ndarray} from a state_dict, {"state_dict": ...} or a model."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state_dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k  # DataParallel prefix
        out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return out


def select_weights(state):
    """Checks the graph's tensors and returns those to write (+ fc.* when present)."""
    need = required_shapes()
    problems = []
    for k, shape in need.items():
        if k not in state:
            problems.append(f"missing {k}")
        elif tuple(state[k].shape) != shape:
            problems.append(f"{k} has shape {tuple(state[k].shape)}, expected {shape}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ValueError("not an Inception-v3 state_dict with torchvision's names: "
                         + "; ".join(problems[:8]) + more)
    keep = {k: np.ascontiguousarray(state[k], dtype=np.float32) for k in need}
    if "fc.weight" in state and "fc.bias" in state:
        keep["fc.weight"] = np.ascontiguousarray(state["fc.weight"], dtype=np.float32)
        keep["fc.bias"] = np.ascontiguousarray(state["fc.bias"], dtype=np.float32)
    for k, v in keep.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{k} has non-finite values")
    if np.any(np.concatenate([keep[n + ".bn.running_var"] for n, *_ in conv_specs()]) < 0):
        raise ValueError("a bn.running_var has negative values")
    return keep


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_inception_h5(path, weights, creator, creator_version, source="", source_sha256="", extra=None):
    """Writes a magnets-inception file atomically. `weights` from select_weights();
    `extra(f)` may add more datasets/attributes before the rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["creator"] = creator
            f.attrs["creator_version"] = creator_version
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.attrs["variant"] = "fid"
            f.attrs["bn_eps"] = np.float64(BN_EPS)
            f.attrs["source"] = source
            f.attrs["source_sha256"] = source_sha256
            if "fc.weight" in weights:
                f.attrs["num_classes"] = np.int64(weights["fc.weight"].shape[0])
            g = f.create_group("weights")
            for k in sorted(weights):
                g.create_dataset(k, data=weights[k])
            if extra is not None:
                extra(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="PyTorch .pth with an Inception-v3 state_dict")
    ap.add_argument("output", help="magnets-inception .h5 to write")
    args = ap.parse_args()
    import torch

    try:
        try:
            obj = torch.load(args.input, map_location="cpu", weights_only=True)
        except TypeError:  # torch < 1.13 has no weights_only
            obj = torch.load(args.input, map_location="cpu")
        weights = select_weights(to_numpy_state(obj))
    except pickle.UnpicklingError as e:
        print(f"convert_inception.py: error: cannot convert {args.input}: not a plain state_dict ({e})\n"
              "hint: save the model's state_dict() with torch.save and convert that", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        print(f"convert_inception.py: error: cannot convert {args.input}: {e}", file=sys.stderr)
        return 1
    classes = weights["fc.weight"].shape[0] if "fc.weight" in weights else None
    if classes == 1000:
        print("convert_inception.py: warning: 1000 classes: these look like torchvision's ImageNet weights; "
              "standard FID uses pytorch-fid's pt_inception-2015-12-05 weights (1008 classes), so scores "
              "will not be comparable to published FID", file=sys.stderr)
    write_inception_h5(args.output, weights, "scripts/convert_inception.py", "torch " + torch.__version__,
                       source=os.path.basename(args.input), source_sha256=sha256_file(args.input))
    n = sum(v.size for v in weights.values())
    print(f"wrote {args.output}: {len(weights)} tensors, {n} parameters"
          + (f", {classes} classes" if classes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
