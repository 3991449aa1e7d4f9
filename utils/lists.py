"""Image-id list files (no torch: used by evaluation.py too).

Accepted line formats, so that lists from other WSSS codebases work unchanged:
``2007_000032`` (VOC devkit), ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/...png``
(the reference's two columns), ``000000000009`` and ``COCO_train2014_000000000009``.
"""
from __future__ import annotations

import os
from typing import List

from utils.errors import UserError


def parse_list_line(line: str) -> str:
    """The image id of one list line (first column, directory and extension removed)."""
    first = line.split()[0]
    return os.path.splitext(os.path.basename(first))[0]


def read_id_list(path: str) -> List[str]:
    """Image ids of a list file, in file order (blank lines and ``#`` comments skipped)."""
    if not os.path.isfile(path):
        raise UserError(f"list file not found: {path}. For VOC / COCO run "
                        f"`python -m datasets.prepare --data-set VOC12|COCO --data-path DIR` "
                        f"(it makes train_aug.txt and the COCO lists); the toy set's lists come "
                        f"with `python -m datasets.toy --out DIR`; or pass the list with "
                        f"--train_list / --val_list / --list.")
    with open(path) as f:
        ids = [parse_list_line(l) for l in f if l.strip() and not l.lstrip().startswith("#")]
    if not ids:
        raise UserError(f"list file {path} is empty")
    return ids
