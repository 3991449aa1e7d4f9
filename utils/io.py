"""Safe readers for the files the pipeline exchanges.

CAM dicts (``np.save(path, {class: H x W array})``) and ``cls_labels.npy`` (``{image id:
label vector}``) are pickles. Loading them with ``allow_pickle=True`` would run whatever a
crafted file asks for; ``load_npy_dict`` instead unpickles with an allow-list of the numpy
constructors such a dict needs.
"""
from __future__ import annotations

import pickle
from typing import Dict

import numpy as np
from PIL import Image

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("builtins", "dict"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden object {module}.{name} in a pickled dict file")


def load_npy_dict(path: str) -> dict:
    """Read a dict saved with ``np.save(path, dict)``, keys as stored, without running code."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        if dtype.hasobject:
            obj = _NumpyOnlyUnpickler(f).load()
            obj = obj.item() if isinstance(obj, np.ndarray) else obj
        else:  # e.g. a C x H x W CAM array: not a dict
            raise ValueError(f"{path} holds a {dtype} array of shape {shape}, not a dict")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict")
    return obj


def load_cam_dict(path: str) -> Dict[int, np.ndarray]:
    """Read a CAM dict saved with ``np.save`` (keys: 0-based class indices)."""
    return {int(k): np.asarray(v) for k, v in load_npy_dict(path).items()}


def save_cam_dict(path: str, cams: Dict[int, np.ndarray]) -> None:
    """Write a CAM dict in the format PSA / IRN style refinement reads."""
    np.save(path, {int(k): v for k, v in cams.items()})


def read_label_png(path: str) -> np.ndarray:
    """A VOC-style index PNG as an H x W uint8 array (palette indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path} is a {im.mode} image, expected an index (P or L) PNG")
        return np.asarray(im)
