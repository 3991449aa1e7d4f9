"""Literal, loop-level restatements of the refinement and segmentation stage (PSA,
MCTformer's ``psa/`` and ``seg/``), written from the reference code, independently of
``wsss/affinity.py``, ``wsss/segmentation.py`` and ``utils/optim.py``.

Used by the tests (``tests/wsss/test_affinity.py``, ``tests/models/test_resnet38.py``) as
the restatement to compare the project against on configurations other than the fixtures',
and by benchmarks as the reference-style baseline of the walk.
Everything is spelled out pixel by pixel or pair by pair (small inputs only), except
``ref_random_walk``, which is the reference's own tensor code (dense matrix, elementwise
power, column normalisation, ``logt`` squarings) so that it can be timed at VOC size.

* ``ref_pair_offsets`` / ``ref_pair_indices`` -- PSA's pairs by explicit loops.
* ``ref_crop_window``   -- PSA's random crop, pixel by pixel.
* ``ref_label_map``     -- the affinity label map: block means (zero-padded, / stride^2), the
                           argmaxes (first maximum wins), the 255 / 0 rules.
* ``ref_affinity_labels`` -- bg_pos / fg_pos / neg, pair by pair.
* ``ref_affinities``    -- AffinityNet's ``exp(-mean_c |e[to] - e[from]|)`` from an embedding.
* ``ref_affinity_loss`` -- the affinity loss, element by element in float64.
* ``ref_dense_affinity`` -- the walk's N x N matrix, pair by pair.
* ``ref_rw_background`` -- the walk's background, both rules.
* ``ref_random_walk``   -- the walk as MCTformer's ``psa/infer_aff.py`` computes it.
* ``ref_seg_predict``   -- segmentation inference, one view (scale, flip) at a time.
* ``ref_seg_loss``      -- the segmentation loss, pixel by pixel in float64.
* ``RefPolyOptimizer``  -- PSA's ``tool/torchutils.PolyOptimizer`` verbatim, with
                           its weight-decay argument landing in SGD's momentum slot.

Nothing here is imported by the project.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------ pairs
def ref_pair_offsets(radius: int) -> List[Tuple[int, int]]:
    """(0, dx) for dx = 1..r-1, then (dy, dx) for dy = 1..r-1, dx = -(r-1)..r-1 with
    dx^2 + dy^2 < r^2."""
    offsets = []
    for dx in range(1, radius):
        offsets.append((0, dx))
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def ref_pair_indices(h: int, w: int, radius: int) -> Tuple[np.ndarray, np.ndarray]:
    """From pixels (rows 0..h-r, columns r-1..w-r, row-major) and their partners
    (offset-major), as flat indices i * w + j; empty when the grid is too small."""
    rf = radius - 1
    froms = []
    for i in range(h - rf):
        for j in range(rf, w - rf):
            froms.append(i * w + j)
    tos = []
    for dy, dx in ref_pair_offsets(radius):
        for i in range(h - rf):
            for j in range(rf, w - rf):
                tos.append((i + dy) * w + (j + dx))
    return np.array(froms, np.int64), np.array(tos, np.int64)


# ------------------------------------------------------------------------- label maps
def ref_crop_window(x: np.ndarray, size: int, top: int, left: int, fill=0.0) -> np.ndarray:
    """``out[..., i, j] = x[..., top + i, left + j]`` inside ``x``, else ``fill``."""
    H, W = x.shape[-2:]
    out = np.full(x.shape[:-2] + (size, size), fill, dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            if 0 <= top + i < H and 0 <= left + j < W:
                out[..., i, j] = x[..., top + i, left + j]
    return out


def _first_argmax(values: Sequence[float]) -> int:
    best = 0
    for c in range(1, len(values)):
        if values[c] > values[best]:
            best = c
    return best


def ref_label_map(la: np.ndarray, ha: np.ndarray, stride: int = 8) -> np.ndarray:
    """The label map of score stacks ``la``, ``ha`` ((n+1) x H x W each): the mean of
    every stride x stride block (cells outside the map count as 0, the sum is divided by
    stride^2), then per cell: a = argmax of la, b = argmax of ha, y = a, 255 where a == 0,
    0 where b == 0, 255 where every pooled score is < 1e-5."""
    n1, H, W = la.shape
    h, w = -(-H // stride), -(-W // stride)
    stack = np.concatenate([la, ha]).astype(np.float64)
    y = np.zeros((h, w), np.int64)
    for bi in range(h):
        for bj in range(w):
            pooled = []
            for c in range(2 * n1):
                s = 0.0
                for i in range(bi * stride, min((bi + 1) * stride, H)):
                    for j in range(bj * stride, min((bj + 1) * stride, W)):
                        s += stack[c, i, j]
                pooled.append(s / stride ** 2)
            a, b = _first_argmax(pooled[:n1]), _first_argmax(pooled[n1:])
            label = 255 if a == 0 else a
            if b == 0:
                label = 0
            if max(pooled) < 1e-5:
                label = 255
            y[bi, bj] = label
    return y


def ref_affinity_labels(y: np.ndarray, radius: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(bg_pos, fg_pos, neg)`` (K x P float32) of one label map, pair by pair."""
    h, w = y.shape
    froms, tos = ref_pair_indices(h, w, radius)
    K, P = len(ref_pair_offsets(radius)), len(froms)
    flat = y.reshape(-1)
    out = np.zeros((3, K, P), np.float32)
    for k in range(K):
        for p in range(P):
            f, t = int(flat[froms[p]]), int(flat[tos[k * P + p]])
            out[0, k, p] = f == t and f == 0
            out[1, k, p] = f == t and f != 0 and f != 255
            out[2, k, p] = f != t and f != 255 and t != 255
    return out[0], out[1], out[2]


