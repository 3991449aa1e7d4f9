"""Exact prefix sharing for the magnitude-mixed pass of PCSS (docs/method.md, Magnitude mixing).

Why: the mixed pass runs blocks 0..k again on the very input of the first pass. The
reference recomputes them, drawing fresh stochastic-depth masks; with drop path 0.1 on
DeiT-S most images draw the same masks as in the first pass, so their branch outputs are the
first pass's again. Here the first pass records each block's branch outputs and masks
(``BlockTrace``); the second pass draws its masks from the same RNG stream in the same order
(``DropPath.draw`` / ``apply_mask``), and recomputes a branch only for the images whose masks
have differed from the first pass so far (``shared_block_forward``), reusing the recorded
outputs for the others. Values, gradients and random draws equal those of recomputing every
block (tests/models/test_pcss_model.py checks this in float64 with drop path 0.5).

Measured gain (``bench/bench_core.py prefix``: DeiT-S, batch 8 at 224, FSS + MPC, drop path
0.1, train step with fused AdamW, 2-core Xeon with AMX, float32): 2.40 s with exact sharing
against 2.91 s recomputing blocks 0..7 (1.21x); ``reuse_prefix`` (the first pass's tokens as
they are, no fresh masks; not the reference when drop path is on) 2.20 s.

This module is the machinery only; ``models.mct_vit`` is the network.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``p == 0``), split into
    ``draw`` (the random keep mask) and ``apply_mask`` so that a second pass can draw the
    same masks in the same order and compare them with the first pass's."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    @property
    def active(self) -> bool:
        """Does a call draw a mask (train mode and ``p > 0``)?"""
        return self.training and self.p != 0.0

    def draw(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The 0/1 keep mask (B x 1 x ...) this call would use, or None when inactive."""
        if not self.active:
            return None
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)

    def apply_mask(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        return x if mask is None else x * mask.div(1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_mask(x, self.draw(x))

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass
class BlockTrace:
    """One block's branch outputs and drop-path masks in a traced pass."""
    attn_out: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    mlp_out: torch.Tensor
    mlp_mask: Optional[torch.Tensor]
    weights: Optional[torch.Tensor]


def traced_block_forward(block, x: torch.Tensor, need_weights: bool,
                         trace: List[BlockTrace]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``block(x, need_weights)``, appending what it computed to ``trace``; the same
    operations and random draws as the untraced call."""
    fa, weights = block.attn_branch(x, need_weights)
    ma = block.drop_path.draw(fa)
    x = x + block.drop_path.apply_mask(fa, ma)
    fm = block.mlp_branch(x)
    mm = block.drop_path.draw(fm)
    x = x + block.drop_path.apply_mask(fm, mm)
    trace.append(BlockTrace(fa, ma, fm, mm, weights))
    return x, weights


def shared_block_forward(block, x: torch.Tensor, ref: BlockTrace, diverged: torch.Tensor,
                         need_weights: bool = False):
    """``block(x)`` for an input whose rows outside ``diverged`` (B bools) equal the input of
    the traced call ``ref``: those rows reuse its branch outputs, only the diverged rows are
    recomputed. Fresh drop-path masks are drawn for the whole batch exactly as the block
    draws them, and rows whose new mask differs from the traced one diverge from here on.
    Returns ``(x, weights, diverged)``."""
    if need_weights and ref.weights is None:
        diverged = torch.ones_like(diverged)
    fa, weights = _rows(lambda z: block.attn_branch(z, need_weights), x, diverged,
                        ref.attn_out, ref.weights if need_weights else None)
    ma = block.drop_path.draw(fa)
    x = x + block.drop_path.apply_mask(fa, ma)
    diverged = diverged | _differs(ma, ref.attn_mask)
    fm, _ = _rows(lambda z: (block.mlp_branch(z), None), x, diverged, ref.mlp_out, None)
    mm = block.drop_path.draw(fm)
    x = x + block.drop_path.apply_mask(fm, mm)
    return x, weights, diverged | _differs(mm, ref.mlp_mask)


def rerun_prefix(blocks, ref, need_weights: bool = False):
    """Blocks 0..k again on the input of the traced state ``ref`` (a ``TokenState`` that
    stopped after block k), with fresh drop-path masks as in a full recomputation: rows
    whose masks all match the traced pass reuse its results, the others are recomputed.
    Returns the new state after block k (untraced)."""
    if ref.trace is None or len(ref.trace) != ref.next_block:
        raise ValueError("the prefix state was not traced (run the first pass with "
                         "merge_block and no mag)")
    x = ref.embedded
    diverged = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    attn = []
    for blk, bt in zip(blocks, ref.trace):
        x, a, diverged = shared_block_forward(blk, x, bt, diverged, need_weights)
        attn.append(a)
    return dataclasses.replace(ref, tokens=x, attn=attn, trace=None)


def _rows(fn: Callable, x: torch.Tensor, rows: torch.Tensor, ref_out: torch.Tensor,
          ref_weights: Optional[torch.Tensor]):
    """``fn(x)`` (returning ``(out, weights)``) computed for ``rows`` only, the other rows
    taken from ``ref_out`` / ``ref_weights``."""
    if not bool(rows.any()):
        return ref_out, ref_weights
    if bool(rows.all()):
        return fn(x)
    idx = rows.nonzero().flatten()
    out, weights = fn(x.index_select(0, idx))
    out = ref_out.index_copy(0, idx, out)
    if weights is not None:
        weights = ref_weights.index_copy(0, idx, weights)
    return out, weights


def _differs(mask: Optional[torch.Tensor], ref: Optional[torch.Tensor]) -> torch.Tensor:
    if mask is None:
        return torch.zeros((), dtype=torch.bool)
    return mask.flatten() != ref.flatten()
