"""Literal restatements of the method (docs/method.md), the one place both the tests and the
benchmarks take them from (``tests/`` compare the project against them on configurations
other than the fixtures'; ``bench/`` times the project against them).

Each function mirrors how the authors' PCSS code does the work, step by step:

* ``literal_forward`` -- the network (docs/method.md, Network) with explicit per-head attention and
                         list stacking: ``(cls, pcls, cams, rcams)``.
* ``ref_losses``      -- training objective: every forward materialises the attention
                         weights (the authors' model always does), FSS images are built
                         with a Python loop over images and classes, and the MPC pass
                         recomputes all blocks.
* ``ref_fim_batch``   -- FIM work of one batch: for every cell, FFT of the whole batch,
                         mask, inverse FFT, full forward with attention weights, then a
                         loss per class in a Python loop.
* ``ref_cam_dict``    -- CAM inference: two separate forwards (image, flipped image) on the
                         attention path, all C classes upsampled, label-weighted, summed and
                         max-normed, then the dict.
* ``LiteralFIM``      -- whole FIM rounds (docs/method.md, Frequency influence maps) built
                         on ``ref_fim_batch``.
* ``literal_pairs`` ... ``literal_poly_sgd`` -- the refinement and segmentation stage
                         (PSA, MCTformer's seg/), loop by loop.
* ``literal_miou``    -- seed evaluation (PCSS's evaluation.py): per threshold, build the
                         (C+1) x H x W float32 volume, argmax, count TP/P/T class by class;
                         ``ref_cam_miou`` does it from files, reloading every file for every
                         threshold as the reference evaluator does.

Nothing here is imported by the project; ``np.load(allow_pickle=True)`` is acceptable here
only (the project reads dicts through ``utils.io.load_cam_dict``).
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.mct_vit import Attention
from wsss.cam import max_norm

_MLSM = F.multilabel_soft_margin_loss


def literal_forward(net, x: torch.Tensor, n_layers: int = 12):
    """The network (docs/method.md, Network) spelled out with explicit per-head attention
    and list stacking; returns ``(cls, pcls, cams, rcams)``."""
    C = net.num_classes
    B, _, H, W = x.shape
    p = net.patch_embed(x)
    h, w = p.shape[-2:]
    t = torch.cat([net.cls_token.expand(B, -1, -1), p.flatten(2).transpose(1, 2)], 1)
    t = t + net.interpolate_pos_encoding(h * w, H, W)
    attns = []
    for blk in net.blocks:
        a = blk.attn
        y = blk.norm1(t)
        qkv = a.qkv(y).reshape(B, -1, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)
        attns.append(att.mean(1))
        t = t + a.proj((att @ v).transpose(1, 2).reshape(B, -1, t.shape[-1]))
        t = t + blk.mlp(blk.norm2(t))
    cls = t[:, :C].mean(-1)
    fmap = net.head(t[:, C:].reshape(B, h, w, -1).permute(0, 3, 1, 2))
    cams = F.relu(fmap)
    A = torch.stack(attns)
    mtatt = A[-n_layers:].mean(0)[:, :C, C:].reshape(B, C, h, w)
    patch_attn = A.sum(0)[:, C:, C:]
    rc = torch.einsum("bij,bcj->bci", patch_attn, (mtatt * cams).reshape(B, C, -1))
    return cls, fmap.mean((2, 3)), cams, rc.reshape(B, C, h, w)


def _authors_attention_forward(self, x: torch.Tensor, need_weights: bool = False):
    """The authors' attention: scores scaled after the matmul, softmax out of place,
    weights always computed (their model returns them from every block)."""
    B, N, D = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.scale
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, D)
    return self.proj(out), attn.mean(dim=1)


def authors_attention(fn):
    """Run ``fn`` with every ``Attention`` computing as the authors' model does, so that the
    baseline does not profit from the project's own attention changes."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        ours = Attention.forward
        Attention.forward = _authors_attention_forward
        try:
            return fn(*args, **kwargs)
        finally:
            Attention.forward = ours
    return run


