"""The loops of the refinement stage (PSA, as in MCTformer's ``psa/``): ``affinity_step``, the
training step of AffinityNet on the CRF-confident labels (``engine.training`` runs it), and
``random_walk_masks``, which spreads each image's seeds along the learned affinities into a
pseudo mask; ``train_aff.py`` and ``infer_aff.py`` wire them together."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.training import Step
from wsss.affinity import (affinity_labels, affinity_loss, random_walk, rw_background,
                            sparse_affinity)
from wsss.scorefile import load_cam_dict
from wsss.scorefile import score_file
from utils.runtime import autocast_context


def affinity_step(model, device: torch.device, radius: int, amp: str = "none") -> Step:
    """The training step of AffinityNet (for ``engine.training.train_epoch``; docs/method.md,
    Affinity loss): a batch ``(images, label maps)`` -> the terms ``bg``, ``fg``, ``neg`` and
    ``total`` of ``affinity_loss`` on the labels' pairs within ``radius``."""
    def step(batch) -> Dict[str, torch.Tensor]:
        images, y = batch
        images = images.to(device, non_blocking=True)
        bg, fg, neg = affinity_labels(y.to(device, non_blocking=True), radius)
        with autocast_context(device, amp):
            aff = model(images)
        return affinity_loss(aff.float(), bg, fg, neg)
    return step


def pad_to_stride(image: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad a normalised ... x H x W image at the bottom and right to multiples of
    ``stride`` (0 in normalised units, as PSA's ``infer_aff.py``)."""
    H, W = image.shape[-2:]
    return F.pad(image, (0, -W % stride, 0, -H % stride))


@torch.no_grad()
def random_walk_masks(net, loader, cam_dir: str, write: Callable[[str, np.ndarray], None],
                      device: torch.device, radius: int = 5, beta: float = 8, logt: int = 6,
                      bg: str = "threshold", bg_thr: float = 0.39, alpha: float = 16,
                      method: str = "auto", amp: str = "none", progress: bool = True) -> int:
    """Pseudo masks of every ``(image, label, id)`` of ``loader`` (native sizes, batch 1;
    docs/method.md, Random walk): AffinityNet on the image padded to its stride
    (``net.stride``), the transition of its affinities, the walk of background + the seed
    dict's classes (``cam_dir/<id>.npy`` or ``.sdz``); the label map (uint8: 0 background,
    k + 1 class k) goes to ``write(id, labels)``. The walk runs in float32 (or the
    network's float64). Returns the count."""
    net.eval()
    n = 0
    for image, _, image_id in tqdm(loader, desc="random walk", unit="img", dynamic_ncols=True,
                                   disable=not progress):
        cams = load_cam_dict(score_file(cam_dir, image_id))
        H, W = image.shape[-2:]
        stride = net.stride
        x = pad_to_stride(image[None].to(device, non_blocking=True), stride)
        with autocast_context(device, amp):
            aff = net(x)[0]
        dtype = torch.float64 if aff.dtype == torch.float64 else torch.float32
        keys = sorted(cams)
        if keys:
            v = torch.from_numpy(np.stack([cams[k] for k in keys])).to(device, dtype)
            if v.shape[-2:] != (H, W):
                from utils.errors import UserError
                raise UserError(f"{score_file(cam_dir, image_id)} holds {tuple(v.shape[-2:])} maps "
                                f"for a {H}x{W} image: the seeds belong to another dataset")
        else:
            v = torch.zeros(0, H, W, dtype=dtype, device=device)
        back = rw_background(v, mode=bg, threshold=bg_thr, alpha=alpha)
        M = sparse_affinity(aff.to(dtype), x.shape[-2] // stride, x.shape[-1] // stride, radius)
        maps = random_walk(torch.cat([back[None], v]), M, beta=beta, logt=logt, method=method,
                           stride=stride)
        lut = np.array([0] + [k + 1 for k in keys], np.uint8)
        write(image_id, lut[maps.argmax(0).cpu().numpy()])
        n += 1
    return n
