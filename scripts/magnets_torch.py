#!/usr/bin/python3
"""The magnets nested masked transformer (MaGNeTS) in PyTorch: the reference model.

Same parameter names, shapes and sub-model slicing as lib/magnets/transformer.h
(METHOD sections 3-5). One parameter set holds the nested sub-models m_p, p in
cfg.factors; sub-model m_p uses only the leading block (first rows / first
columns) of every weight:

  nesting  residual r   attention a (heads)   MLP f
  width    D/p          D/p (H/p)             F/p
  mone     D/p          D   (H)               F/p
  mlp      D            D   (H)               F/p      (F = mlp_ratio * D)

Sequence: position 0 is the class token, positions 1..N the image tokens.
Vocabulary: codes 0..K-1, MASK = K, classes K+1..K+C, NULL = K+C+1.
Pre-LN blocks, exact (erf) GELU, LayerNorm eps 1e-5, full (unmasked)
bidirectional attention, head D -> K on the image positions.

Works with Debian's torch 1.13 (/usr/bin/python3) and PyPI torch 2.x
(/opt/torch-venv/bin/python). Used by scripts/gen_transformer_fixture.py and
bench/transformer_torch.py; never imported by the C++ build.

    from magnets_torch import Config, NestedTransformer, joint_loss, make_adamw
    cfg = Config(codebook_size=16, num_classes=3, grid_h=2, grid_w=3, width=16, heads=4, layers=2)
    model = NestedTransformer(cfg)
    logits = model(ids, p=2)               # ids [B, N+1] int64 -> [B, N, K]
"""
import dataclasses
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

NESTINGS = ("width", "mone", "mlp")
OBJECTIVES = ("ground_truth", "progressive", "distill_only")
LN_EPS = 1e-5


@dataclasses.dataclass
class Config:
    codebook_size: int = 512   # K
    num_classes: int = 10      # C
    grid_t: int = 1
    grid_h: int = 8
    grid_w: int = 8
    width: int = 128           # D
    heads: int = 8             # H
    layers: int = 4            # L
    mlp_ratio: int = 4
    nesting: str = "width"
    factors: List[int] = dataclasses.field(default_factory=lambda: [8, 4, 2, 1])

    @property
    def tokens(self):  # N
        return self.grid_t * self.grid_h * self.grid_w

    @property
    def seq(self):  # S = N + 1
        return self.tokens + 1

    @property
    def vocab(self):  # V = K + C + 2
        return self.codebook_size + self.num_classes + 2

    @property
    def mask_id(self):
        return self.codebook_size

    def class_id(self, c):
        return self.codebook_size + 1 + c

    @property
    def null_id(self):
        return self.codebook_size + 1 + self.num_classes

    @property
    def mlp_width(self):  # F
        return self.mlp_ratio * self.width

    @property
    def head_dim(self):
        return self.width // self.heads

    def sub(self, p):
        """(r, a, heads, f) of sub-model m_p: residual, attention, head count, MLP widths."""
        if p not in self.factors:
            raise ValueError(f"factor {p} is not one of {self.factors}")
        D, H, Fw = self.width, self.heads, self.mlp_width
        if self.nesting == "width":
            return D // p, D // p, H // p, Fw // p
        if self.nesting == "mone":
            return D // p, D, H, Fw // p
        if self.nesting == "mlp":
            return D, D, H, Fw // p
        raise ValueError(f"nesting {self.nesting!r} is not one of {NESTINGS}")

    def validate(self):
        if self.nesting not in NESTINGS:
            raise ValueError(f"nesting {self.nesting!r} is not one of {NESTINGS}")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")
        if 1 not in self.factors or len(set(self.factors)) != len(self.factors):
            raise ValueError("factors must be distinct and include 1")
        for p in self.factors:
            if p < 1 or self.width % p or self.mlp_width % p:
                raise ValueError(f"factor {p} must divide width and the MLP width")
            if self.nesting == "width" and self.heads % p:
                raise ValueError(f"factor {p} must divide heads for nesting=width")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if isinstance(kw.get("factors"), str):
            kw["factors"] = parse_factors(kw["factors"])
        return cls(**kw)


def parse_factors(s):
    return [int(x) for x in str(s).replace(" ", "").split(",") if x]


