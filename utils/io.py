"""Safe readers and atomic writers for the files the pipeline exchanges.

CAM dicts (``np.save(path, {class: H x W array})``) and ``cls_labels.npy`` (``{image id:
label vector}``) are pickles. Loading them with ``allow_pickle=True`` would run whatever a
crafted file asks for; ``load_npy_dict`` instead unpickles with an allow-list of exactly what
numpy's array reconstruction needs. That includes ``_codecs.encode``, through which pickles
of protocol 2 and lower (the ``voc12/cls_labels.npy`` that PSA, MCTformer and PCSS ship, and
Python 2 files) rebuild an array's raw bytes; it is allowed only with the ``latin1`` codec
(a pure bytes <-> str mapping). Anything else a pickle asks for is refused.
"""
from __future__ import annotations

import codecs
import contextlib
import os
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
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as old pickles call it (``encode(str, 'latin1')`` to rebuild
    bytes); any other codec is refused."""
    if encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError(f"forbidden codec {encoding!r} in a pickled dict file")
    return codecs.encode(text, "latin1", errors)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
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
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            obj = obj.item() if isinstance(obj, np.ndarray) else obj
        else:  # e.g. a C x H x W CAM array: not a dict
            raise ValueError(f"{path} holds a {dtype} array of shape {shape}, not a dict")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict")
    return obj


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path`` to write to; on success it is renamed to
    ``path`` (readers never see half a file), on an exception it is removed."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_label_png(path: str) -> np.ndarray:
    """A VOC-style index PNG as an H x W uint8 array (palette indices, not colours)."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path} is a {im.mode} image, expected an index (P or L) PNG")
        return np.asarray(im)
