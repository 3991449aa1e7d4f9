"""The image-level-label dataset shared by VOC, COCO and the toy set, and its transforms.

``build_dataset(data_set, data_path, list_path, mode, input_size, augment)`` is the entry
point. Paths come from ``datasets.layout``; labels from ``cls_labels.npy``, read once. Every
problem that can be seen up front (folder, list, labels, image files) is reported in the
constructor as a ``UserError`` that says how to fix it, before any training starts.

Modes and items:

- ``"train"``: ``(image 3 x S x S, label C)``, augmented. ``augment="timm"`` is the reference
  transform (DeiT's, timm ``create_transform``): RandomResizedCrop S with scale (0.6, 1.2),
  bicubic, horizontal flip 0.5, RandAugment ``rand-m9-mstd0.5-inc1``, no colour jitter, no
  random erasing (posterize to 0 bits gives a black image, as with the reference's Pillow,
  not an error).
  ``augment="light"`` resizes to S x S, flips horizontally and shifts by up to S/8 (reflect
  padding), with no colour change: for the toy set, whose classes are colours.
- ``"fim"``: ``(image 3 x S x S, label C)``, resized (bicubic), no augmentation.
- ``"infer"``: ``(image 3 x H x W, label C, image id)`` at native resolution. Batch with
  ``batch_size=1`` and ``collate_single``.

Images are float32, normalised with the ImageNet mean and std; labels float32 (all zeros is
a legal label: an image with background only).
"""
from __future__ import annotations

import functools
import os
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.labels import label_array, remake_hint
from datasets.layout import Layout, label_key, layout
from utils.errors import UserError, describe_missing
from utils.lists import read_id_list

MODES = ("train", "fim", "infer")
AUGMENTS = ("timm", "light")
REFERENCE_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# timm's IMAGENET_DEFAULT_MEAN / _STD (timm.data.constants), written out: importing timm
# costs 2.5 s, which every inference script would pay at start for two tuples
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def _posterize_zero_bits_black(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, with the result of Pillow < 11 for 0 bits: a black image.

    RandAugment's PosterizeIncreasing keeps ``4 - int(0.4 * magnitude)`` bits, 0 at magnitude
    10, which ``m9-mstd0.5`` reaches (magnitude noise clipped at 10); Pillow >= 11 raises a
    ``ValueError`` there, which would crash a run now and then.
    """
    from timm.data.auto_augment import posterize
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def to_normalised_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision's ``Compose([ToTensor(), Normalize(IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD)])`` of an RGB image, the same operations in the same order (the
    same bits), without importing torchvision: it pulls in torch._dynamo, 1-1.5 s at the
    start of every inference process."""
    x = torch.from_numpy(np.array(img, np.uint8, copy=True))
    x = x.view(img.size[1], img.size[0], 3).permute(2, 0, 1).contiguous()
    x = x.to(dtype=torch.get_default_dtype()).div(255)
    mean = torch.as_tensor(IMAGENET_DEFAULT_MEAN, dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_DEFAULT_STD, dtype=x.dtype).view(-1, 1, 1)
    return x.sub_(mean).div_(std)


def build_transform(mode: str, input_size: int = 224, augment: str = "timm") -> Callable:
    """The PIL image -> normalised tensor transform of ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, not {augment!r}")
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, not {input_size}")
    if mode == "train" and augment == "timm":
        from timm.data import create_transform        # only here: timm takes 2.5 s to import
        from timm.data.auto_augment import RandAugment, posterize
        transform = create_transform(input_size=input_size, is_training=True,
                                     scale=(0.6, 1.2), hflip=0.5, color_jitter=None,
                                     auto_augment=REFERENCE_AUTO_AUGMENT,
                                     interpolation="bicubic", re_prob=0.0,
                                     mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
        for step in transform.transforms:
            for op in step.ops if isinstance(step, RandAugment) else ():
                if op.aug_fn is posterize:
                    op.aug_fn = _posterize_zero_bits_black
        return transform
    if mode == "infer":
        return to_normalised_tensor
    from torchvision import transforms
    bicubic = transforms.InterpolationMode.BICUBIC
    steps = {
        "train": [transforms.Resize((input_size, input_size), interpolation=bicubic),
                  transforms.RandomHorizontalFlip(),
                  transforms.RandomCrop(input_size, padding=input_size // 8,
                                        padding_mode="reflect")],
        "fim": [transforms.Resize((input_size, input_size), interpolation=bicubic)],
    }[mode]
    return transforms.Compose(steps + [transforms.ToTensor(),
                                       transforms.Normalize(IMAGENET_DEFAULT_MEAN,
                                                            IMAGENET_DEFAULT_STD)])


def load_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB, fully decoded; a ``UserError`` naming the file when it
    cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({e}). Replace the file (re-extract or "
                        f"re-download the dataset), or remove its id from the list.") from None


class WSSSDataset(Dataset):
    """Images of an id list with their image-level labels, for any ``Layout``.

    Attributes: ``layout``, ``ids`` (N ids as listed), ``labels`` (N x C float32 numpy),
    ``transform``, ``return_id``. The constructor checks that every id has a label and an
    image file and raises a ``UserError`` otherwise.
    """

    def __init__(self, lay: Layout, ids: Sequence[str], transform: Callable,
                 return_id: bool = False, require_labels: bool = True):
        self.layout = lay
        self.ids = list(ids)
        if require_labels:
            self.labels = label_array(lay.label_file, self.ids, lay.num_classes,
                                      remake_hint(lay.data_set, lay.root),
                                      key=functools.partial(label_key, lay.data_set))
        else:   # e.g. VOC test images, which have no image-level labels
            self.labels = np.zeros((len(self.ids), lay.num_classes), np.float32)
        self.paths = [lay.image_path(i) for i in self.ids]
        missing = [p for p in self.paths if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{describe_missing(missing, 'image files')} (of {len(self.paths)} "
                            f"listed). Check --data-path {lay.root} and that the dataset is "
                            f"fully extracted, or use a list of the images you have.")
        self.transform = transform
        self.return_id = return_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image = self.transform(load_image(self.paths[index]))
        label = torch.tensor(self.labels[index])
        return (image, label, self.ids[index]) if self.return_id else (image, label)


def build_dataset(data_set: str, data_path: str, list_path: str, mode: str,
                  input_size: int = 224, augment: str = "timm") -> Dataset:
    """The ``WSSSDataset`` of the ids in ``list_path`` for ``mode`` ("train", "fim" or
    "infer"; see the module docstring). ``augment`` ("timm" or "light") matters in "train"
    mode only. Raises ``UserError`` for a missing folder, list, label or image file."""
    transform = build_transform(mode, input_size, augment)
    lay = layout(data_set, data_path)
    return WSSSDataset(lay, read_id_list(list_path), transform, return_id=mode == "infer")


def collate_single(batch: List[Tuple[torch.Tensor, torch.Tensor, str]]
                   ) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Collate for "infer" items at batch size 1 (native sizes differ): the item itself,
    ``(image 3 x H x W, label C, id)``."""
    (item,) = batch
    return item
