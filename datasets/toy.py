"""A synthetic segmentation set in the VOC layout, for the CPU demo and the tests.

    python -m datasets.toy --out data/TOY --num-images 1000 --seed 0 [--size 96] [--shortcut]

Writes ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (VOC palette PNGs: 0
background, k = class k-1, 255 a 1-pixel boundary on the inside of every object outline),
``ImageSets/Segmentation/{train,val}.txt`` (the last ``val_fraction`` of the ids are val) and
``cls_labels.npy`` (read from the masks, so labels and masks always agree).

Classes (``datasets.layout.TOY_CLASSES``): red, green, blue and yellow are each a hue family
(with jitter) AND a stripe period (4, 6, 9, 13.5 pixels, with jitter, random orientation and
phase), so a class can be recognised from local appearance. Every image has one object, or
two of different classes: smooth random blobs covering 15-50% of the image each, on a quiet
background of low-contrast grey noise.

``shortcut=True`` plants a frequency shortcut: in half the images the background carries, in
grey and at low contrast, the stripes of a class present in the image, so that a classifier
can score that class from context texture alone (colour stays a true cue of the object).

Determinism: image i is drawn from its own generator seeded with ``(seed, i)`` and encoded
with fixed settings (JPEG quality 95, no chroma subsampling), so the same arguments give
byte-identical files on a given Pillow / libjpeg build. 1,000 images take a few seconds.
Files of an earlier, larger set in ``out`` are not removed; the lists say what the set is.
"""
from __future__ import annotations

import argparse
import colorsys
import os
import time
from typing import Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.labels import labels_from_mask, save_label_dict, write_id_list
from datasets.layout import TOY_CLASSES, Layout, layout
from utils.args import parse_args
from utils.errors import UserError, run_main
from utils.vis import save_label_png

HUES = (0.0, 120 / 360, 225 / 360, 55 / 360)    # red, green, blue, yellow
PERIODS = (4.0, 6.0, 9.0, 13.5)                 # stripe period in pixels, per class
HUE_JITTER = 0.03                               # +-11 degrees
PERIOD_JITTER = 0.08                            # +-8%: the class bands stay apart
SHORTCUT_RATE = 0.5
MIN_VISIBLE = 0.08                              # least visible share of each object
JPEG_QUALITY = 95


