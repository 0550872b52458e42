#!/usr/bin/python3
"""Check magnets files with h5py against the layouts in magnets-formats(5).

An independent reader (h5py, not the magnets library) for the CLI tests: it
opens each FILE, dispatches on its root `format` attribute, prints what it
found and validates every documented attribute and dataset.

  scripts/check_h5py.py train.h5 tok.h5
  scripts/check_h5py.py --count 600 --tokenizer tok.h5 train.h5

Formats: magnets-tokens (token files), magnets-tokenizer (tokenizer
checkpoints) and magnets-transformer (nested transformer checkpoints). With --tokenizer, a token file's tokenizer_hash must equal the
checkpoint's weights hash (FNV-1a 64, as magnets::weights_hash computes it).
Exit status: 0 all files valid, 1 a file failed a check, 2 usage error.
Run with Debian's /usr/bin/python3 (python3-h5py).
"""
import argparse
import re
import sys

import h5py
import numpy as np

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STANDARD = ["format", "format_version", "creator", "creator_version", "created"]
TOKENIZER_INT = ["image_size", "channels", "base_channels", "hidden_channels", "num_down",
                 "res_blocks", "codebook_size", "code_dim", "tail_channels", "tokens_h", "tokens_w"]
TOKENIZER_FLOAT = ["commitment", "ema_decay"]
TOKENIZER_CHOICES = {"quantizer": ("ema", "loss"), "recon_loss": ("l2", "l1")}
TRAIN_INT = ["train_steps", "train_batch_size", "train_warmup", "train_seed",
             "train_restart_every", "train_log_every", "train_checkpoint_every"]
TRAIN_FLOAT = ["train_lr", "train_lr_min_ratio", "train_dead_threshold"]
STATE_INT = ["step", "data_position", "seed", "adam_t"]


