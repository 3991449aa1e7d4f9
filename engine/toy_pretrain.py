"""The loop of the toy set's self-supervised pre-training (``pretrain_toy.py``), the demo's
stand-in for ImageNet DeiT weights (``models.pretrain``)."""
from __future__ import annotations

import torch
from tqdm import tqdm

from models.pretrain import corrupt


def pretrain_one_epoch(model, loader, optimizer, device: torch.device, mask_ratio: float = 0.4,
                       noise_std: float = 1.0, epoch: int = 0, progress: bool = True) -> float:
    """One epoch of the toy set's self-supervised stand-in for ImageNet pre-training
    (``models.pretrain.ColourDenoiser``); returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"pretrain {epoch}", unit="batch", dynamic_ncols=True,
               disable=not progress)
    for images, _ in bar:
        images = images.to(device, non_blocking=True)
        loss = model.loss(images, corrupt(images, mask_ratio, noise_std))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * images.shape[0]
        count += images.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)
