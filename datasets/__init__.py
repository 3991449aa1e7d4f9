"""Datasets: VOC 2012, COCO 2014 and a synthetic toy set in the VOC layout.

- ``datasets.layout``: where each dataset keeps its files, class names (no torch).
- ``datasets.prepare``: ``python -m datasets.prepare`` writes lists and ``cls_labels.npy``.
- ``datasets.toy``: ``python -m datasets.toy`` writes the synthetic set.
- ``datasets.classification``: the torch ``Dataset``; ``build_dataset`` and ``collate_single`` are
  re-exported here but imported on first use, so that ``import datasets.layout`` (done by
  ``evaluation.py``) does not import torch.
"""

__all__ = ["build_dataset", "collate_single", "WSSSDataset"]


def __getattr__(name):
    if name in __all__:
        from datasets import classification
        return getattr(classification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