# ------------------------------------------------------------------ 13 AffinityNet
def ref_affinities(e: np.ndarray, radius: int) -> np.ndarray:
    """AffinityNet's affinities from an embedding ``e`` (B x C x h x w):
    ``aff[b, k, p] = exp(-mean_c |e[b, c, partner] - e[b, c, from]|)``, B x K x P, pair by
    pair."""
    B, C, h, w = e.shape
    froms, tos = ref_pair_indices(h, w, radius)
    K, P = len(ref_pair_offsets(radius)), len(froms)
    flat = e.reshape(B, C, h * w)
    out = np.zeros((B, K, P))
    for b in range(B):
        for k in range(K):
            for p in range(P):
                d = np.abs(flat[b, :, tos[k * P + p]] - flat[b, :, froms[p]])
                out[b, k, p] = math.exp(-d.mean())
    return out


def ref_affinity_loss(aff, bg, fg, neg) -> Dict[str, float]:
    """MCTformer's ``psa/train_aff.py`` loss element by element in float64: counts + 1e-5,
    ``-log(aff + 1e-5)`` over the positives, ``-log(1 + 1e-5 - aff)`` over the negatives,
    total = bg/4 + fg/4 + neg/2."""
    a = np.asarray(aff, np.float64).reshape(-1)
    labels = [np.asarray(t, np.float64).reshape(-1) for t in (bg, fg, neg)]
    sums, counts = [0.0, 0.0, 0.0], [1e-5, 1e-5, 1e-5]
    for i in range(a.size):
        for n, lab in enumerate(labels):
            counts[n] += lab[i]
            if lab[i]:
                arg = 1.0 + 1e-5 - a[i] if n == 2 else a[i] + 1e-5
                sums[n] += -lab[i] * math.log(arg)
    out = {name: s / c for name, s, c in zip(("bg", "fg", "neg"), sums, counts)}
    out["total"] = out["bg"] / 4 + out["fg"] / 4 + out["neg"] / 2
    return out


# ---------------------------------------------------------------- 14 random walk
def ref_dense_affinity(aff: np.ndarray, h: int, w: int, radius: int) -> np.ndarray:
    """The walk's affinity matrix: identity, plus ``aff[k, p]`` at (from_p, partner_kp) and
    its transpose."""
    froms, tos = ref_pair_indices(h, w, radius)
    a = np.asarray(aff).reshape(len(ref_pair_offsets(radius)), len(froms))
    M = np.eye(h * w, dtype=a.dtype)
    for k in range(a.shape[0]):
        for p in range(a.shape[1]):
            f, t = froms[p], tos[k * a.shape[1] + p]
            M[f, t] = a[k, p]
            M[t, f] = a[k, p]
    return M