def factors_to_string(f):
    return ",".join(str(int(x)) for x in f)


class _Attention(nn.Module):
    def __init__(self, D):
        super().__init__()
        self.q = nn.Linear(D, D)
        self.k = nn.Linear(D, D)
        self.v = nn.Linear(D, D)
        self.o = nn.Linear(D, D)


class _MLP(nn.Module):
    def __init__(self, D, Fw):
        super().__init__()
        self.fc1 = nn.Linear(D, Fw)
        self.fc2 = nn.Linear(Fw, D)


class _Block(nn.Module):
    def __init__(self, D, Fw):
        super().__init__()
        self.ln1 = nn.LayerNorm(D, eps=LN_EPS)
        self.attn = _Attention(D)
        self.ln2 = nn.LayerNorm(D, eps=LN_EPS)
        self.mlp = _MLP(D, Fw)


def _lin(x, lin, out, inp):
    # The leading [out, inp] block of an nn.Linear (no copy: a strided view).
    return F.linear(x, lin.weight[:out, :inp], lin.bias[:out])


def _ln(x, ln, r):
    return F.layer_norm(x, (r,), ln.weight[:r], ln.bias[:r], eps=LN_EPS)


class NestedTransformer(nn.Module):
    """named_parameters() gives exactly the names of lib/magnets/transformer.h."""

    def __init__(self, cfg, **kw):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = Config.from_dict(cfg)
        if kw:
            cfg = dataclasses.replace(cfg, **kw)
        cfg.validate()
        self.cfg = cfg
        D, Fw = cfg.width, cfg.mlp_width
        self.tok_emb = nn.Embedding(cfg.vocab, D)
        self.pos_emb = nn.Embedding(cfg.seq, D)
        self.blocks = nn.ModuleList([_Block(D, Fw) for _ in range(cfg.layers)])
        self.ln_f = nn.LayerNorm(D, eps=LN_EPS)
        self.head = nn.Linear(D, cfg.codebook_size)
        # Attention kernel: "math" (explicit softmax, the reference) or "sdpa"
        # (F.scaled_dot_product_attention, torch >= 2.0; same maths, fused).
        self.attention = "math"
        # Output head: "all" image positions (the plain formulation) or only the
        # "masked" ones joint_loss needs (what magnets does; same losses, less work).
        self.head_rows = "all"

    def forward(self, ids, p=1, rows=None):
        """ids [B, S] int64 (class token first) -> logits [B, N, K] of sub-model m_p;
        with rows (bool [B, N]), logits [rows.sum(), K] at those positions only."""
        cfg = self.cfg
        r, a, nh, f = cfg.sub(p)
        hd = cfg.head_dim
        B, S = ids.shape
        x = self.tok_emb.weight[:, :r][ids] + self.pos_emb.weight[:S, :r]
        for blk in self.blocks:
            h = _ln(x, blk.ln1, r)
            q = _lin(h, blk.attn.q, a, r).view(B, S, nh, hd).transpose(1, 2)
            k = _lin(h, blk.attn.k, a, r).view(B, S, nh, hd).transpose(1, 2)
            v = _lin(h, blk.attn.v, a, r).view(B, S, nh, hd).transpose(1, 2)
            if self.attention == "sdpa":
                att = F.scaled_dot_product_attention(q, k, v)
            else:
                w = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd)), dim=-1)
                att = torch.matmul(w, v)
            att = att.transpose(1, 2).reshape(B, S, a)
            x = x + _lin(att, blk.attn.o, r, a)
            h2 = _ln(x, blk.ln2, r)
            x = x + _lin(F.gelu(_lin(h2, blk.mlp.fc1, f, r)), blk.mlp.fc2, r, f)
        x = _ln(x, self.ln_f, r)
        x = x[:, 1:, :] if rows is None else x[:, 1:, :][rows]
        return F.linear(x, self.head.weight[:, :r], self.head.bias)


# ---- losses -----------------------------------------------------------------

def ce_loss(logits, targets, mask, smoothing=0.0):
    """Cross-entropy on the masked positions (mean over all masked positions of the batch)."""
    return F.cross_entropy(logits[mask], targets[mask], label_smoothing=smoothing)


