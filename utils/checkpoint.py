"""Crash-safe checkpoint files and RNG state (DINO's ``restart_from_checkpoint`` habit)."""
from __future__ import annotations

import os
import pickle
import random
import shutil
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from utils.dist import DistInfo, barrier
from utils.errors import UserError


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    """All RNG states as tensors and plain Python values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def gather_rng_states(info: DistInfo) -> List[Dict[str, Any]]:
    """Every rank's ``rng_state()`` (a list indexed by rank), collected on all ranks (a
    collective call under torchrun: every rank must make it)."""
    mine = rng_state()
    if not info.distributed:
        return [mine]
    out = [None] * info.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str) -> Dict[str, Any]:
    """Read a full training checkpoint written by the engine (tensors and plain values
    only, so it loads with ``weights_only=True`` like every other file)."""
    if not os.path.isfile(path):
        raise UserError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise UserError(f"--resume: cannot read {path} ({e}); it may be truncated") from None


def resume_training(path: str, log, model, optimizer, scaler=None,
                    info: DistInfo = DistInfo(), **others) -> int:
    """``--resume`` of every stage: load ``path`` (a ``last.pth`` of ``save_training_state``)
    into ``model`` (strictly), ``optimizer``, ``scaler`` (when the run uses one) and each
    ``others[key]`` (objects with ``load_state_dict``, e.g. a schedule, the FIM), restore
    this rank's RNG states, drop the log's epochs after the checkpoint and note the resume.
    Returns the first epoch to run."""
    state = load_training_state(path)
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    for key, obj in others.items():
        obj.load_state_dict(state[key])
    set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
    start = int(state["epoch"]) + 1
    log.trim_epochs(start)
    log.text(f"resumed from {path} at epoch {start}")
    return start


RUN_LOGS = ("log.txt", "train.log")


def run_files(last: str, log_dir: str) -> List[str]:
    """The files that make a training run: the checkpoints (``*.pth``) in the folder of its
    ``last.pth`` and the logs in ``log_dir``."""
    ckpt_dir = os.path.dirname(last) or "."
    found = (sorted(os.path.join(ckpt_dir, f) for f in os.listdir(ckpt_dir)
                    if f.endswith(".pth")) if os.path.isdir(ckpt_dir) else [])
    return found + [p for p in (os.path.join(log_dir, f) for f in RUN_LOGS)
                    if os.path.isfile(p)]


def claim_run(last: str, log_dir: str, resume: bool, overwrite: bool,
              info: DistInfo = DistInfo()) -> None:
    """Before a training script writes anything: with ``resume``, ``last`` must exist; a
    fresh run into a folder that holds one (``run_files``) is refused with a ``UserError``
    naming ``--resume`` and ``--overwrite``, unless ``overwrite``, which deletes that run's
    checkpoints, logs and TensorBoard events (on the main process) so the new one starts
    over. Every process checks; the main one deletes after they all have."""
    if resume and overwrite:
        raise UserError(f"--resume and --overwrite: give one (--resume continues the run of "
                        f"{last}, --overwrite starts it over)")
    if resume:
        if not os.path.isfile(last):
            raise UserError(f"--resume: no checkpoint at {last}; start without --resume")
        return
    found = run_files(last, log_dir)
    if found and not overwrite:
        more = f" and {len(found) - 1} more file(s)" if len(found) > 1 else ""
        raise UserError(f"{log_dir} already holds a training run ({found[0]}{more}): pass "
                        f"--resume to continue it from {last}, or --overwrite to start over "
                        f"(replacing it), or give another --name")
    barrier(info)
    if found and info.is_main:
        for path in found:
            os.remove(path)
        shutil.rmtree(os.path.join(log_dir, "tb"), ignore_errors=True)
    barrier(info)


def start_training(path: str, log, settings: Mapping[str, Any], summary: str, model,
                   optimizer, scaler=None, info: DistInfo = DistInfo(),
                   resolved: Optional[Dict[str, Any]] = None, resume: bool = False,
                   **others) -> int:
    """The first epoch of every training run: with ``resume``, ``resume_training`` from
    ``path``; else 0, after heading the log with ``settings`` (the run's options) and
    ``summary``. ``resolved`` replaces settings in the log by what they resolved to (the
    weight file actually loaded for a ``None`` default, the list actually read), leaving
    ``settings`` (what ``last.pth`` stores) as given."""
    if resume:
        return resume_training(path, log, model, optimizer, scaler, info, **others)
    log.header({**settings, **(resolved or {})})
    log.text(summary)
    return 0


def save_training_state(path: str, epoch: int, model, optimizer, scaler,
                        settings: Mapping[str, Any], info: DistInfo = DistInfo(),
                        weights: str = None, **others) -> None:
    """After ``epoch``: everything ``resume_training`` needs (model, optimizer, scaler,
    ``others``' state dicts, every rank's RNG states, the run's ``settings``) to ``path``,
    and the bare state dict to ``weights`` when given; atomically, on the main process (the
    RNG gathering is collective: every rank calls this)."""
    rng = gather_rng_states(info)
    if not info.is_main:
        return
    if weights:
        atomic_save(model.state_dict(), weights)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    state.update({key: obj.state_dict() for key, obj in others.items()})
    state.update(scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch,
                 rng=rng, args=dict(settings))
    atomic_save(state, path)
