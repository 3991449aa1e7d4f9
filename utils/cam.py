"""``utils.cam``: the stable import path of ``wsss.cam`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/cam.py``."""
from wsss.cam import (  # noqa: F401
    max_norm, cam_maps, label_classes, cam_dict
)

__all__ = ['max_norm', 'cam_maps', 'label_classes', 'cam_dict']
