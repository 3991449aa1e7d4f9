"""The affinity-training mode of the data layer (docs/method.md, Affinity labels): an
image with its two CRF score dicts (low and high alpha, PSA format) -> a crop and its label map.

Per item, in the reference's order (MCTformer's ``psa/train_aff.py``, ``voc12/data.py``):
read the RGB image and both dicts; colour jitter on the image only (torchvision ``ColorJitter(0.3,
0.3, 0.3, 0.1)``); one random crop window of side S for image and scores, filled with 0
outside the image (origins drawn with Python's ``random.randrange``, width first, then
height); normalise the crop; with probability 1/2 (``random.getrandbits(1)``) flip image and
scores together; scores pooled by means over stride x stride blocks (8 x 8 for the reference
backbones) into the label map ``y`` (0 background, 1..n the dict's channels, 255 ignored;
``wsss.affinity.affinity_label_map``). Items are ``(image 3 x S x S float32, y (S/stride) x
(S/stride) int64)``; the pair labels (``wsss.affinity.affinity_labels``) are made from ``y``
batch-wise in the training loop.

The score dicts (PSA's ``.npy`` or the compact ``.sdz``) are read through
``wsss.scorefile.load_score_dict`` (no code runs from them); a
missing dict for a listed id is reported up front, with the command that writes them.
"""
from __future__ import annotations

import os
import random
from typing import Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms

from datasets.layout import Layout
from datasets.classification import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, load_image
from wsss.affinity import affinity_label_map, crop_window
from utils.errors import UserError, describe_missing
from wsss.scorefile import load_score_dict, score_file

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).reshape(3, 1, 1)
_STD = torch.tensor(IMAGENET_DEFAULT_STD).reshape(3, 1, 1)


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """uint8-valued 3 x H x W -> float32 RGB/255, minus the ImageNet mean, over its std."""
    return (rgb.float() / 255.0 - _MEAN) / _STD


def read_score_dict(path: str) -> torch.Tensor:
    """A PSA score dict ``{0: background, k + 1: class k}`` (either file format) as a
    (n+1) x H x W float32 tensor, channels in ascending key order."""
    d = load_score_dict(path)
    return torch.from_numpy(np.stack([np.asarray(d[k], np.float32) for k in sorted(d)]))


class AffinityDataset(Dataset):
    """Images of ``ids`` with their score dicts in ``la_dir`` / ``ha_dir`` (``<id>.npy`` or
    ``<id>.sdz``).

    ``crop`` is the window side S (448 in the reference; a multiple of ``stride``, the
    network's output stride). Randomness comes from Python's ``random`` (crop, flip) and
    torch (jitter), as in the reference; workers are seeded by the DataLoader."""

    def __init__(self, lay: Layout, ids: Sequence[str], la_dir: str, ha_dir: str,
                 crop: int = 448, stride: int = 8, jitter: bool = True):
        if crop % stride:
            raise UserError(f"--crop_size {crop} is not a multiple of the network's stride "
                            f"{stride}")
        self.layout, self.ids, self.crop, self.stride = lay, list(ids), crop, stride
        self.la = [score_file(la_dir, i) for i in self.ids]
        self.ha = [score_file(ha_dir, i) for i in self.ids]
        for what, paths, d in (("low-alpha", self.la, la_dir), ("high-alpha", self.ha, ha_dir)):
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise UserError(
                    f"{describe_missing(missing, f'{what} CRF score dicts')} (of {len(paths)} "
                    f"listed) in {d}. Write them for this list with `infer_PCSS.py --name N "
                    f"--load_epo E --crf --alphas LOW HIGH --val_list LIST`, or point "
                    f"--la_crf_dir / --ha_crf_dir at the right folders.")
        self.images = [lay.image_path(i) for i in self.ids]
        missing = [p for p in self.images if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{describe_missing(missing, 'image files')}. Check --data-path.")
        self.jitter = transforms.ColorJitter(0.3, 0.3, 0.3, 0.1) if jitter else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.images[index])
        la, ha = read_score_dict(self.la[index]), read_score_dict(self.ha[index])
        W, H = image.size
        if la.shape[1:] != (H, W) or ha.shape != la.shape:
            raise UserError(f"{self.la[index]} / {self.ha[index]}: score maps of shape "
                            f"{tuple(la.shape)} / {tuple(ha.shape)} do not fit the "
                            f"{H}x{W} image {self.images[index]} (from another dataset or "
                            f"list?). Rewrite them with infer_PCSS.py --crf.")
        if self.jitter is not None:
            image = self.jitter(image)
        rgb = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)
        S = self.crop
        left = random.randrange(W - S + 1) if W > S else -random.randrange(S - W + 1)
        top = random.randrange(H - S + 1) if H > S else -random.randrange(S - H + 1)
        x = normalise(crop_window(rgb, S, top, left, 0))
        la, ha = crop_window(la, S, top, left, 0.0), crop_window(ha, S, top, left, 0.0)
        if random.getrandbits(1):
            x, la, ha = x.flip(-1), la.flip(-1), ha.flip(-1)
        return x.contiguous(), affinity_label_map(la, ha, stride=self.stride)

