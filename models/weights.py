"""Weight files: which file, how it loads, which tensors train (timm
``checkpoint_filter_fn`` style: conversion as pure functions).

- Reading: ``read_checkpoint`` / ``load_state_dict_file`` accept the layouts researchers
  have on disk (``unwrap_state_dict``). Every file is read with
  ``torch.load(..., weights_only=True)``: a checkpoint that would run code when unpickled is
  refused with a ``UserError``.
- Loading: ``load_model_weights`` (strict, names what does not match), ``init_from_deit``
  (ImageNet DeiT -> C class tokens; docs/method.md, Initialisation from DeiT),
  ``load_network`` (build + load + eval).
- Which file: ``deit_weights`` (the ImageNet weights of ``--finetune``).
- Training: ``freeze_parameters`` (``--freeze`` patterns).
"""
from __future__ import annotations

import fnmatch
import os
import pickle
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from models.mct_vit import build_arch
from utils.errors import UserError, describe_missing

StateDict = Dict[str, torch.Tensor]
WeightReport = Dict[str, List[str]]     # {"fresh": [...], "dropped": [...]}


def describe_weights(path: Optional[str], report: WeightReport) -> str:
    """One line for a training log: the initial weight file and what ``load_weights``
    reported of it ("weights <file>: N fresh tensors, M file tensors unused")."""
    return (f"weights {path or 'none (from scratch)'}: {len(report['fresh'])} fresh tensors, "
            f"{len(report['dropped'])} file tensors unused")


def read_checkpoint(path: str):
    """The object stored at ``path``, read with ``weights_only=True``; ``UserError`` for a
    missing or unreadable file and for a pickle that would run code."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: it holds Python objects other than tensors, which "
            f"could execute code when unpickled (torch.load weights_only=True said: "
            f"{str(e).splitlines()[0][:200]}). Re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), path)) from a trusted environment.") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}. The file may be truncated "
                        f"or not a PyTorch checkpoint.") from None


def unwrap_state_dict(obj, what: str = "the checkpoint") -> Tuple[StateDict, str]:
    """The state dict inside a checkpoint object, and how it was found.

    Accepted layouts: a bare state dict; ``{'model': ...}`` (DeiT, MCTformer, this
    project's ``last.pth``); ``{'state_dict': ...}``; keys prefixed ``module.`` (saved from
    (Distributed)DataParallel, as the authors' training does). The second value says in
    words which unwrapping was applied ("" for a bare state dict). Anything else is a
    ``UserError`` naming what was found."""
    steps = []
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                steps.append(f"took its '{key}' entry")
                break
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        kind = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}"
                if isinstance(obj, Mapping) else f"a {type(obj).__name__}")
        raise UserError(f"{what} is not a state dict (names -> tensors) but {kind}. Accepted: "
                        f"a state dict, {{'model': state dict}}, {{'state_dict': state dict}}, "
                        f"with or without a 'module.' prefix.")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
        steps.append("removed the 'module.' prefix of its keys")
    return dict(obj), " and ".join(steps)


def load_state_dict_file(path: str, report: Optional[Callable[[str], None]] = None
                         ) -> StateDict:
    """Read a state dict file in any layout of ``unwrap_state_dict``; ``report`` (e.g.
    ``print``) gets one line saying which unwrapping was applied, if any."""
    sd, how = unwrap_state_dict(read_checkpoint(path), path)
    if how and report is not None:
        report(f"{path}: {how}")
    return sd


def _as_state_dict(path_or_state_dict: Union[str, os.PathLike, Mapping],
                   report: Optional[Callable[[str], None]] = None) -> StateDict:
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        return load_state_dict_file(os.fspath(path_or_state_dict), report)
    return unwrap_state_dict(path_or_state_dict, "the state dict given")[0]


def deit_to_mct(deit: Mapping[str, torch.Tensor], model) -> StateDict:
    """Convert an ImageNet DeiT state dict to ``model``'s layout (docs/method.md,
    Initialisation from DeiT).

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
                   optional=(), exact: bool = False) -> str:
    """What keeps ``got`` from loading strictly into a model with state ``own``: missing
    keys (except those starting with ``optional`` - or equal to one, ``exact`` - and
    BatchNorm's ``num_batches_tracked``,
    which files saved before PyTorch 0.4.1 lack), unexpected keys, shape mismatches.
    An empty string when it fits."""
    skip = (lambda k: k in optional) if exact else (lambda k: k.startswith(tuple(optional)))
    missing = [k for k in own if k not in got and not skip(k)
               and not k.endswith("num_batches_tracked")]
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


def init_from_deit(net, path_or_state_dict,
                   report: Optional[Callable[[str], None]] = None) -> None:
    """Initialise ``net`` from ImageNet DeiT weights (a path or a state dict)."""
    load_weights(net, deit_to_mct(_as_state_dict(path_or_state_dict, report), net),
                 fresh_ok=[k for k in net.state_dict() if k.startswith("head.")])


def load_model_weights(net, path_or_state_dict,
                       report: Optional[Callable[[str], None]] = None,
                       hint: str = "Check --arch and --data-set (number of classes).") -> None:
    """Strictly load a model state dict (e.g. the released PCSS checkpoint, PSA's
    res38_aff.pth) in any layout of ``unwrap_state_dict``; ``hint`` ends the error."""
    load_weights(net, path_or_state_dict, what="checkpoint", hint=hint, report=report)


