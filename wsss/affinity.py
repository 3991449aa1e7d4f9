"""Affinity labels, loss and the random walk of PSA (CVPR 2018). Torch in, torch
out, on the input's device and dtype; label maps are int64.

Pairs (PSA's ``get_indices_of_pairs``): offsets ``(0, dx)`` for dx = 1..r-1, then for
dy = 1..r-1 every ``(dy, dx)`` with dx = -(r-1)..r-1 and dx^2 + dy^2 < r^2. "From" pixels: rows
0..h-r, columns r-1..w-r of an h x w grid, row-major; the partner of (i, j) for (dy, dx) is
(i + dy, j + dx).

The walk (docs/method.md, Random walk): the reference builds the dense N x N affinity
matrix, raises it to the power beta, normalises its columns (T0) and squares it ``logt``
times, then multiplies the pooled scores by it: ``v T0^(2^logt)`` (6 squarings of a 2,961^2
matrix for a 500 x 375 image, about 3e11 flops). Only background + the image's classes are
walked and T0 has at most 2K + 1 non-zeros per column, so the same product comes from 2^logt
sparse vector-matrix products (``method="sparse"``, the default for a sparse ``M`` from
``sparse_affinity``); ``method="squaring"`` keeps the reference's dense squarings for
checking.
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F


@lru_cache(maxsize=None)
def pair_offsets(radius: int) -> List[Tuple[int, int]]:
    """The K ``(dy, dx)`` offsets of ``radius`` in PSA's order (r = 5: 34, r = 4: 22)."""
    offs = [(0, dx) for dx in range(1, radius)]
    offs += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
             if dx * dx + dy * dy < radius * radius]
    return offs


