"""Score dicts (``{int key: H x W map in [0, 1]}``: CAM dicts, CRF score dicts) in two file
formats, and the one reader of both.

- ``psa``: ``np.save(path, dict)`` (``.npy``), the float32 pickled dict PSA, IRN and
  MCTformer exchange; read through ``utils.io.load_npy_dict`` (no code runs from it).
- ``compact`` (``.sdz``): every map in uint16 fixed point on the grid ``u / scale``: ``u`` is
  the smallest integer whose decoded float32 value is >= the map's, so every comparison of a
  value with a grid point (a threshold) comes out as with the original, and every value
  comes back within one step. CAM dicts use ``CAM_SCALE`` 50000 (steps of 2e-5; the
  thresholds 0.00, 0.01, ... lie on the grid, so pseudo labels at those thresholds are
  unchanged), CRF score dicts ``CRF_SCALE`` 10000 (steps of 1e-4: coarser steps, far
  smaller files; every value within 127/128 of a step) with ordered dithering: ``floor(v * scale
  + d)`` with ``d`` from an 8 x 8 Bayer matrix tiled over the image, so that the mean of any
  8 x 8 window (affinity training pools the scores over such blocks) keeps its value to
  about 1/64 of a step, and near-ties between classes keep their order. The maps, stacked in key order, are optionally
  differenced along rows (the PNG "sub" filter, which suits smooth CAMs; saturated CRF scores
  compress better without), then LZMA. The file is ``MAGIC``, a 4-byte little-endian header
  length, a JSON header (``format``, ``version``, ``scale``, ``shape``, ``keys``,
  ``filter``, ``codec``, ``dtype``) and the LZMA stream: self-describing, and reading it
  runs no code (JSON and a length-bounded decompression only). At VOC size a CRF score dict
  is about 20-70x smaller than its ``.npy`` (the more texture, the less).

Pure functions (bytes <-> dicts) plus ``save_score_dict`` / ``load_score_dict`` for files.
"""
from __future__ import annotations

import json
import lzma
import os
import pickle
import struct
import zlib
from typing import Dict, Optional

import numpy as np

from utils.errors import UserError
from utils.io import atomic_path, load_npy_dict

MAGIC = b"\x89PCSS-SDZ\n"
VERSION = 1
CAM_SCALE = 50000               # steps of 2e-5, a multiple of 100: thresholds on the grid
CRF_SCALE = 10000               # steps of 1e-4, dithered: values within 0.99e-4
FORMATS = {"psa": ".npy", "compact": ".sdz"}
_FILTERS = ("none", "sub")
_MAX_HEADER = 1 << 16
_MAX_PIXELS = 1 << 31           # per file, all maps together (a hostile header cannot ask more)


def _filtered(u: np.ndarray, how: str) -> bytes:
    if how == "sub":    # per-row differences modulo 2**16
        u = np.diff(u.astype(np.int32), axis=-1, prepend=0).astype(np.uint16)
    return np.ascontiguousarray(u, "<u2").tobytes()


def _decode(u: np.ndarray, scale: float) -> np.ndarray:
    """float32 values of fixed-point ``u`` (correctly rounded: ``u / scale`` in float64)."""
    return (u.astype(np.float64) / scale).astype(np.float32)


def _bayer(n: int = 8) -> np.ndarray:
    """The n x n ordered-dither matrix (n a power of 2) as offsets (i + 0.5) / n^2."""
    m = np.zeros((1, 1), np.int64)
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / (n * n)