def soft_loss(logits, teacher_logits, mask):
    """H(softmax(teacher), student) averaged over the masked positions; teacher detached."""
    t = torch.softmax(teacher_logits.detach()[mask], dim=-1)
    return -(t * torch.log_softmax(logits[mask], dim=-1)).sum(-1).mean()


def joint_loss(model, ids, targets, mask, objective="ground_truth", alpha=1.0, loss_weights=None,
               smoothing=0.1, return_logits=False):
    """Joint loss over all sub-models on one masked batch.

    Runs the sub-models from the largest (p = 1) to the smallest. The full model
    learns from the ground truth; each smaller one from the ground truth
    (objective ground_truth) or alpha * CE + (1 - alpha) * H(next larger, m_p)
    (progressive; distill_only is progressive with alpha = 0).
    Returns (total, per-sub-model losses in cfg.factors order[, logits in cfg.factors order]).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    if objective == "distill_only":
        alpha = 0.0
    factors = list(model.cfg.factors)
    weights = [1.0] * len(factors) if loss_weights is None else list(loss_weights)
    if len(weights) != len(factors):
        raise ValueError("loss_weights must have one entry per factor")
    order = sorted(range(len(factors)), key=lambda i: factors[i])  # smallest p (largest model) first
    subs = [None] * len(factors)
    logits_out = [None] * len(factors)
    prev = None
    compact = getattr(model, "head_rows", "all") == "masked"
    for n, i in enumerate(order):
        if compact:  # logits at the masked positions only: [M, K]
            logits = model(ids, factors[i], mask)
            ce = F.cross_entropy(logits, targets[mask], label_smoothing=smoothing)
        else:
            logits = model(ids, factors[i])
            ce = ce_loss(logits, targets, mask, smoothing)
        if n == 0 or objective == "ground_truth":
            loss = ce
        elif compact:
            t = torch.softmax(prev, dim=-1)
            loss = alpha * ce + (1.0 - alpha) * -(t * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
        else:
            loss = alpha * ce + (1.0 - alpha) * soft_loss(logits, prev, mask)
        subs[i] = loss
        logits_out[i] = logits
        prev = logits.detach()
    total = sum(w * l for w, l in zip(weights, subs))
    if return_logits:
        return total, subs, logits_out
    return total, subs


# ---- optimizer and initialisation -------------------------------------------

def make_adamw(model, lr, betas=(0.9, 0.96), wd=0.045, eps=1e-8):
    """AdamW with weight decay on every matrix (linear weights, both embeddings), none on
    biases and LayerNorm parameters."""
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=tuple(betas), eps=eps)


@torch.no_grad()
def init_random(model, gen, gain=1.0):
    """Random init for fixtures (every parameter matters; activations O(1)):
    matrices N(0, gain^2 / in) (embeddings N(0, 0.5^2)), biases N(0, 0.1^2),
    LayerNorm gains 1 + N(0, 0.1^2), LayerNorm biases N(0, 0.1^2)."""
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        z = torch.randn(shape, generator=gen, dtype=torch.float32).to(p.dtype)
        if name.endswith("_emb.weight"):
            p.copy_(0.5 * z)
        elif p.dim() == 2:
            p.copy_(z * (gain / math.sqrt(shape[1])))
        elif ".ln" in "." + name and name.endswith(".weight"):
            p.copy_(1.0 + 0.1 * z)
        else:
            p.copy_(0.1 * z)


@torch.no_grad()
def init_like_magnets(model, gen):
    """Weights N(0, 0.02), biases 0, LayerNorm gains 1 (the C++ scheme; not the same stream)."""
    for name, p in model.named_parameters():
        if p.dim() == 2:
            p.copy_(0.02 * torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32).to(p.dtype))
        elif ".ln" in "." + name and name.endswith(".weight"):
            p.fill_(1.0)
        else:
            p.zero_()


def cosine_mask(N, batch, gen):
    """Per example r ~ U(0,1), ceil(cos(pi/2 r) N) random masked positions (at least 1). -> bool [B, N]."""
    r = torch.rand(batch, generator=gen, dtype=torch.float64)
    counts = torch.ceil(torch.cos(0.5 * math.pi * r) * N).clamp(1, N).long()
    order = torch.rand(batch, N, generator=gen).argsort(dim=1)
    ranks = order.argsort(dim=1)
    return ranks < counts[:, None]