def pair_indices(h: int, w: int, radius: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (i * w + j) of the P "from" pixels and of their K * P partners
    (offset-major) on an h x w grid; int64. A grid with fewer than ``radius`` rows or
    ``2 radius - 1`` columns has none (P = 0), as in the reference."""
    rf = radius - 1
    grid = torch.arange(h * w, dtype=torch.int64).reshape(h, w)
    ch, cw = max(h - rf, 0), max(w - 2 * rf, 0)
    i_from = grid[:ch, rf:rf + cw].reshape(-1)
    i_to = torch.cat([grid[dy:dy + ch, rf + dx:rf + dx + cw].reshape(-1)
                      for dy, dx in pair_offsets(radius)])
    return i_from, i_to


def pair_affinities(e: torch.Tensor, radius: int) -> torch.Tensor:
    """``exp(-mean_c |e[from_p] - e[partner_kp]|)`` (PSA's AffinityNet) for the pairs of
    ``pair_indices`` on the grid of ``e`` (B x C x h x w) -> B x K x P (offset-major).

    The reference gathers the K * P partner features (``index_select``: B x C x K x P, 1.2 GB
    for a batch of 8 at 448 px); here each offset's partners are one shifted slice of the
    grid, so no gather and no K-fold copy of the features: the same numbers (the same
    subtraction and mean over C per pair), 6x faster on the toy backbone's training step."""
    rf = radius - 1
    B, _, h, w = e.shape
    ch, cw = max(h - rf, 0), max(w - 2 * rf, 0)
    offsets = pair_offsets(radius)
    if ch == 0 or cw == 0:
        return e.new_zeros(B, len(offsets), 0)
    src = e[:, :, :ch, rf:rf + cw]
    d = [(e[:, :, dy:dy + ch, rf + dx:rf + dx + cw] - src).abs().mean(dim=1).reshape(B, -1)
         for dy, dx in offsets]
    return torch.exp(-torch.stack(d, dim=1))


def crop_window(x: torch.Tensor, size: int, top: int, left: int, fill=0.0) -> torch.Tensor:
    """``out[..., i, j] = x[..., top + i, left + j]`` where that lies inside ``x``, else
    ``fill``; ``x`` (..., H, W) -> (..., size, size). Origins may be negative (PSA's
    ``RandomCrop``)."""
    H, W = x.shape[-2:]
    out = x.new_full(x.shape[:-2] + (size, size), fill)
    y0, y1 = max(top, 0), min(top + size, H)
    x0, x1 = max(left, 0), min(left + size, W)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top:y1 - top, x0 - left:x1 - left] = x[..., y0:y1, x0:x1]
    return out


def block_mean(x: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Mean over non-overlapping ``stride`` x ``stride`` blocks of (..., H, W); a side not
    divisible by ``stride`` is zero-padded at the end first (the mean always divides by
    stride^2, as PSA's ``block_reduce``)."""
    H, W = x.shape[-2:]
    lead = x.shape[:-2]
    x = F.pad(x.reshape((-1, 1, H, W)), (0, -W % stride, 0, -H % stride))
    pooled = F.avg_pool2d(x, stride)
    return pooled.reshape(lead + pooled.shape[-2:])


def affinity_label_map(la: torch.Tensor, ha: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """PSA's ``ExtractAffinityLabelInRadius`` input: the label map of a crop's low- and
    high-alpha score stacks (each (n+1) x S x S, background first) -> int64 (S/stride) x
    (S/stride): ``argmax`` of the pooled la (0 there -> 255), then 0 where the pooled ha's
    argmax is 0, then 255 where every pooled score is < 1e-5. Values: 0 background, 1..n the
    dict's channels, 255."""
    la, ha = block_mean(la, stride), block_mean(ha, stride)
    empty = torch.maximum(la.amax(0), ha.amax(0)) < 1e-5
    a, b = la.argmax(0), ha.argmax(0)
    y = a.clone()
    y[a == 0] = 255
    y[b == 0] = 0
    y[empty] = 255
    return y.to(torch.int64)


def affinity_labels(y: torch.Tensor, radius: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(bg_pos, fg_pos, neg)`` of label maps ``y`` (..., h, w): each (..., K, P) float32
    over the pairs of ``radius`` (``ExtractAffinityLabelInRadius``): same background; same
    foreground channel; different labels (neither 255)."""
    h, w = y.shape[-2:]
    i_from, i_to = pair_indices(h, w, radius)
    flat = y.reshape(y.shape[:-2] + (h * w,))
    i_from, i_to = i_from.to(y.device), i_to.to(y.device)
    f = flat.index_select(-1, i_from).unsqueeze(-2)                                # ... 1 P
    t = flat.index_select(-1, i_to).reshape(y.shape[:-2] + (-1, i_from.numel()))   # ... K P
    valid = (f != 255) & (t != 255)
    same = f == t
    bg = same & (f == 0)
    fg = same & (f != 0) & valid
    neg = ~same & valid
    return bg.float(), fg.float(), neg.float()


def affinity_loss(aff: torch.Tensor, bg: torch.Tensor, fg: torch.Tensor, neg: torch.Tensor
                  ) -> Dict[str, torch.Tensor]:
    """MCTformer's ``psa/train_aff.py`` loss, sums over the whole batch: ``bg``, ``fg`` =
    mean of ``-log(aff + 1e-5)`` over the positive pairs of each kind, ``neg`` = mean of
    ``-log(1 + 1e-5 - aff)`` over the negative ones; ``total = bg/4 + fg/4 + neg/2``."""
    bg, fg, neg = bg.to(aff.dtype), fg.to(aff.dtype), neg.to(aff.dtype)
    L = {"bg": torch.sum(-bg * torch.log(aff + 1e-5)) / (bg.sum() + 1e-5),
         "fg": torch.sum(-fg * torch.log(aff + 1e-5)) / (fg.sum() + 1e-5),
         "neg": torch.sum(-neg * torch.log(1.0 + 1e-5 - aff)) / (neg.sum() + 1e-5)}
    L["total"] = L["bg"] / 4 + L["fg"] / 4 + L["neg"] / 2
    return L


def _pairs_of(aff: torch.Tensor, h: int, w: int, radius: int):
    aff = aff.reshape(-1)
    i_from, i_to = pair_indices(h, w, radius)
    K = len(pair_offsets(radius))
    if aff.numel() != i_to.numel():
        raise ValueError(f"{aff.numel()} affinities for a {h}x{w} grid of radius {radius} "
                         f"(expected {i_to.numel()})")
    return aff, i_from.repeat(K).to(aff.device), i_to.to(aff.device)


def dense_affinity(aff: torch.Tensor, h: int, w: int, radius: int) -> torch.Tensor:
    """The dense N x N affinity matrix of ``aff`` (K x P or 1 x K x P): 1 on the diagonal,
    ``aff[k, p]`` at (from_p, partner_kp) and (partner_kp, from_p), 0 elsewhere."""
    values, i_from, i_to = _pairs_of(aff, h, w, radius)
    N = h * w
    M = torch.eye(N, dtype=values.dtype, device=values.device)
    M[i_from, i_to] = values
    M[i_to, i_from] = values
    return M


def sparse_affinity(aff: torch.Tensor, h: int, w: int, radius: int) -> torch.Tensor:
    """The matrix of ``dense_affinity`` as a sparse COO tensor (N x N, at most 2K + 1
    non-zeros per column), built without the dense matrix."""
    values, i_from, i_to = _pairs_of(aff, h, w, radius)
    N = h * w
    diag = torch.arange(N, device=values.device)
    rows = torch.cat([i_from, i_to, diag])
    cols = torch.cat([i_to, i_from, diag])
    vals = torch.cat([values, values, torch.ones(N, dtype=values.dtype, device=values.device)])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (N, N),
                                   check_invariants=False).coalesce()


def rw_background(cams: torch.Tensor, mode: str = "threshold", threshold: float = 0.39,
                  alpha: float = 16) -> torch.Tensor:
    """The walk's background score (docs/method.md, Random walk) for seeds ``cams``
    (n x H x W): the constant ``threshold`` (MCTformer, "threshold") or
    ``(1 - max_k cam_k)^alpha`` (PSA, "power"; ones when n = 0)."""
    H, W = cams.shape[-2:]
    if mode == "threshold":
        return cams.new_full((H, W), threshold)
    if mode == "power":
        if cams.shape[0] == 0:
            return cams.new_ones((H, W))
        return torch.pow(1 - cams.amax(0), alpha)
    raise ValueError(f"background mode must be 'threshold' or 'power', not {mode!r}")


def _transition_sparse(M: torch.Tensor, beta: float) -> torch.Tensor:
    """T0 = M^beta with columns normalised, transposed (T0^T, sparse) so that
    ``T0^T @ v^T`` computes the row-vector product ``v T0`` for every channel at once."""
    M = M.coalesce()
    (rows, cols), vals = M.indices(), torch.pow(M.values(), beta)
    colsum = torch.zeros(M.shape[1], dtype=vals.dtype, device=vals.device).index_add_(0, cols,
                                                                                       vals)
    vals = vals / colsum[cols]
    return torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, M.shape,
                                   check_invariants=False).coalesce()


def random_walk(scores: torch.Tensor, M: torch.Tensor, beta: float = 8, logt: int = 6,
                method: str = "auto", stride: int = 8) -> torch.Tensor:
    """The walk maps (docs/method.md, Random walk) of ``scores`` (c x H x W, background
    first) on the affinity matrix ``M`` (dense N x N, or sparse from ``sparse_affinity``;
    N = h w with h = ceil(H/8), w = ceil(W/8)): zero-pad to 8h x 8w, 8 x 8 average pooling,
    ``v T`` with ``T = T0^(2^logt)``, bilinear upsampling (align_corners False) to 8h x 8w,
    crop to H x W. Returns c x H x W; labels are ``argmax(0)`` (first maximum wins).

    ``method``: "squaring" (the reference: dense T0 squared ``logt`` times), "sparse"
    (2^logt sparse vector products; the same numbers up to rounding) or "auto" (sparse for
    a sparse ``M``, squaring for a dense one). Half-precision inputs walk in float32.
    ``stride``: the affinity net's output stride (8 in the reference; ours may differ, e.g.
    the toy backbone's 4), used for 8 above."""
    c, H, W = scores.shape
    s = stride
    h, w = -(-H // s), -(-W // s)
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores = scores.to(dtype)
    if M.shape != (h * w, h * w):
        raise ValueError(f"affinity matrix {tuple(M.shape)} does not fit {H}x{W} scores "
                         f"({h}x{w} grid)")
    v = F.avg_pool2d(F.pad(scores[None], (0, s * w - W, 0, s * h - H)), s, s).reshape(c, h * w)
    if method == "auto":
        method = "sparse" if M.is_sparse else "squaring"
    if method == "squaring":
        Md = (M.to_dense() if M.is_sparse else M).to(dtype)
        A = torch.pow(Md, beta)
        T = A / A.sum(dim=0, keepdim=True)
        for _ in range(logt):
            T = T @ T
        r = v @ T
    elif method == "sparse":
        Ms = (M if M.is_sparse else M.to_sparse()).to(dtype)
        with warnings.catch_warnings():     # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            # CSR: 20x faster products than COO's torch.sparse.mm (3 vs 60 ms for 64
            # products on a 24 x 24 grid, bench/bench_rw.py at VOC size)
            Tt = _transition_sparse(Ms, beta).to_sparse_csr()
            r = v.t().contiguous()
            for _ in range(2 ** logt):
                r = Tt @ r
        r = r.t()
    else:
        raise ValueError(f"method must be 'auto', 'sparse' or 'squaring', not {method!r}")
    up = F.interpolate(r.reshape(1, c, h, w), size=(s * h, s * w), mode="bilinear",
                       align_corners=False)
    return up[0, :, :H, :W]
