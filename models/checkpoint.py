"""Checkpoint loading and conversion (pure functions, timm ``checkpoint_filter_fn`` style).

All files are read with ``torch.load(..., weights_only=True)``: a checkpoint that would run
code when unpickled is refused with a ``UserError``.
"""
from __future__ import annotations

import os
import pickle
from typing import Dict, Mapping, Union

import torch
import torch.nn.functional as F

from utils.errors import UserError, describe_missing

StateDict = Dict[str, torch.Tensor]


def load_state_dict_file(path: str) -> StateDict:
    """Read a state dict: a bare one, or the value of ``model`` / ``state_dict`` in a dict.

    A ``module.`` prefix (DistributedDataParallel) is removed.
    """
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: it holds Python objects other than tensors, which "
            f"could execute code when unpickled (torch.load weights_only=True said: "
            f"{str(e).splitlines()[0][:200]}). Re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), path)) from a trusted environment.") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}. The file may be truncated "
                        f"or not a PyTorch checkpoint.") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _as_state_dict(path_or_state_dict: Union[str, os.PathLike, Mapping]) -> StateDict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return load_state_dict_file(os.fspath(path_or_state_dict))
    sd = dict(path_or_state_dict)
    if "model" in sd and isinstance(sd["model"], Mapping):
        sd = dict(sd["model"])
    return sd


def deit_to_mct(deit: Mapping[str, torch.Tensor], model) -> StateDict:
    """Convert an ImageNet DeiT state dict to ``model``'s layout (SPEC section 2).

    The single class token and class position are repeated C times, the patch position
    grid is resampled to the model's grid (bicubic, by size), heads whose shapes differ are
    dropped. Raises ``UserError`` naming any other missing or unexpected key.
    """
    own = model.state_dict()
    C = model.num_classes
    out: StateDict = {}
    single = "cls_token" in deit and deit["cls_token"].shape[1] == 1   # ImageNet layout
    for k, v in deit.items():
        if k.startswith("head.") or k.startswith("head_dist."):
            if k in own and own[k].shape == v.shape:
                out[k] = v
            continue
        if k == "cls_token" and single:
            v = v.expand(-1, C, -1)
        elif k == "pos_embed" and single:
            v = _resample_pos_embed(v, C, model.grid)
        out[k] = v
    problems = key_mismatches(out, own, optional=("head.",))
    if problems:
        raise UserError(f"the DeiT checkpoint does not fit this model ({problems}). Use the "
                        f"ImageNet DeiT weights of the same --arch, e.g. "
                        f"deit_small_patch16_224-cd65a155.pth for deit_small.")
    return out


def key_mismatches(got: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                   optional=()) -> str:
    """What keeps ``got`` from loading strictly into a model with state ``own``: missing
    keys (except those starting with ``optional``), unexpected keys, shape mismatches.
    An empty string when it fits."""
    missing = [k for k in own if k not in got and not k.startswith(tuple(optional))]
    unexpected = [k for k in got if k not in own]
    wrong = [f"{k} {tuple(got[k].shape)} vs {tuple(own[k].shape)}"
             for k in got if k in own and got[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(describe_missing(missing, "keys"))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:8])}")
    if wrong:
        problems.append(f"shape mismatches: {', '.join(wrong[:8])}")
    return "; ".join(problems)


def _resample_pos_embed(pos: torch.Tensor, num_classes: int, grid: int) -> torch.Tensor:
    """1 x (1+G0^2) x D -> 1 x (C+G^2) x D: class row repeated, grid resampled by size."""
    D = pos.shape[-1]
    g0 = int(round((pos.shape[1] - 1) ** 0.5))
    if g0 * g0 + 1 != pos.shape[1]:
        raise UserError(f"pos_embed with {pos.shape[1]} rows is not 1 class + a square grid")
    cls = pos[:, :1].expand(-1, num_classes, -1)
    patch = pos[:, 1:].reshape(1, g0, g0, D).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, grid * grid, D)], dim=1)


def init_from_deit(net, path_or_state_dict) -> None:
    """Initialise ``net`` from ImageNet DeiT weights (a path or a state dict)."""
    sd = deit_to_mct(_as_state_dict(path_or_state_dict), net)
    with torch.no_grad():
        own = net.state_dict()
        for k, v in sd.items():
            own[k].copy_(v)


def load_model_weights(net, path_or_state_dict) -> None:
    """Strictly load a model state dict (e.g. the released PCSS checkpoint)."""
    sd = _as_state_dict(path_or_state_dict)
    problems = key_mismatches(sd, net.state_dict())
    if problems:
        raise UserError(f"checkpoint does not match the model ({problems}). Check --arch and "
                        f"--data-set (number of classes).")
    net.load_state_dict(sd, strict=True)
