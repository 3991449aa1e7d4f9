"""Image-level labels and id lists: how ``prepare.py`` and ``toy.py`` make and write them,
and how the datasets read the labels back. No torch import here.

``cls_labels.npy`` is ``np.save(path, {image id: float32 vector of C})``, the format of the
reference (and of PSA / IRN). It is a pickle, so it is read with the restricted unpickler of
``utils.io.load_npy_dict``, never with ``allow_pickle=True``.
"""
from __future__ import annotations

import os
import pickle
import xml.etree.ElementTree as ET
from typing import BinaryIO, Callable, Dict, Sequence

import numpy as np

from datasets.layout import dataset
from utils.errors import UserError, describe_missing
from utils.io import load_npy_dict


def remake_hint(data_set: str, data_path: str) -> str:
    """The command that (re)creates the lists and ``cls_labels.npy`` of ``data_set``."""
    return dataset(data_set).remake_hint(data_path)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The label vector (float32, ``num_classes``) of a VOC-style index mask: value k marks
    class k-1; 0 (background) and 255 (ignore) do not count. A ``ValueError`` for values
    that are no class."""
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values {mask.min()}..{mask.max()} are outside 0..255")
        mask = mask.astype(np.uint8)
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[1:255])
    if present.size and present[-1] >= num_classes:
        raise ValueError(f"mask value {present[-1] + 1} is no class (1..{num_classes} are the "
                         f"classes, 0 background, 255 ignore)")
    label = np.zeros(num_classes, np.float32)
    label[present] = 1
    return label


def labels_from_xml(path: str, classes: Sequence[str]) -> np.ndarray:
    """The label vector of a VOC annotation: the ``<object><name>`` entries of ``path``
    (object parts, whose names are nested deeper, do not count). A ``ValueError`` for a name
    that is not in ``classes``."""
    index = {name: k for k, name in enumerate(classes)}
    label = np.zeros(len(classes), np.float32)
    for obj in ET.parse(path).getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise ValueError(f"unknown object name {name!r}")
        label[index[name]] = 1
    return label


def _write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into ``path + '.tmp'``, then rename: readers never see half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_id_list(path: str, ids: Sequence[str]) -> None:
    """One id a line (the VOC devkit format that ``utils.lists.read_id_list`` reads)."""
    _write_atomic(path, lambda f: f.write("".join(f"{i}\n" for i in ids).encode()))


def save_label_dict(path: str, labels: Dict[str, np.ndarray]) -> None:
    """Write ``cls_labels.npy``: ids in sorted order, float32 vectors, so that the same
    labels always give the same bytes."""
    d = {str(k): np.asarray(labels[k], np.float32) for k in sorted(labels)}
    _write_atomic(path, lambda f: np.save(f, d))


def label_array(path: str, ids: Sequence[str], num_classes: int, hint: str,
                key: Callable[[object], str] = str) -> np.ndarray:
    """The labels of ``ids`` from ``cls_labels.npy`` at ``path`` as an N x C float32 array.

    ``key`` maps both the ids and the file's keys (strings, or integers in IRN-style files)
    to one form (``datasets.layout.label_key``: bare COCO ids, VOC devkit ids). A
    ``UserError`` (ending with ``hint``, the command that remakes the file) when the file is
    missing or unreadable, lacks some ids, or holds vectors of another length.
    """
    if not os.path.isfile(path):
        raise UserError(f"image-level labels not found: {path}. To create them, {hint}.")
    try:
        stored = load_npy_dict(path)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"{path} is not a readable cls_labels.npy ({e}). To recreate it, "
                        f"{hint}.") from None
    table = {key(k): v for k, v in stored.items()}
    missing = [i for i in ids if key(i) not in table]
    if missing:
        raise UserError(f"{path} has no label for some listed images ("
                        f"{describe_missing(missing, 'ids')}; the file has {len(table)} ids). "
                        f"The list does not belong to this dataset or the labels are out of "
                        f"date: check --data-set / --data-path, or {hint}.")
    out = np.zeros((len(ids), num_classes), np.float32)
    for n, i in enumerate(ids):
        vec = np.asarray(table[key(i)], np.float32).ravel()
        if vec.shape != (num_classes,):
            raise UserError(f"{path}: the label of {i} has {vec.size} entries, expected "
                            f"{num_classes} for this dataset. Check --data-set, or {hint}.")
        out[n] = vec
    return out
