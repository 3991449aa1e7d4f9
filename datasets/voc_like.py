"""A small synthetic folder in the exact shape of PASCAL VOC 2012 + SBD, for rehearsing the
README's VOC commands without the 2 GB download (``bench/rehearsal.py``): JPEG images at
real VOC sizes (500x375, 375x500, 500x333, 486x500, 281x500, ...), the 20 VOC classes,
``Annotations/<id>.xml`` in the devkit's format, palette masks with 255 object borders in
``SegmentationClass/`` (train and val) and ``SegmentationClassAug/`` (train_aug and val, as
SBD), ``ImageSets/Segmentation/{train,val,test}.txt`` and test images without masks.
``python -m datasets.prepare --data-set VOC12`` then derives ``train_aug.txt`` and
``cls_labels.npy`` from it exactly as from the real folder. Nothing here is learnable:
the objects are coloured ellipses.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from datasets.layout import VOC_CLASSES
from datasets.toy import _inner_boundary
from datasets.labels import write_id_list
from utils.vis import save_label_png

# (width, height) of real VOC 2012 images, the common ones first
VOC_SIZES = ((500, 375), (375, 500), (500, 333), (486, 500), (281, 500), (500, 400),
             (334, 500), (500, 281))


def voc_like_sample(rng: np.random.Generator, width: int, height: int
                    ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, Tuple[int, ...]]]]:
    """One image (H x W x 3 uint8), its mask (0 background, k + 1 class k, 255 borders) and
    its objects ``[(class index, (xmin, ymin, xmax, ymax)), ...]`` (1-based VOC boxes)."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = rng.uniform(60, 190, 3) + rng.normal(0, 12, (height, width, 3))
    label = np.zeros((height, width), np.uint8)
    objects = []
    for cls in rng.choice(len(VOC_CLASSES), int(rng.integers(1, 3)), replace=False):
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        rx, ry = rng.uniform(0.12, 0.3) * width, rng.uniform(0.12, 0.3) * height
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        label[inside] = cls + 1
        image[inside] = rng.uniform(0, 255, 3) + rng.normal(0, 20, (int(inside.sum()), 3))
        ys, xs = np.nonzero(inside)
        objects.append((int(cls), (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1,
                                   int(ys.max()) + 1)))
    mask = np.where(_inner_boundary(label), 255, label).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), mask, objects


def annotation_xml(image_id: str, width: int, height: int,
                   objects: Sequence[Tuple[int, Tuple[int, ...]]]) -> str:
    """The devkit's ``Annotations/<id>.xml`` of an image (objects with their boxes)."""
    parts = [f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image_id}.jpg</filename>"
             f"\n\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t"
             f"<depth>3</depth>\n\t</size>\n\t<segmented>1</segmented>"]
    for cls, (x0, y0, x1, y1) in objects:
        parts.append(f"\t<object>\n\t\t<name>{VOC_CLASSES[cls]}</name>\n\t\t<pose>Unspecified"
                     f"</pose>\n\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t"
                     f"<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n\t\t\t<xmax>"
                     f"{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>")
    return "\n".join(parts) + "\n</annotation>\n"


def make_voc_like(out: str, splits: Dict[str, int], seed: int = 0, scale: float = 1.0
                  ) -> Dict[str, List[str]]:
    """Write a VOC2012-shaped folder to ``out`` with ``splits["train"]`` train ids (masks in
    both mask folders), ``splits["aug"]`` further SBD-only ids (``SegmentationClassAug``
    alone), ``splits["val"]`` val ids and ``splits["test"]`` test images (no mask, no
    annotation). Image sizes cycle through ``VOC_SIZES`` (times ``scale``). Returns the ids
    of each split."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug",
                os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    ids: Dict[str, List[str]] = {}
    n = 0
    for split in ("train", "aug", "val", "test"):
        ids[split] = []
        for _ in range(splits.get(split, 0)):
            image_id = f"{2007 + n % 5}_{n:06d}"
            width, height = (round(v * scale) for v in VOC_SIZES[n % len(VOC_SIZES)])
            n += 1
            image, mask, objects = voc_like_sample(rng, width, height)
            Image.fromarray(image).save(os.path.join(out, "JPEGImages", image_id + ".jpg"),
                                        quality=90)
            ids[split].append(image_id)
            if split == "test":
                continue
            with open(os.path.join(out, "Annotations", image_id + ".xml"), "w") as f:
                f.write(annotation_xml(image_id, width, height, objects))
            folders = ["SegmentationClassAug"] + (["SegmentationClass"] if split != "aug" else [])
            for sub in folders:
                save_label_png(os.path.join(out, sub, image_id + ".png"), mask)
    seg = os.path.join(out, "ImageSets", "Segmentation")
    for split in ("train", "val", "test"):
        write_id_list(os.path.join(seg, split + ".txt"), ids[split])
    return ids
