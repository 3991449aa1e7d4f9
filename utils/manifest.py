"""Output folders that say which weights made them.

Every folder a stage fills with per-image outputs (``dict/``, ``png/``, ``crf/<alpha>/``,
``rw/``, ``seg/``, ...) holds a ``manifest.json``: the weights file that produced it (path,
size, modification time, SHA-256) and the settings that change the outputs (scales,
n_layers, amp, thresholds, ...). A later run may add to the folder (skip the images already
done) only when its own producer is the same; anything else is refused with a message that
names ``--overwrite``, which clears the folder's outputs first. So a folder never mixes the
outputs of two weight files, and ``evaluation.py`` can say what it scored.

No torch import here (``evaluation.py`` reads manifests).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Iterable, Optional

from utils.errors import UserError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def file_fingerprint(path: str) -> Dict[str, object]:
    """What identifies a weights file: absolute path, size, modification time and the
    SHA-256 of its bytes (about a second per 500 MB). Files compare by size and hash; path
    and time are there to be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size,
            "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime)),
            "sha256": digest.hexdigest()}


def producer(weights: Dict[str, object], **settings) -> Dict[str, object]:
    """A folder's producer: a ``file_fingerprint`` (or a dict of them, for outputs made from
    several files) and the settings that change the outputs (JSON values)."""
    return {"weights": weights, "settings": settings}


def _identity(p: Dict[str, object]):
    """The part of a producer that must match: weights by size + hash, all settings."""
    def ident(w):
        if isinstance(w, dict) and "sha256" in w:
            return (w.get("size"), w.get("sha256"))
        if isinstance(w, dict):
            return tuple(sorted((k, ident(v)) for k, v in w.items()))
        return w
    return ident(p.get("weights")), json.dumps(p.get("settings"), sort_keys=True)


def same_producer(manifest: Optional[Dict[str, object]], made_by: Dict[str, object]) -> bool:
    """Whether ``manifest`` (``read_manifest``'s, or None) records the weights and settings
    of ``made_by``."""
    return bool(manifest) and _identity(manifest) == _identity(made_by)


def read_manifest(folder: str) -> Optional[Dict[str, object]]:
    """The manifest of ``folder`` (None when it has none or it is unreadable)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(manifest: Optional[Dict[str, object]]) -> str:
    """One line naming the weights (and settings) a manifest records."""
    if not manifest:
        return "unknown weights (the folder has no manifest.json)"
    def name(w):
        if isinstance(w, dict) and "sha256" in w:
            return f"{w['path']} (sha256 {str(w['sha256'])[:12]}, {w.get('modified', '?')})"
        if isinstance(w, dict):
            return ", ".join(f"{k}: {name(v)}" for k, v in w.items())
        return str(w)
    settings = manifest.get("settings") or {}
    extra = ", ".join(f"{k} {v}" for k, v in settings.items())
    return name(manifest.get("weights")) + (f"; {extra}" if extra else "")


def _outputs(folder: str, extensions: Iterable[str]) -> list:
    ext = tuple(extensions)
    return [n for n in os.listdir(folder) if n.endswith(ext)] if os.path.isdir(folder) else []


def check_folder(folder: str, made_by: Dict[str, object], extensions: Iterable[str],
                 overwrite: bool) -> str:
    """What writing ``made_by``'s outputs into ``folder`` means, without changing anything:
    ``"new"`` (empty or absent), ``"same"`` (its manifest matches: images already done may
    be skipped) or ``"replace"`` (``overwrite``: its outputs are to be removed first).
    A ``UserError`` when the folder holds outputs of other weights or settings (or of
    unknown origin) and ``overwrite`` is off."""
    existing = _outputs(folder, extensions)
    manifest = read_manifest(folder)
    if overwrite:
        return "replace" if existing or manifest else "new"
    if manifest is None:
        if not existing:
            return "new"
        raise UserError(f"{folder} already holds {len(existing)} outputs of unknown origin (no "
                        f"{MANIFEST}). Pass --overwrite to replace them, or choose another "
                        f"--name / output folder.")
    if _identity(manifest) == _identity(made_by):
        return "same"
    if not existing:
        return "replace"
    raise UserError(f"{folder} holds {len(existing)} outputs made by {describe(manifest)}; this "
                    f"run is {describe(made_by)}. A folder never mixes the two: pass "
                    f"--overwrite to replace them, or choose another --name / output folder.")


def claim_folder(folder: str, made_by: Dict[str, object], extensions: Iterable[str],
                 state: str) -> None:
    """Act on ``check_folder``'s answer (main process only): remove the old outputs for
    ``"replace"``, then record ``made_by`` as the folder's manifest."""
    os.makedirs(folder, exist_ok=True)
    if state == "replace":
        for n in _outputs(folder, extensions):
            os.remove(os.path.join(folder, n))
    if state != "same":
        tmp = os.path.join(folder, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(dict(made_by, created=time.strftime("%Y-%m-%d %H:%M:%S")), f, indent=1)
        os.replace(tmp, os.path.join(folder, MANIFEST))