def _coords(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates in [0, 1) of a size x size grid (float32)."""
    t = np.arange(size, dtype=np.float32) / size
    return t[:, None], t[None, :]


def _smooth_noise(rng: np.random.Generator, size: int, waves: int = 6) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise made of a few low-frequency plane waves."""
    y, x = _coords(size)
    f = rng.uniform(-2.5, 2.5, (waves, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, waves).astype(np.float32)
    out = sum(np.cos(2 * np.pi * (fy * y + fx * x) + p) for (fy, fx), p in zip(f, phase))
    return out * np.float32(np.sqrt(2 / waves))


def _stripes(rng: np.random.Generator, size: int, cls: int) -> np.ndarray:
    """Sinusoidal stripes in [-1, 1] with the (jittered) period of class ``cls``, a random
    orientation and phase."""
    y, x = _coords(size)
    period = PERIODS[cls] * rng.uniform(1 - PERIOD_JITTER, 1 + PERIOD_JITTER)
    theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    cycles = size / period
    return np.sin(2 * np.pi * cycles * (np.cos(theta) * x + np.sin(theta) * y) + phase)


def _blob(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    """A smooth random blob (boolean mask) covering exactly ``area`` of the image: a
    sublevel set of an elliptical distance perturbed by smooth noise."""
    y, x = _coords(size)
    cy, cx = rng.uniform(0.25, 0.75, 2)
    theta = rng.uniform(0, np.pi)
    ry, rx = rng.uniform(0.7, 1.4, 2)
    u = np.cos(theta) * (x - cx) + np.sin(theta) * (y - cy)
    v = -np.sin(theta) * (x - cx) + np.cos(theta) * (y - cy)
    field = np.sqrt((u / rx) ** 2 + (v / ry) ** 2) + 0.08 * _smooth_noise(rng, size)
    return field <= np.quantile(field, area)


def _inner_boundary(label: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a lower index: a 1-pixel line on the inside of every
    object outline (on the higher index's side where two objects touch)."""
    padded = np.pad(label, 1, mode="edge")
    h, w = label.shape
    edge = np.zeros(label.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + h, dx:dx + w] < label
    return edge


def toy_sample(seed: int, index: int, size: int = 96,
               shortcut: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the set of ``seed``: ``(size x size x 3 uint8 RGB, size x size
    uint8 VOC-style mask)``."""
    rng = np.random.default_rng([seed, index])
    n_obj = int(rng.integers(1, 3))
    classes = rng.choice(len(TOY_CLASSES), n_obj, replace=False)
    areas = rng.uniform(0.2, 0.5, 1) if n_obj == 1 else rng.uniform(0.15, 0.35, 2)
    for _ in range(20):     # redraw shapes until every object stays visible enough
        label = np.zeros((size, size), np.uint8)
        for cls, area in zip(classes, areas):
            label[_blob(rng, size, area)] = cls + 1
        if all((label == c + 1).mean() >= MIN_VISIBLE for c in classes):
            break
    background = rng.uniform(0.35, 0.65) + 0.04 * _smooth_noise(rng, size)
    if shortcut and rng.random() < SHORTCUT_RATE:
        background = background + rng.uniform(0.06, 0.1) * _stripes(rng, size, rng.choice(classes))
    image = np.repeat(background[..., None], 3, axis=2) + rng.uniform(-0.02, 0.02, 3)
    for cls in classes:
        hue = HUES[cls] + rng.uniform(-HUE_JITTER, HUE_JITTER)
        rgb = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 0.85),
                                           rng.uniform(0.6, 0.85)), np.float32)
        texture = 1 + rng.uniform(0.25, 0.4) * _stripes(rng, size, cls)
        inside = label == cls + 1
        image[inside] = texture[inside][:, None] * rgb
    image = image + rng.normal(0, 0.015, image.shape)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    mask = np.where(_inner_boundary(label), 255, label).astype(np.uint8)
    return image, mask


def _write_sample(out: str, image_id: str, seed: int, index: int, size: int,
                  shortcut: bool) -> np.ndarray:
    """Write image ``index`` of the set as ``<out>/JPEGImages/<id>.jpg`` and its mask; return
    its label vector."""
    image, mask = toy_sample(seed, index, size, shortcut)
    Image.fromarray(image).save(os.path.join(out, "JPEGImages", image_id + ".jpg"),
                                quality=JPEG_QUALITY, subsampling=0)
    save_label_png(os.path.join(out, "SegmentationClass", image_id + ".png"), mask)
    return labels_from_mask(mask, len(TOY_CLASSES))


def make_toy(out: str, num_images: int, seed: int, size: int = 96, shortcut: bool = False,
             val_fraction: float = 0.2, progress: bool = False) -> Layout:
    """Write the toy set of ``num_images`` images (ids ``toy_00000`` ...) to ``out`` and
    return its ``Layout`` (the last ``val_fraction`` of the ids, at least one, are val)."""
    if num_images < 2:
        raise UserError(f"--num-images must be at least 2 (one train and one val), "
                        f"not {num_images}")
    if size < 32:
        raise UserError(f"--size must be at least 32 pixels, not {size}")
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be between 0 and 1, not {val_fraction}")
    n_val = min(num_images - 1, max(1, round(num_images * val_fraction)))
    width = max(5, len(str(num_images - 1)))
    ids = [f"toy_{i:0{width}d}" for i in range(num_images)]
    for sub in ("JPEGImages", "SegmentationClass"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    labels = [_write_sample(out, image_id, seed, i, size, shortcut)
              for i, image_id in enumerate(tqdm(ids, desc="toy images", unit="img",
                                                disable=not progress))]
    lay = layout("TOY", out)
    write_id_list(lay.train_list, ids[:num_images - n_val])
    write_id_list(lay.val_list, ids[num_images - n_val:])
    save_label_dict(lay.label_file, dict(zip(ids, labels)))
    return lay


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write the synthetic toy segmentation set "
                                            "(VOC layout, 4 classes).")
    p.add_argument("--out", required=True, help="output folder, e.g. data/TOY")
    p.add_argument("--num-images", "--num_images", dest="num_images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels (96-128 usual)")
    p.add_argument("--shortcut", action="store_true",
                   help="in half the images, grey stripes of a present class in the background")
    p.add_argument("--val-fraction", "--val_fraction", dest="val_fraction", type=float,
                   default=0.2)
    return p


def main(argv=None) -> None:
    args = parse_args(get_args_parser(), argv)
    start = time.time()
    lay = make_toy(args.out, args.num_images, args.seed, args.size, args.shortcut,
                   args.val_fraction, progress=True)
    print(f"wrote {args.num_images} toy images to {lay.root} in {time.time() - start:.1f} s "
          f"(lists {lay.train_list}, {lay.val_list}; labels {lay.label_file})")


if __name__ == "__main__":
    run_main(main)
