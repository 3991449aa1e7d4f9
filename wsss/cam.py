"""CAM helpers (docs/method.md, CAM inference): ``max_norm`` and ``cam_dict``. Tensors in,
tensors out."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def max_norm(t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-map min-max normalisation over the last two (spatial) dims:
    ``relu(relu(t) - min - eps) / (max - min + eps)``."""
    t = F.relu(t)
    flat = t.flatten(-2)
    mx = flat.max(-1).values[..., None, None]
    mn = flat.min(-1).values[..., None, None]
    return F.relu(t - mn - eps) / (mx - mn + eps)


def _flip_rcams(net, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                size, n_layers: int) -> torch.Tensor:
    """Label-weighted ``rcams`` of ``classes`` (``idx``) for the images and their flips
    (flipped back), upsampled to ``size`` (bilinear) and summed; not normalised. The two
    views run one after the other: on a CPU that is faster than one batch of two
    (bench/README.md), and it needs half the memory."""
    B = images.shape[0]
    views = []
    for flip in (False, True):
        r = net.rcams(images.flip(-1) if flip else images, n_layers=n_layers)
        r = F.interpolate(r[:, idx], size=size, mode="bilinear", align_corners=False)
        views.append(r.flip(-1) if flip else r)
    y = labels.to(views[0].dtype).reshape(B, -1)[:, idx].reshape(B, -1, 1, 1)
    return views[0] * y + views[1] * y


@torch.no_grad()
def cam_maps(net, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
             n_layers: int = 12, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Seeds of ``classes`` for a batch of equally sized images (B x K x H x W).

    ``rcams`` of the image and of its horizontal flip (flipped back), upsampled to the
    image size (bilinear), weighted by the label, summed, then ``max_norm``. Only
    ``classes`` are upsampled (the others are 0).
    Multi-scale: for each of ``scales`` the image is resized (bilinear) by that factor and
    its maps are upsampled straight to H x W; the per-scale maps are averaged before
    ``max_norm``. The default ``(1.0,)`` is the reference's single-scale seed.
    """
    B, _, H, W = images.shape
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=images.device)
    total = 0
    for s in scales:
        x = images if s == 1.0 else F.interpolate(
            images, size=(round(H * s), round(W * s)), mode="bilinear", align_corners=False)
        total = total + _flip_rcams(net, x, labels, idx, (H, W), n_layers)
    return max_norm(total / len(scales))


def label_classes(label: torch.Tensor) -> list:
    """The class indices with ``label > 1e-5`` (those that get a map)."""
    return [int(k) for k in torch.nonzero(label.reshape(-1) > 1e-5).flatten()]


@torch.no_grad()
def cam_dict(net, image: torch.Tensor, label: torch.Tensor, n_layers: int = 12,
             scales: Sequence[float] = (1.0,)) -> Dict[int, np.ndarray]:
    """``{class index: H x W map}`` for one 1 x 3 x H x W image and its C-vector label
    (``scales``: see ``cam_maps``)."""
    classes = label_classes(label)
    if not classes:
        return {}
    maps = cam_maps(net, image, label.reshape(1, -1).to(image.device), classes, n_layers,
                    scales)[0]
    if maps.dtype in (torch.float16, torch.bfloat16):  # under autocast
        maps = maps.float()
    maps = maps.cpu().numpy()
    return {k: maps[i] for i, k in enumerate(classes)}
