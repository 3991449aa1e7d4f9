"""``utils.segmentation``: the stable import path of ``wsss.segmentation`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/segmentation.py``."""
from wsss.segmentation import (  # noqa: F401
    seg_predict, seg_loss
)

__all__ = ['seg_predict', 'seg_loss']