# ----------------------------------------------------------------------------- training
def ref_fss_images(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor):
    """FSS images as the reference builds them: loop over images, then over classes."""
    imgs, valid = [], []
    for b in range(x.shape[0]):
        present = torch.nonzero(y[b] > 0).flatten()
        if len(present) == 0:
            imgs.append(x[b])
            valid.append(0.0)
            continue
        Fs = torch.fft.fftshift(torch.fft.fft2(x[b]), dim=(-2, -1))
        acc = [torch.fft.ifft2(torch.fft.ifftshift(Fs * (1 - masks[c]), dim=(-2, -1))).real
               for c in present]
        imgs.append(torch.stack(acc).mean(0))
        valid.append(1.0)
    return torch.stack(imgs), torch.tensor(valid, dtype=x.dtype, device=x.device)


@authors_attention
def ref_losses(net, x, y, masks, perm, w_fss=2.0, w_mpc=2.0, k=7, r=0.3) -> Dict[str, torch.Tensor]:
    """The objective (docs/method.md, Objective) at epoch > fim_start_epoch, reference
    style (three full forwards, all with attention weights and rcams)."""
    out = net(x, merge_block=k, need_rcams=True)
    L = {"cls": _MLSM(out["cls"], y) + _MLSM(out["pcls"], y)}
    imgs, valid = ref_fss_images(x, y, masks)
    out_s = net(imgs, merge_block=k, need_rcams=True)
    L["cls_fss"] = _MLSM(out_s["cls"], y) + _MLSM(out_s["pcls"], y)
    v = valid.reshape(-1, 1, 1, 1)
    L["cam_fss"] = w_fss * ((max_norm(out["cams"]) - max_norm(out_s["cams"])).abs() * v).mean()
    X = out["x_patch"]
    mag = r * torch.fft.fft2(X).abs() + (1 - r) * torch.fft.fft2(X[perm]).abs().detach()
    out_m = net(x, merge_block=k, mag=mag, need_rcams=True)
    L["cls_mpc"] = _MLSM(out_m["cls"], y) + _MLSM(out_m["pcls"], y)
    L["cam_mpc"] = w_mpc * (max_norm(out["rcams"]).detach() - max_norm(out_m["rcams"])).abs().mean()
    L["total"] = L["cls"] + L["cls_fss"] + L["cam_fss"] + L["cls_mpc"] + L["cam_mpc"]
    return L


# ---------------------------------------------------------------------------------- FIM
def cell_partner(r: int, c: int, G: int):
    if c == 0:
        return None
    return (G - r, G - c) if r > 0 else (0, G - c)