def load_weights(net, source: Union[str, os.PathLike, Mapping], fresh_ok: Sequence[str] = (),
                 drop_ok: bool = False, prefix: str = "", what: Optional[str] = None,
                 hint: str = "", report: Optional[Callable[[str], None]] = None) -> WeightReport:
    """The one weight loader: copy the tensors of ``source`` (a file or a state dict, in any
    layout of ``unwrap_state_dict``; its keys under ``prefix`` in ``net``, e.g. a torchvision
    trunk's under ``backbone.``) into ``net``, cast to the net's dtypes.

    Returns ``{"fresh": net keys the file lacks, "dropped": file keys the net lacks}``
    (BatchNorm's ``num_batches_tracked`` is never listed: files saved before PyTorch 0.4.1
    lack it). Fresh keys are allowed only in ``fresh_ok`` (a net's new head, which keeps its
    initialisation), dropped keys only with ``drop_ok`` (e.g. a classifier's ``fc8``);
    anything else, and any shape mismatch, is a ``UserError`` "<what> does not match the
    model (...)" ending with ``hint``. ``report`` (e.g. ``print``) gets one line saying how
    the file was unwrapped and what was fresh or dropped."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the state dict given"
    obj = read_checkpoint(name) if isinstance(source, (str, os.PathLike)) else source
    sd, how = unwrap_state_dict(obj, name)
    own = net.state_dict()
    bookkeeping = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    got = {prefix + k: v for k, v in sd.items()}
    fresh = [k for k in own if k not in got and not bookkeeping(k)]
    dropped = [k for k in sd if prefix + k not in own and not bookkeeping(k)]
    kept = {k: v for k, v in got.items() if k in own} if drop_ok else got
    problems = key_mismatches(kept, own, optional=tuple(fresh_ok), exact=True)
    if problems:
        raise UserError(f"{what or name} does not match the model ({type(net).__name__}: "
                        f"{problems}). {hint}".rstrip())
    with torch.no_grad():
        for k, v in own.items():
            if k in got:
                v.copy_(got[k])
    if report is not None and (how or fresh or dropped):
        report(f"{name}: " + "; ".join(
            [how] * bool(how) + [f"{len(fresh)} tensors fresh"] * bool(fresh)
            + [f"{len(dropped)} file tensors unused"] * bool(dropped)))
    return {"fresh": fresh, "dropped": dropped}


# ------------------------------------------------------------------------ which file
DEIT_WEIGHTS = {
    "deit_small": ("pretrained/deit_small_patch16_224-cd65a155.pth",
                   "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"),
    "deit_tiny": ("pretrained/deit_tiny_patch16_224-a1311bcf.pth",
                  "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth"),
}


def initial_weights(value: Optional[str], default: Optional[str],
                    missing: Callable[[str], str], keep: Sequence[str] = ()) -> Optional[str]:
    """The file a network starts from, as a ``--finetune`` / ``--weights`` flag names it:
    ``value`` (``none``: None, from scratch; one of ``keep``, e.g. ``download``, as it is),
    else ``default`` (None: from scratch). A ``UserError`` with ``missing(path)`` when the
    file is absent."""
    value = default if value is None else value
    if value is None or value.lower() == "none":
        return None
    if value in keep:
        return value
    if not os.path.isfile(value):
        raise UserError(missing(value))
    return value


def deit_weights(arch: str, finetune: Optional[str]) -> Optional[str]:
    """The DeiT weights file to start ``arch`` from, or None (from scratch): ``finetune``
    as given (``none``: from scratch), else the default file of ``arch`` (none for toy).
    A ``UserError`` with the download address when the file is absent."""
    url = DEIT_WEIGHTS.get(arch, DEIT_WEIGHTS["deit_small"])[1]
    return initial_weights(
        finetune, DEIT_WEIGHTS.get(arch, (None,))[0],
        lambda path: f"pretrained weights not found: {path}. Download the ImageNet DeiT "
                     f"weights ({url}) into pretrained/, pass --finetune PATH, or --finetune "
                     f"none to train from scratch.")


def load_network(arch: str, num_classes: int, input_size: int, path: str,
                 device: torch.device, report: Optional[Callable[[str], None]] = None):
    """The seed network of ``arch`` with the weights of ``path`` (strict), in eval mode."""
    net = build_arch(arch, num_classes, img_size=input_size, drop_path_rate=0.0)
    load_model_weights(net, path, report)
    return net.to(device).eval()


def save_initial_weights(path: str, arch: str, num_classes: int, input_size: int,
                         seed: int) -> None:
    """A randomly initialised seed network (the untrained baseline), as a bare state dict."""
    from utils.checkpoint import atomic_save

    torch.manual_seed(seed)
    atomic_save(build_arch(arch, num_classes, input_size).state_dict(), path)


# -------------------------------------------------------------------------- training
def freeze_parameters(model, patterns: Sequence[str]) -> int:
    """``requires_grad=False`` on the parameters whose names match any fnmatch pattern;
    returns how many. A ``UserError`` when patterns are given but none matches."""
    n = 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            n += 1
    if patterns and n == 0:
        raise UserError(f"--freeze {' '.join(patterns)} matches no parameter name "
                        f"(names look like 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight')")
    return n
