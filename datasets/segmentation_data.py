"""The segmentation modes of the data layer (docs/method.md, Segmentation training): an
image with its pseudo mask for training, and native-size images for prediction.

Training follows the reference (MCTformer's ``seg/train_seg.py``, ``seg/tool/exutils.py``):

- order: ``SegBatchSampler`` - copies of the list, each shuffled with numpy, concatenated and
  cut into consecutive batches (an epoch is floor(len / batch) of them);
- per batch one scale ``s ~ U(0.7, 1.3)`` (numpy); per image a flip if ``U(0, 1) > 0.5``;
  the image resized by ``cv2.resize`` (bilinear) to int(W s) x int(H s), the mask with
  nearest; both flipped; the image normalised; then a crop of side S: a side longer than S
  gets origin ``int(U(0, 1) * (side - S))`` (Python ``random.uniform``, height then width),
  any other side origin 0 and padding at the end - 0 for the normalised image (the mean
  colour) and, the reference's quirk, 0 = background for the mask (``mask_fill=255``
  ignores the padding instead).

The sampler hands the dataset ``(index, scale)`` pairs, so the per-batch scale reaches every
worker. Items are ``(image 3 x S x S float32, mask S x S int64)``.
"""
from __future__ import annotations

import os
import random
from typing import Iterator, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datasets.layout import Layout
from datasets.classification import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, load_image
from utils.errors import UserError, describe_missing
from utils.io import read_label_png

_MEAN = np.asarray(IMAGENET_DEFAULT_MEAN, np.float32)
_STD = np.asarray(IMAGENET_DEFAULT_STD, np.float32)


def normalise_hwc(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB (0..255, any dtype) -> float32 normalised H x W x 3."""
    return (np.asarray(rgb, np.float32) / 255.0 - _MEAN) / _STD


class SegBatchSampler(Sampler[List[Tuple[int, float]]]):
    """Batches of ``(index, scale)`` in the reference's order: ``copies`` shuffled copies
    of ``range(n)`` back to back, cut into batches of ``batch_size``; one scale drawn per
    batch from ``U(*scale_range)``. ``epochs * (n // batch_size)`` batches in all, drawn
    from numpy's global RNG when iterated (seed it for a reproducible run);
    ``start_batch`` skips the batches a resumed run has done (their draws included)."""

    def __init__(self, n: int, batch_size: int, epochs: int,
                 scale_range: Tuple[float, float] = (0.7, 1.3), copies: int = 200,
                 start_batch: int = 0):
        if n < batch_size:
            raise UserError(f"--batch_size {batch_size} is more than the {n} training images")
        self.n, self.batch_size, self.epochs = n, batch_size, epochs
        self.scale_range, self.copies, self.start_batch = scale_range, copies, start_batch
        self.steps_per_epoch = n // batch_size

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[List[Tuple[int, float]]]:
        total = self.epochs * self.steps_per_epoch * self.batch_size
        copies = max(self.copies, -(-total // self.n))
        order = []
        for _ in range(copies):
            perm = np.arange(self.n)
            np.random.shuffle(perm)
            order.append(perm)
        order = np.concatenate(order)
        for b in range(self.epochs * self.steps_per_epoch):
            scale = float(np.random.uniform(*self.scale_range))
            if b >= self.start_batch:
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(int(i), scale) for i in idx]


def crop_pad(image: np.ndarray, mask: np.ndarray, size: int, mask_fill: int
             ) -> Tuple[np.ndarray, np.ndarray]:
    """The reference's random crop: a side longer than ``size`` gets a random origin
    (``random.uniform``, height then width), a shorter one origin 0 and padding at the end
    (0 for the normalised image, ``mask_fill`` for the mask)."""
    H, W = mask.shape
    top = int(random.uniform(0, 1) * (H - size)) if H > size else 0
    left = int(random.uniform(0, 1) * (W - size)) if W > size else 0
    img = np.zeros((size, size, 3), np.float32)
    lab = np.full((size, size), mask_fill, np.int64)
    h, w = min(size, H), min(size, W)
    img[:h, :w] = image[top:top + h, left:left + w]
    lab[:h, :w] = mask[top:top + h, left:left + w]
    return img, lab


class SegTrainDataset(Dataset):
    """Images of ``ids`` with their pseudo masks ``mask_dir/<id>.png`` (index PNGs);
    indexed by ``(index, scale)`` pairs from ``SegBatchSampler``."""

    def __init__(self, lay: Layout, ids: Sequence[str], mask_dir: str, crop: int = 321,
                 mask_fill: int = 0):
        self.layout, self.ids, self.crop, self.mask_fill = lay, list(ids), crop, mask_fill
        self.images = [lay.image_path(i) for i in self.ids]
        self.masks = [os.path.join(mask_dir, i + ".png") for i in self.ids]
        for what, paths, hint in (
                ("pseudo masks", self.masks, f"in {mask_dir}: write them with infer_aff.py "
                                             f"for this list, or point --seg_pgt_path at them"),
                ("image files", self.images, "check --data-path")):
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise UserError(f"{describe_missing(missing, what)} (of {len(paths)} listed) "
                                f"{hint}.")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: Tuple[int, float]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, scale = item
        image = np.asarray(load_image(self.images[index]), np.float32)
        try:
            mask = read_label_png(self.masks[index])
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read pseudo mask {self.masks[index]} ({e})") from None
        H, W = mask.shape
        if image.shape[:2] != (H, W):
            raise UserError(f"{self.masks[index]} is {H}x{W} but its image "
                            f"{self.images[index]} is {image.shape[0]}x{image.shape[1]}: the "
                            f"masks belong to another dataset or list")
        classes = mask[mask != 255]
        if classes.size and int(classes.max()) > self.layout.num_classes:
            raise UserError(f"{self.masks[index]} has class {int(classes.max())} but "
                            f"{self.layout.data_set} has {self.layout.num_classes} classes + "
                            f"background: the masks belong to another dataset")
        size = (int(W * scale), int(H * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if np.random.uniform() > 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        img, lab = crop_pad(normalise_hwc(image), mask, self.crop, self.mask_fill)
        return torch.from_numpy(img.transpose(2, 0, 1).copy()), torch.from_numpy(lab)