def ref_rw_background(cams: np.ndarray, mode: str, threshold: float, alpha: float
                      ) -> np.ndarray:
    """The constant ``threshold`` (MCTformer) or ``(1 - max_k cam_k)^alpha`` (PSA; ones
    without classes), pixel by pixel."""
    n, H, W = cams.shape
    out = np.empty((H, W), np.float64)
    for i in range(H):
        for j in range(W):
            if mode == "threshold":
                out[i, j] = threshold
            else:
                peak = max((cams[c, i, j] for c in range(n)), default=0.0)
                out[i, j] = (1.0 - peak) ** alpha
    return out


def ref_random_walk(scores: torch.Tensor, M: torch.Tensor, beta: float, logt: int
                    ) -> torch.Tensor:
    """The walk in the reference's order and dtype (MCTformer's ``psa/infer_aff.py``):
    ``aff_mat = M ** beta``, ``trans_mat = aff_mat / aff_mat.sum(0)``, ``logt`` squarings,
    the zero-padded scores 8 x 8 average-pooled and flattened, ``cam_vec @ trans_mat``,
    bilinear upsampling (align_corners False) to the padded size, the crop."""
    c, H, W = scores.shape
    h, w = -(-H // 8), -(-W // 8)
    aff_mat = torch.pow(M, beta)
    trans_mat = aff_mat / torch.sum(aff_mat, dim=0, keepdim=True)
    for _ in range(logt):
        trans_mat = torch.matmul(trans_mat, trans_mat)
    padded = F.pad(scores, (0, 8 * w - W, 0, 8 * h - H))
    cam_vec = F.avg_pool2d(padded, 8, 8).view(c, -1)
    cam_rw = torch.matmul(cam_vec, trans_mat).view(1, c, h, w)
    cam_rw = F.interpolate(cam_rw, (8 * h, 8 * w), mode="bilinear", align_corners=False)
    return cam_rw[0, :, :H, :W]


# ------------------------------------------------------------------ 15 segmentation
def ref_seg_predict(net, x: torch.Tensor, scales: Sequence[float], flip: bool = False,
                    merge: str = "max") -> np.ndarray:
    """MCTformer's ``seg/infer_seg.py`` and our flip/mean options, one forward per view:
    resize with align_corners True, logits upsampled (align_corners False), (flipped back,)
    softmax; the views merged in numpy: a maximum buffer starting at 0, or the mean."""
    _, _, H, W = x.shape
    views = []
    for s in scales:
        xs = F.interpolate(x, size=(int(H * s), int(W * s)), mode="bilinear",
                           align_corners=True)
        for flipped in ([False, True] if flip else [False]):
            logits = net(torch.flip(xs, [3]) if flipped else xs)
            logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            if flipped:
                logits = torch.flip(logits, [3])
            views.append(F.softmax(logits[0], dim=0).detach().cpu().double().numpy())
    if merge == "max":
        buf = np.zeros_like(views[0])
        for v in views:
            buf = np.maximum(buf, v)
        return buf
    return sum(views) / len(views)


def ref_seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
                 ) -> float:
    """MCTformer's segmentation loss: logits upsampled bilinear (align_corners False) to the
    target size, then the mean over non-ignored pixels of ``-log softmax[target]``, pixel by
    pixel in float64."""
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    z = up.detach().cpu().double().numpy()
    t = target.cpu().numpy()
    total, count = 0.0, 0
    for b in range(t.shape[0]):
        for i in range(t.shape[1]):
            for j in range(t.shape[2]):
                if t[b, i, j] == ignore_index:
                    continue
                col = z[b, :, i, j]
                m = col.max()
                lse = m + math.log(sum(math.exp(v - m) for v in col))
                total += lse - col[t[b, i, j]]
                count += 1
    return total / count


# ---------------------------------------------------------------------- optimiser
class RefPolyOptimizer(torch.optim.SGD):
    """PSA's ``tool/torchutils.PolyOptimizer`` as written (MCTformer's ``PolyOptimizer_cls``
    is the same): ``weight_decay`` is SGD's third positional parameter, i.e. momentum; the
    ``momentum`` argument is the poly power."""

    def __init__(self, params, lr, weight_decay, max_step, momentum=0.9):
        super().__init__(params, lr, weight_decay)
        self.global_step = 0
        self.max_step = max_step
        self.momentum = momentum
        self.__initial_lr = [group["lr"] for group in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            lr_mult = (1 - self.global_step / self.max_step) ** self.momentum
            for i in range(len(self.param_groups)):
                self.param_groups[i]["lr"] = self.__initial_lr[i] * lr_mult
        super().step(closure)
        self.global_step += 1
