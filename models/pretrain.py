"""A small self-supervised objective that stands in for ImageNet pre-training on the toy set.

Real PCSS runs start from ImageNet DeiT weights, whose patch-to-patch attention is already
local and semantic; trained from scratch on a few thousand toy images, the attention spreads
class evidence over the whole image and the refined CAMs are no better than chance. This
objective teaches the blocks local appearance first: 40% of the patches are zeroed, Gaussian
noise is added everywhere, and a linear decoder regresses every patch's grid of average
colours (4 x 4 cells) from the patch tokens. The result is saved in DeiT format (one class
token) and loaded through ``init_from_deit`` exactly like the real weights.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.mct_vit import MCTViT


def patch_colour_targets(images: torch.Tensor, patch: int = 16, cells: int = 4) -> torch.Tensor:
    """B x P x (3 * cells^2): each patch's average colour over a cells x cells grid."""
    B, _, H, W = images.shape
    h, w = H // patch, W // patch
    pooled = F.avg_pool2d(images[:, :, :h * patch, :w * patch], patch // cells)  # B,3,h*c,w*c
    pooled = pooled.reshape(B, 3, h, cells, w, cells).permute(0, 2, 4, 1, 3, 5)
    return pooled.reshape(B, h * w, 3 * cells * cells)


def corrupt(images: torch.Tensor, mask_ratio: float = 0.4, noise_std: float = 1.0,
            patch: int = 16, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero a random ``mask_ratio`` of the patches and add Gaussian noise everywhere."""
    B, _, H, W = images.shape
    keep = (torch.rand(B, 1, H // patch, W // patch, generator=generator) >= mask_ratio)
    keep = F.interpolate(keep.float(), scale_factor=patch, mode="nearest").to(images)
    noise = torch.randn(images.shape, generator=generator).to(images)
    return images * keep + noise_std * noise


class ColourDenoiser(nn.Module):
    """An ``MCTViT`` (one class token) with a linear decoder on its patch tokens."""

    def __init__(self, net: MCTViT, cells: int = 4):
        super().__init__()
        self.net = net
        self.cells = cells
        self.decoder = nn.Linear(net.embed_dim, 3 * cells * cells)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        state = self.net.forward_features(images)
        return self.decoder(state.tokens[:, self.net.num_classes:])

    def loss(self, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        target = patch_colour_targets(clean, self.net.patch_size, self.cells)
        return F.mse_loss(self(corrupted), target)

    def deit_state_dict(self) -> Dict[str, torch.Tensor]:
        """The backbone's weights in the ImageNet DeiT layout ``{"model": ...}``."""
        return {"model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}