class Checker:
    def __init__(self, path, quiet):
        self.path, self.quiet, self.problems = path, quiet, []

    def say(self, msg):
        if not self.quiet:
            print(f"  {msg}")

    def fail(self, msg):
        self.problems.append(msg)
        print(f"  FAIL: {msg}")

    def expect(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond

    # ---- attributes ----
    def attr(self, obj, key, kind, where="/"):
        """Returns the attribute converted to kind ('int', 'float', 'str'), or None."""
        if key not in obj.attrs:
            self.fail(f"{where} attribute '{key}' is missing")
            return None
        v = obj.attrs[key]
        if kind == "int":
            ok = isinstance(v, (np.integer, int)) and not isinstance(v, (bool, np.bool_))
            ok = ok and obj.attrs.get_id(key).dtype == np.dtype("<i8")
        elif kind == "float":
            ok = isinstance(v, (np.floating, float)) and obj.attrs.get_id(key).dtype == np.dtype("<f8")
        else:
            ok = isinstance(v, str)  # h5py returns vlen UTF-8 strings as str
        if not ok:
            self.fail(f"{where} attribute '{key}' is {type(v).__name__} {v!r}, expected {kind}"
                      + (" (int64)" if kind == "int" else " (float64)" if kind == "float" else " (UTF-8 string)"))
            return None
        return {"int": int, "float": float, "str": str}[kind](v)

    def standard(self, f, expected_format, max_version=1):
        fmt = self.attr(f, "format", "str")
        self.expect(fmt == expected_format, f"format is {fmt!r}, expected {expected_format!r}")
        ver = self.attr(f, "format_version", "int")
        self.expect(ver is not None and 1 <= ver <= max_version, f"format_version {ver} not in 1..{max_version}")
        creator = self.attr(f, "creator", "str")
        cver = self.attr(f, "creator_version", "str")
        created = self.attr(f, "created", "str")
        self.expect(created is not None and ISO_UTC.match(created), f"created {created!r} is not ISO-8601 UTC")
        self.say(f"format {fmt} v{ver}, creator {creator} {cver}, created {created}")

    def dataset(self, f, name, dtype, shape=None):
        if name not in f or not isinstance(f[name], h5py.Dataset):
            self.fail(f"dataset {name} is missing")
            return None
        d = f[name]
        self.expect(d.dtype == np.dtype(dtype) or (dtype == "str" and h5py.check_string_dtype(d.dtype)),
                    f"{name} has dtype {d.dtype}, expected {dtype}")
        if shape is not None:
            self.expect(tuple(d.shape) == tuple(shape), f"{name} has shape {d.shape}, expected {tuple(shape)}")
        return d


def fnv1a64(chunks):
    h = 0xCBF29CE484222325
    for data in chunks:
        for b in data:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def weights_hash(f):
    """magnets::weights_hash: FNV-1a 64 over, per tensor in byte order of names,
    the name + NUL, rank and dims as little-endian int64, then the f32 bytes."""
    names = []
    f["weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    chunks = []
    for n in sorted(names, key=lambda s: s.encode()):
        d = f["weights"][n]
        chunks.append(n.encode() + b"\0")
        chunks.append(np.array([d.ndim, *d.shape], dtype="<i8").tobytes())
        chunks.append(np.asarray(d[()], dtype="<f4").tobytes())
    return f"{fnv1a64(chunks):016x}"


def check_tokens(c, f, args):
    c.standard(f, "magnets-tokens")
    a = {k: c.attr(f, k, "int") for k in ["codebook_size", "grid_t", "grid_h", "grid_w", "count", "num_classes"]}
    s = {k: c.attr(f, k, "str") for k in ["split", "tokenizer_hash", "source"]}
    if None in a.values() or None in s.values():
        return
    extra = sorted(set(f.attrs) - set(STANDARD) - set(a) - set(s))
    c.say(f"count {a['count']}, grid {a['grid_t']}x{a['grid_h']}x{a['grid_w']}, codebook_size {a['codebook_size']}, "
          f"split {s['split']!r}, source {s['source']!r}, tokenizer {s['tokenizer_hash']}, "
          f"{a['num_classes']} classes, extra attrs {extra}")
    c.expect(1 <= a["codebook_size"] <= 65536, f"codebook_size {a['codebook_size']} outside [1, 65536]")
    if args.count is not None:
        c.expect(a["count"] == args.count, f"count {a['count']}, expected {args.count}")
    shape = [a["count"], a["grid_h"], a["grid_w"]]
    if a["grid_t"] != 1:
        shape.insert(1, a["grid_t"])
    t = c.dataset(f, "tokens", "<u2", shape)
    if t is not None:
        c.say(f"/tokens {t.dtype} {t.shape} chunks {t.chunks} {t.compression}:{t.compression_opts} "
              f"shuffle {t.shuffle} maxshape {t.maxshape}")
        c.expect(t.chunks is not None and t.compression == "gzip" and t.shuffle, "/tokens is not chunked gzip+shuffle")
        c.expect(t.maxshape[0] is None, "/tokens first dimension is not unlimited")
        if t.size:
            top = int(np.max(t[()]))
            c.expect(top < a["codebook_size"], f"/tokens max {top} >= codebook_size {a['codebook_size']}")
    lab = c.dataset(f, "labels", "<i4", [a["count"]])
    if lab is not None:
        c.expect(lab.maxshape[0] is None, "/labels first dimension is not unlimited")
        v = lab[()]
        if v.size:
            hi = a["num_classes"] if a["num_classes"] > 0 else np.iinfo(np.int32).max
            c.expect(v.min() >= -1 and v.max() < hi, f"/labels outside [-1, {a['num_classes']})")
    names = c.dataset(f, "class_names", "str", [a["num_classes"]])
    if names is not None:
        c.say(f"/class_names {[n.decode() if isinstance(n, bytes) else n for n in names[()]]}")
    if args.tokenizer:
        with h5py.File(args.tokenizer, "r") as tok:
            h = weights_hash(tok)
        c.expect(h == s["tokenizer_hash"], f"tokenizer_hash {s['tokenizer_hash']} != weights hash {h} of {args.tokenizer}")


def check_tokenizer(c, f, args):
    c.standard(f, "magnets-tokenizer")
    cfg = {k: c.attr(f, k, "int") for k in TOKENIZER_INT}
    cfg.update({k: c.attr(f, k, "float") for k in TOKENIZER_FLOAT})
    for k, choices in TOKENIZER_CHOICES.items():
        cfg[k] = c.attr(f, k, "str")
        c.expect(cfg[k] in choices, f"{k} {cfg[k]!r} not one of {choices}")
    c.say("model " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    if any(k in f.attrs for k in TRAIN_INT + TRAIN_FLOAT):
        tr = {k: c.attr(f, k, "int") for k in TRAIN_INT}
        tr.update({k: c.attr(f, k, "float") for k in TRAIN_FLOAT})
        c.say("train " + ", ".join(f"{k}={v}" for k, v in tr.items()))
    if None in cfg.values():
        return
    side = cfg["image_size"] >> cfg["num_down"]
    c.expect(cfg["tokens_h"] == side and cfg["tokens_w"] == side, f"tokens_h/w != image_size >> num_down = {side}")
    if not c.expect("weights" in f and isinstance(f["weights"], h5py.Group), "group /weights is missing"):
        return
    weights = {}
    f["weights"].visititems(lambda n, o: weights.__setitem__(n, o) if isinstance(o, h5py.Dataset) else None)
    for n, d in weights.items():
        c.expect(d.dtype == np.dtype("<f4"), f"/weights/{n} has dtype {d.dtype}, expected float32")
    B, K, C, ch = cfg["base_channels"], cfg["codebook_size"], cfg["code_dim"], cfg["channels"]
    # Video tokenizers (attributes frames, clip_frames, tokens_t) stack a slot's
    # frames as channels: the network's input and output have frames * channels.
    if "clip_frames" in f.attrs:
        frames, clip = int(f.attrs["frames"]), int(f.attrs["clip_frames"])
        c.expect(frames >= 1 and clip % frames == 0, f"clip_frames {clip} is not a multiple of frames {frames}")
        c.expect(int(f.attrs["tokens_t"]) == clip // frames, "tokens_t != clip_frames / frames")
        ch *= frames
    # The first halving is a pixel unshuffle: conv_in sees 4 * channels, and
    # conv_out produces 4 * channels for the final pixel shuffle.
    last = B if cfg["num_down"] > 1 else cfg["hidden_channels"]
    T = cfg["tail_channels"]
    for n, shape in {"quant.codebook": (K, C), "enc.conv_in.weight": (B, 4 * ch, 3, 3),
                     "dec.conv_out.weight": (4 * T, last, 3, 3), "dec.conv_out.bias": (4 * T,),
                     "dec.tail.weight": (ch, T, 3, 3), "dec.tail.bias": (ch,)}.items():
        c.dataset(f["weights"], n, "<f4", shape)
    c.say(f"/weights: {len(weights)} tensors, {sum(d.size for d in weights.values())} values, hash {weights_hash(f)}")
    if "train_state" in f:
        st = f["train_state"]
        for k in STATE_INT:
            c.attr(st, k, "int", "/train_state")
        # Adam moments for every parameter the optimizer trains: all of them,
        # except the codebook under the EMA quantizer.
        trained = [n for n in weights if not (n == "quant.codebook" and cfg["quantizer"] == "ema")]
        for n in trained:
            for m in ("adam_m", "adam_v"):
                c.dataset(st, f"{m}/{n}", "<f4", weights[n].shape)
        for m in ("adam_m", "adam_v"):
            extra = []
            if m in st:
                st[m].visititems(lambda n, o: extra.append(n) if isinstance(o, h5py.Dataset) and n not in trained else None)
            c.expect(not extra, f"/train_state/{m} has entries for no trained parameter: {extra}")
        c.dataset(st, "ema_count", "<f4", (K,))
        c.dataset(st, "ema_sum", "<f4", (K, C))
        c.say(f"/train_state: step {st.attrs.get('step')}, {sum(1 for _ in st)} entries")


TRANSFORMER_INT = ["codebook_size", "num_classes", "grid_t", "grid_h", "grid_w", "width", "heads", "layers",
                   "mlp_ratio"]
TRANSFORMER_TRAIN_INT = ["train_steps", "train_batch_size", "train_warmup", "train_seed", "train_alpha_span",
                         "train_log_every", "train_checkpoint_every", "train_val_every", "train_val_items"]
TRANSFORMER_TRAIN_FLOAT = ["train_lr", "train_lr_min_ratio", "train_beta1", "train_beta2", "train_weight_decay",
                           "train_clip_norm", "train_ema_decay", "train_label_smoothing", "train_class_dropout",
                           "train_loss_limit"]


def check_transformer(c, f, args):
    """magnets-transformer: /weights (+ /ema) with the shapes of magnets/transformer.h, /train_state."""
    c.standard(f, "magnets-transformer")
    cfg = {k: c.attr(f, k, "int") for k in TRANSFORMER_INT}
    nesting = c.attr(f, "nesting", "str")
    factors = c.attr(f, "factors", "str")
    c.expect(nesting in ("width", "mone", "mlp"), f"nesting {nesting!r} is not width, mone or mlp")
    c.say("model " + ", ".join(f"{k}={v}" for k, v in cfg.items()) + f", nesting={nesting}, factors={factors}")
    if "train_steps" in f.attrs:
        for k in TRANSFORMER_TRAIN_INT:
            c.attr(f, k, "int")
        for k in TRANSFORMER_TRAIN_FLOAT:
            c.attr(f, k, "float")
        obj = c.attr(f, "train_objective", "str")
        c.expect(obj in ("ground-truth", "progressive", "distill-only"), f"train_objective {obj!r}")
    if None in cfg.values() or factors is None:
        return
    D, L, K = cfg["width"], cfg["layers"], cfg["codebook_size"]
    F = cfg["mlp_ratio"] * D
    N = cfg["grid_t"] * cfg["grid_h"] * cfg["grid_w"]
    V = K + cfg["num_classes"] + 2
    shapes = {"tok_emb.weight": (V, D), "pos_emb.weight": (N + 1, D), "ln_f.weight": (D,), "ln_f.bias": (D,),
              "head.weight": (K, D), "head.bias": (K,)}
    for l in range(L):
        b = f"blocks.{l}."
        for n in ("ln1", "ln2"):
            shapes[b + n + ".weight"] = (D,)
            shapes[b + n + ".bias"] = (D,)
        for n in "qkvo":
            shapes[b + f"attn.{n}.weight"] = (D, D)
            shapes[b + f"attn.{n}.bias"] = (D,)
        shapes[b + "mlp.fc1.weight"], shapes[b + "mlp.fc1.bias"] = (F, D), (F,)
        shapes[b + "mlp.fc2.weight"], shapes[b + "mlp.fc2.bias"] = (D, F), (D,)
    for grp in ("weights", "ema"):
        if grp == "ema" and grp not in f:
            continue
        if not c.expect(grp in f and isinstance(f[grp], h5py.Group), f"group /{grp} is missing"):
            return
        names = set(f[grp].keys())
        c.expect(names == set(shapes), f"/{grp} tensors differ from the documented set: "
                 f"missing {sorted(set(shapes) - names)[:5]}, extra {sorted(names - set(shapes))[:5]}")
        for n, shape in shapes.items():
            if n in names:
                c.dataset(f[grp], n, "<f4", shape)
                c.expect(np.isfinite(f[grp][n][()]).all(), f"/{grp}/{n} holds non-finite values")
    c.say(f"/weights: {len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes.values())} values, "
          f"hash {weights_hash(f)}")
    if "train_state" in f:
        st = f["train_state"]
        for k in ("step", "seed", "data_position", "adam_t", "data_count"):
            c.attr(st, k, "int", "/train_state")
        for k in ("data_source", "data_tokenizer"):
            c.attr(st, k, "str", "/train_state")
        for n, shape in shapes.items():
            for m in ("adam_m", "adam_v"):
                c.dataset(st, f"{m}/{n}", "<f4", shape)
        c.say(f"/train_state: step {st.attrs.get('step')}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--count", type=int, help="expected item count of token files")
    p.add_argument("--tokenizer", metavar="TOK.h5", help="check token files' tokenizer_hash against this checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the verdict")
    args = p.parse_args()
    failed = 0
    for path in args.files:
        c = Checker(path, args.quiet)
        print(f"{path}:")
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
                if fmt == "magnets-tokens":
                    check_tokens(c, f, args)
                elif fmt == "magnets-tokenizer":
                    check_tokenizer(c, f, args)
                elif fmt == "magnets-transformer":
                    check_transformer(c, f, args)
                else:
                    c.fail(f"unknown format attribute {fmt!r}")
        except (OSError, KeyError) as e:
            c.fail(f"cannot read: {e}")
        print(f"{path}: {'OK' if not c.problems else f'{len(c.problems)} problem(s)'}")
        failed += bool(c.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