def all_cells(G: int) -> List[tuple]:
    return [(r, c) for r in range(G) for c in range(G // 2 + 1)]


@torch.no_grad()
@authors_attention
def ref_fim_batch(net, x: torch.Tensor, y: torch.Tensor, budget: Sequence[int],
                  cells: Sequence[tuple], patch: int = 16) -> torch.Tensor:
    """C x G x G loss matrix of one batch over ``cells`` (in loop order), reference style:
    per cell, recompute the whole batch's spectrum, mask, invert, full forward (attention
    weights and rcams included), then one loss per class."""
    B, _, S, _ = x.shape
    G = S // patch
    C = y.shape[1]
    mat = torch.zeros(C, G, G, dtype=torch.float64)
    for (r, c) in cells:
        Fs = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        m = torch.ones(S, S, dtype=x.dtype, device=x.device)
        m[patch * r:patch * (r + 1), patch * c:patch * (c + 1)] = 0
        partner = cell_partner(r, c, G)
        if partner is not None:
            m[patch * partner[0]:patch * (partner[0] + 1),
              patch * partner[1]:patch * (partner[1] + 1)] = 0
        xi = torch.fft.ifft2(torch.fft.ifftshift(Fs * m, dim=(-2, -1))).real
        out = net(xi)                                   # need_rcams=True: attention path
        cls, pcls = out["cls"], out["pcls"]
        for k in range(C):
            idx = torch.nonzero(y[:, k] > 0).flatten()[:budget[k]]
            L = F.softplus(-cls[idx, k]).sum() + F.softplus(-pcls[idx, k]).sum()
            mat[k, r, c] = float(L)
            if partner is not None:
                mat[k, partner[0], partner[1]] = float(L)
    return mat


# ---------------------------------------------------------------------------- inference
@torch.no_grad()
@authors_attention
def ref_cam_dict(net, x: torch.Tensor, label: torch.Tensor, n_layers: int = 12):
    """Seeds of one 1 x 3 x H x W image, reference style."""
    _, _, H, W = x.shape
    y = label.reshape(1, -1, 1, 1).to(x.dtype)
    r1 = net.rcams(x, n_layers=n_layers)                       # all C classes
    r2 = net.rcams(x.flip(-1), n_layers=n_layers)
    r1 = F.interpolate(r1, size=(H, W), mode="bilinear", align_corners=False)
    r2 = F.interpolate(r2, size=(H, W), mode="bilinear", align_corners=False)
    cams = r1 * y + r2.flip(-1) * y
    cams = max_norm(cams)[0].cpu().numpy()
    keys = torch.nonzero(label.reshape(-1) > 1e-5).flatten().tolist()
    return {int(k): cams[k] for k in keys}


class LiteralFIM:
    """The FIM (docs/method.md, Frequency influence maps): whole rounds, one masked pass per
    cell over every image, the loss matrix written in loop order (``ref_fim_batch``), masks
    normalised by the running maximum."""

    def __init__(self, C: int, S: int, n: int):
        self.C, self.S, self.G, self.n = C, S, S // 16, n
        self.max_loss = None
        self.masks = torch.zeros(C, S, S, dtype=torch.float64)

    def round(self, net, batches):
        C, S, G = self.C, self.S, self.G
        budget = [self.n] * C
        total = torch.zeros(C, G, G, dtype=torch.float64)
        got = [False] * C
        for x, y in batches:
            total += ref_fim_batch(net, x, y, budget, all_cells(G))
            for k in range(C):
                used = min(int((y[:, k] > 0).sum()), budget[k])
                got[k] = got[k] or used > 0
                budget[k] -= used
            if all(b == 0 for b in budget):
                break
        lmap = F.interpolate(total[None], size=(S, S), mode="bicubic", align_corners=False)[0]
        top = lmap.flatten(1).max(1).values
        self.max_loss = top if self.max_loss is None else torch.maximum(self.max_loss, top)
        for k in range(C):
            if got[k]:
                lo = lmap[k].min()
                d = self.max_loss[k] - lo
                self.masks[k] = 0 if d == 0 else (lmap[k] - lo) / d
        return total, self.masks.clone()


# ---------------------------------------------------------------------------- scoring
def literal_miou(cams: Sequence[Dict[int, np.ndarray]], gts: Sequence[np.ndarray],
                 thresholds: Sequence[float], K: int = 21):
    """The seed evaluation as the reference does it: one full pass per threshold. Returns
    ``(mIoU (T,), per-class IoU (T, K))`` in percent."""
    res = []
    for t in thresholds:
        TP, P, T = np.zeros(K), np.zeros(K), np.zeros(K)
        for d, gt in zip(cams, gts):
            vol = np.zeros((K,) + gt.shape, np.float32)
            for k, m in d.items():
                vol[k + 1] = m
            vol[0] = t
            pred = vol.argmax(0)
            cal = gt < 255
            for i in range(K):
                P[i] += ((pred == i) & cal).sum()
                T[i] += ((gt == i) & cal).sum()
                TP[i] += ((gt == i) & (pred == i) & cal).sum()
        res.append(TP / (T + P - TP + 1e-10) * 100)
    res = np.array(res)
    return res.mean(1), res


def ref_cam_miou(pred_dir: str, gt_dir: str, names: Sequence[str], thresholds: Sequence[float],
                 K: int = 21):
    """``literal_miou`` from files, every file reloaded for every threshold (the reference
    evaluator)."""
    per_threshold = []
    for t in thresholds:
        cams = [np.load(os.path.join(pred_dir, n + ".npy"), allow_pickle=True).item()
                for n in names]
        gts = [np.asarray(Image.open(os.path.join(gt_dir, n + ".png"))) for n in names]
        per_threshold.append(literal_miou(cams, gts, [t], K)[1][0])
    res = np.array(per_threshold)
    return res.mean(1), res


# ------------------------------------------------------------------------- refinement
def literal_pairs(h: int, w: int, radius: int):
    """PSA's pairs by explicit loops: offsets, from indices, partner indices (offset-major)."""
    offs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offs.append((dy, dx))
    rf = radius - 1
    froms = [i * w + j for i in range(h - rf) for j in range(rf, w - rf)]
    tos = [(i + dy) * w + (j + dx) for dy, dx in offs
           for i in range(h - rf) for j in range(rf, w - rf)]
    return offs, np.array(froms), np.array(tos)


def literal_affinity_labels(y: np.ndarray, radius: int):
    """``(bg, fg, neg)`` (K x P float32) of one label map, pair by pair."""
    h, w = y.shape
    offs, froms, tos = literal_pairs(h, w, radius)
    P = len(froms)
    out = np.zeros((3, len(offs), P), np.float32)
    flat = y.reshape(-1)
    for k in range(len(offs)):
        for p in range(P):
            f, t = flat[froms[p]], flat[tos[k * P + p]]
            out[0, k, p] = f == t == 0
            out[1, k, p] = f == t and f not in (0, 255)
            out[2, k, p] = f != t and f != 255 and t != 255
    return out[0], out[1], out[2]


def literal_label_map(la: np.ndarray, ha: np.ndarray, stride: int = 8) -> np.ndarray:
    """The affinity label map with numpy: block sums of the zero-padded maps over stride^2,
    argmaxes, the 255 / 0 rules."""
    def pool(x):
        n, H, W = x.shape
        Hp, Wp = -(-H // stride) * stride, -(-W // stride) * stride
        z = np.zeros((n, Hp, Wp), x.dtype)
        z[:, :H, :W] = x
        return z.reshape(n, Hp // stride, stride, Wp // stride, stride).sum((2, 4)) / stride ** 2
    la, ha = pool(la), pool(ha)
    empty = np.concatenate([la, ha]).max(0) < 1e-5
    a, b = la.argmax(0), ha.argmax(0)
    y = a.copy()
    y[a == 0] = 255
    y[b == 0] = 0
    y[empty] = 255
    return y


def literal_random_walk(scores: np.ndarray, aff: np.ndarray, radius: int, beta: float,
                        logt: int) -> np.ndarray:
    """14 as the reference computes it, in numpy float64: dense matrix, elementwise power,
    column normalisation, ``logt`` squarings, pooled scores times it, bilinear upsampling
    (torch, align_corners False), crop."""
    c, H, W = scores.shape
    h, w = -(-H // 8), -(-W // 8)
    _, froms, tos = literal_pairs(h, w, radius)
    K = len(tos) // len(froms)
    M = np.eye(h * w)
    vals = aff.reshape(-1)
    for n, (f, t) in enumerate(zip(np.tile(froms, K), tos)):
        M[f, t] = M[t, f] = vals[n]
    T = M ** beta
    T = T / T.sum(0, keepdims=True)
    for _ in range(logt):
        T = T @ T
    padded = np.zeros((c, 8 * h, 8 * w))
    padded[:, :H, :W] = scores
    v = padded.reshape(c, h, 8, w, 8).mean((2, 4)).reshape(c, h * w)
    r = torch.from_numpy((v @ T).reshape(1, c, h, w))
    up = F.interpolate(r, size=(8 * h, 8 * w), mode="bilinear", align_corners=False)
    return up[0, :, :H, :W].numpy()


def literal_seg_predict(net, x: torch.Tensor, scales, flip: bool = False,
                        merge: str = "max") -> torch.Tensor:
    """Segmentation inference view by view: every (scale, flip) forward alone."""
    _, _, H, W = x.shape
    maps = []
    for s in scales:
        xs = F.interpolate(x, size=(int(H * s), int(W * s)), mode="bilinear",
                           align_corners=True)
        for fl in ((False, True) if flip else (False,)):
            logit = net(xs.flip(-1) if fl else xs)
            logit = F.interpolate(logit, size=(H, W), mode="bilinear", align_corners=False)
            maps.append(F.softmax(logit.flip(-1) if fl else logit, dim=1)[0])
    if merge == "max":
        out = torch.zeros_like(maps[0])
        for m in maps:
            out = torch.maximum(out, m)
        return out
    return torch.stack(maps).mean(0)


def literal_poly_sgd(params, grads, lrs, wds, max_step: int, momentum: float,
                     power: float = 0.9):
    """PSA's PolyOptimizer spelled out: per step, the poly lr (while t < max_step), then
    SGD with weight decay and momentum (dampening 0). ``params[g]``/``grads[t][g]`` are
    tensors of group g; returns the parameters after every step and the lrs used."""
    params = [p.clone() for p in params]
    buf = [None] * len(params)
    lr_now = list(lrs)
    history, used = [], []
    for t, gs in enumerate(grads):
        if t < max_step:
            lr_now = [lr * (1 - t / max_step) ** power for lr in lrs]
        for g, (p, d) in enumerate(zip(params, gs)):
            d = d + wds[g] * p
            buf[g] = d.clone() if buf[g] is None else momentum * buf[g] + d
            params[g] = p - lr_now[g] * buf[g]
        history.append([p.clone() for p in params])
        used.append(list(lr_now))
    return history, used


def prefix_sharing_case(net, model=None, reuse_prefix: bool = False):
    """The shared-prefix check of the tests (``tests/models/test_pcss_model.py``, and
    compiled: ``tests/models/test_compile.py``): 6 float64 images at 48 px, 4 classes, MPC
    after block 2 keeping 0.4, epoch 5, weights 1.5 / 0.7, both passes from RNG seed 11.
    ``model`` (default ``net``) runs ``pcss_losses``; ``ref_losses`` runs on ``net`` (the
    reference's full recompute; ``reuse_prefix`` goes to ``pcss_losses``). The inputs come
    from a generator of their own (the same in every call). Returns ``(losses, grads,
    ref_losses, ref_grads, same_draws)``; ``same_draws``: both consumed the same number of
    random draws."""
    from models import pcss_losses

    model = net if model is None else model
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 48, 48, dtype=torch.float64, generator=g)
    y = (torch.rand(6, 4, generator=g) > 0.5).double()
    masks = torch.rand(4, 48, 48, dtype=torch.float64, generator=g)
    perm = torch.tensor([5, 0, 3, 1, 2, 4])
    grads = lambda: {n: p.grad.clone() for n, p in net.named_parameters()  # noqa: E731
                     if p.grad is not None}
    torch.manual_seed(11)
    L = pcss_losses(model, x, y, 5, masks, perm, 1.5, 0.7, 2, 0.4, reuse_prefix=reuse_prefix)
    L["total"].backward()
    after = torch.rand(3)
    got = grads()
    net.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    ref = ref_losses(net, x, y, masks, perm, 1.5, 0.7, 2, 0.4)
    ref.pop("total").backward()
    same_draws = torch.equal(after, torch.rand(3))
    return L, got, ref, grads(), same_draws
