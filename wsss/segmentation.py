"""Multi-scale prediction and the training loss of the segmentation stage (MCTformer's
``seg/``; docs/method.md, Segmentation inference). Torch in, torch out."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def seg_predict(net, x: torch.Tensor, scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
                flip: bool = False, merge: str = "max") -> torch.Tensor:
    """Class probabilities C x H x W of one normalised image ``x`` (1 x 3 x H x W).

    Per scale s (MCTformer's ``seg/infer_seg.py``): ``x`` resized to (int(H s), int(W s))
    bilinear with align_corners True, logits, upsampled to H x W (bilinear, align_corners
    False), softmax over classes. ``merge="max"`` (the reference) takes the elementwise
    maximum over scales (from 0); ``merge="mean"`` their mean. ``flip`` (ours) also runs
    each scale on the horizontally flipped image - in one batch with the unflipped one - and
    flips its upsampled logits back before the softmax. The caller puts ``net`` in eval
    mode."""
    if merge not in ("max", "mean"):
        raise ValueError(f"merge must be 'max' or 'mean', not {merge!r}")
    _, _, H, W = x.shape
    out = None
    count = 0
    for s in scales:
        xs = F.interpolate(x, size=(int(H * s), int(W * s)), mode="bilinear",
                           align_corners=True)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        logits = F.interpolate(net(xs), size=(H, W), mode="bilinear", align_corners=False)
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        probs = F.softmax(logits, dim=1)
        for p in probs:
            count += 1
            if out is None:
                out = p.clamp(min=0) if merge == "max" else p.clone()
            elif merge == "max":
                out = torch.maximum(out, p)
            else:
                out = out + p
    return out if merge == "max" else out / count


def seg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
             ) -> torch.Tensor:
    """The loss of MCTformer's ``seg/train_seg.py``: ``logits`` (B x C x h x w) upsampled
    bilinear (align_corners False) to the target's size (B x S x S, int64), cross-entropy
    ignoring ``ignore_index``, mean over the counted pixels."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                           align_corners=False)
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)