def dither_quantize(v: np.ndarray, scale: float) -> np.ndarray:
    """Fixed-point codes of ``v`` (... x H x W, in [0, 1]) with ordered dithering:
    ``floor(v * scale + d)``, ``d`` the 8 x 8 Bayer offsets tiled from the top-left pixel;
    every code decodes within one step of its value, 0 and 1 exactly."""
    H, W = v.shape[-2:]
    d = np.tile(_bayer(8), (-(-H // 8), -(-W // 8)))[:H, :W]
    u = np.floor(np.asarray(v, np.float64) * scale + d)
    return np.clip(u, 0, np.floor(scale)).astype(np.uint16)


def quantize(v: np.ndarray, scale: float) -> np.ndarray:
    """The fixed-point codes of float32 values ``v`` in [0, 1]: for each, the smallest
    integer ``u`` with ``_decode(u) >= v``, so ``v > g`` exactly when ``_decode(u) > g`` for
    every grid value ``g`` (= ``_decode`` of an integer), and ``_decode(u) - v`` is below
    one step."""
    v = np.asarray(v, np.float32)
    u = np.ceil(v.astype(np.float64) * scale).astype(np.int64)
    u += _decode(u, scale) < v                      # float32 rounding: one step either way
    low = np.maximum(u - 1, 0)
    u = np.where((u > 0) & (_decode(low, scale) >= v), low, u)
    return u.astype(np.uint16)


def encode_score_dict(scores: Dict[int, np.ndarray], scale: float = CAM_SCALE,
                      dither: bool = False) -> bytes:
    """The compact bytes of a score dict (maps of equal H x W, values in [0, 1]; a value
    outside, or NaN, is a ``ValueError``) on the fixed-point grid of ``scale`` (at most
    65535): values come back at most one step (``1 / scale``) above the originals
    (``quantize``), or within one step either way with ``dither`` (``dither_quantize``)."""
    if not 0 < scale <= 65535:
        raise ValueError(f"scale must lie in (0, 65535], got {scale}")
    keys = sorted(int(k) for k in scores)
    maps = [np.asarray(scores[k], np.float32) for k in keys]
    shape = maps[0].shape if maps else (0, 0)
    if any(m.ndim != 2 or m.shape != shape for m in maps):
        raise ValueError(f"score maps must all be H x W of one size, got "
                         f"{[m.shape for m in maps]}")
    v = np.stack(maps) if maps else np.zeros((0,) + tuple(shape), np.float32)
    if v.size and not (np.all(v >= 0) and np.all(v <= 1)):   # NaN fails both
        raise ValueError(f"score maps must lie in [0, 1] for the compact format, got "
                         f"[{v.min():.4g}, {v.max():.4g}]")
    u = dither_quantize(v, scale) if dither else quantize(v, scale)
    # the filter whose bytes deflate best (zlib level 1 is a cheap, faithful estimate)
    how = min(_FILTERS, key=lambda f: len(zlib.compress(_filtered(u, f), 1)))
    header = json.dumps({"format": "pcss-score-dict", "version": VERSION, "scale": scale,
                         "shape": [int(s) for s in shape], "keys": keys, "filter": how,
                         "rounding": "bayer8" if dither else "up", "codec": "lzma",
                         "dtype": "<u2"}).encode()
    return (MAGIC + struct.pack("<I", len(header)) + header
            + lzma.compress(_filtered(u, how), preset=6))


def decode_score_dict(data: bytes, name: str = "the score file") -> Dict[int, np.ndarray]:
    """The dict of ``encode_score_dict``'s bytes (float32 maps). Anything that is not such a
    file, or a damaged one, is a ``UserError`` naming ``name``."""
    def bad(why: str) -> UserError:
        return UserError(f"{name} is not a readable compact score file ({why}). Delete it "
                         f"and write it again (infer_PCSS.py --dict / --crf), or pass "
                         f"--overwrite.")
    if not data.startswith(MAGIC):
        raise bad("wrong magic bytes")
    start = len(MAGIC) + 4
    if len(data) < start:
        raise bad("truncated header")
    (n,) = struct.unpack("<I", data[len(MAGIC):start])
    if n > _MAX_HEADER or len(data) < start + n:
        raise bad("truncated or oversized header")
    try:
        h = json.loads(data[start:start + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("header is not JSON") from None
    if not isinstance(h, dict) or h.get("format") != "pcss-score-dict":
        raise bad("header of another format")
    if h.get("version") != VERSION:
        raise bad(f"version {h.get('version')!r}, this code reads version {VERSION}")
    shape, keys, scale = h.get("shape"), h.get("keys"), h.get("scale")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(s, int) and s >= 0 for s in shape)
            and isinstance(keys, list) and all(isinstance(k, int) for k in keys)
            and len(set(keys)) == len(keys)
            and isinstance(scale, (int, float)) and scale > 0
            and h.get("filter") in _FILTERS and h.get("codec") == "lzma"
            and h.get("dtype") == "<u2"):
        raise bad("malformed header")
    count = len(keys) * shape[0] * shape[1]
    if count > _MAX_PIXELS:
        raise bad(f"header claims {count} values")
    expected = 2 * count
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = dec.decompress(data[start + n:], max_length=expected + 1)
    except lzma.LZMAError as e:
        raise bad(f"damaged data: {e}") from None
    if len(raw) != expected or not dec.eof or dec.unused_data:
        raise bad(f"{len(raw)} bytes of data where the header asks {expected}")
    u = np.frombuffer(raw, "<u2").reshape(len(keys), *shape)
    if h["filter"] == "sub":
        u = np.cumsum(u, axis=-1, dtype=np.uint16)      # undoes the differences mod 2**16
    v = _decode(u, scale)
    return {k: v[i] for i, k in enumerate(keys)}


def save_cam_dict(path: str, cams: Dict[int, np.ndarray]) -> None:
    """Write a CAM dict in the format PSA / IRN style refinement reads (atomically)."""
    with atomic_path(path) as tmp:
        np.save(tmp, {int(k): v for k, v in cams.items()})


def save_score_dict(path: str, scores: Dict[int, np.ndarray], fmt: Optional[str] = None,
                    scale: float = CAM_SCALE, dither: bool = False) -> None:
    """Write ``scores`` atomically in ``fmt`` (default: the format of ``path``'s extension,
    ``FORMATS``; ``scale`` and ``dither``: the compact format's grid and rounding)."""
    fmt = fmt or next((f for f, e in FORMATS.items() if path.endswith(e)), "psa")
    if fmt == "psa":
        save_cam_dict(path, scores)
        return
    data = encode_score_dict(scores, scale, dither)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def load_score_dict(path: str) -> Dict[int, np.ndarray]:
    """Read a score dict in either format, whatever its extension: the compact format by its
    magic bytes, else a pickled ``.npy`` dict (ours, PSA's, MCTformer's) through the safe
    reader. Keys as ints, maps as stored (float32 for compact files). A file that is
    neither, or one that asks to run code, is a ``UserError`` naming it."""
    with open(path, "rb") as f:
        data = f.read(len(MAGIC))
        if data == MAGIC:
            return decode_score_dict(data + f.read(), path)
    try:
        return {int(k): np.asarray(v) for k, v in load_npy_dict(path).items()}
    except (pickle.UnpicklingError, ValueError, EOFError, TypeError) as e:
        raise UserError(f"{path} is not a readable score dict ({e}). Write it again "
                        f"(infer_PCSS.py --dict / --crf) or check where it came from."
                        ) from None


def score_file(folder: str, image_id: str) -> str:
    """The score dict of ``image_id`` in ``folder``: the first existing file among the
    formats' extensions (compact, then psa); the psa path when there is none."""
    for ext in (FORMATS["compact"], FORMATS["psa"]):
        path = os.path.join(folder, image_id + ext)
        if os.path.isfile(path):
            return path
    return os.path.join(folder, image_id + FORMATS["psa"])


def load_cam_dict(path: str) -> Dict[int, np.ndarray]:
    """Read a CAM or score dict, saved with ``np.save`` (PSA's format) or in the compact
    format; keys are 0-based class indices (``load_score_dict``)."""
    return load_score_dict(path)
