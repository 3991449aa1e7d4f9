"""What the loops of every stage share: the network made ready for training (compiled, then
wrapped in DistributedDataParallel), the optimiser step with or without the fp16 gradient
scaler, the stop on a non-finite loss, and an inference's claim on its output folder."""
from __future__ import annotations

import os
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from utils.dist import DistInfo, barrier, shard
from utils.manifest import check_folder, claim_folder
from utils.errors import NonFiniteLoss


def prepare_model(net: torch.nn.Module, device: torch.device, info: DistInfo,
                  compile: bool = False) -> torch.nn.Module:
    """``net`` moved to ``device``; with ``compile`` through ``models.compile_network``;
    under several processes wrapped in DDP (after compiling: the gradient hooks sit on the
    shared parameters). ``net`` itself stays the module whose state dict is saved."""
    net.to(device)
    model = net
    if compile:
        from models.compile import compile_network
        model = compile_network(model)
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def stop_if_not_finite(loss: torch.Tensor, what: str, where: Union[str, Callable[[], str]],
                       last_good: Optional[str], hint: str) -> None:
    """Raise ``NonFiniteLoss`` when ``loss`` is NaN or infinite: "<what> became <value>
    <where>", where the last good checkpoint is, and ``hint``. ``where`` may be a function,
    called only then (reading loss values is a device synchronisation per value)."""
    if torch.isfinite(loss):
        return
    where = where() if callable(where) else where
    back = (f"the last good state is {last_good} (--resume continues from it)"
            if last_good and os.path.isfile(last_good) else
            "no checkpoint was written before it")
    raise NonFiniteLoss(f"{what} became {float(loss.detach())} {where}. Training stopped; "
                         f"{back}. {hint}")


def divergence_hint(amp: str) -> str:
    """What to try after a non-finite loss, for a run with mixed precision ``amp``: a lower
    --lr, and a safer --amp only where there is one."""
    safer = {"fp16": " or --amp bf16 (or none) instead of fp16",
             "bf16": " or --amp none"}.get(amp, "")
    return f"Try a lower --lr{safer}, and check the data."


def optimizer_step(loss: torch.Tensor, optimizer, scaler=None) -> None:
    """Zero the gradients, backpropagate ``loss`` and step (through the fp16 ``scaler``
    when there is one)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def claim_outputs(folders: Mapping[str, Tuple[dict, Sequence[str]]], ids: Sequence[str],
                  overwrite: bool, info: DistInfo, done: Callable[[str], bool]
                  ) -> Tuple[List[int], List[int]]:
    """Claim each output folder ``d`` of ``folders`` (``d -> (made_by, extensions)``) for
    the outputs of ``made_by`` (``utils.manifest``: refuse a folder of other weights unless
    ``overwrite``; every folder is checked before any is claimed; the main process writes
    the manifests, every process waits for them) and split ``ids`` over the processes.
    Returns ``(mine, todo)``: this process's indices into ``ids``, and those whose outputs
    are not all written yet (``done(id)`` false)."""
    states = {d: check_folder(d, made_by, exts, overwrite)
              for d, (made_by, exts) in folders.items()}
    barrier(info)
    if info.is_main:
        for d, (made_by, exts) in folders.items():
            claim_folder(d, made_by, exts, states[d])
    barrier(info)
    mine = list(shard(range(len(ids)), info))
    return mine, [i for i in mine if not done(ids[i])]


def pending_outputs(out_dir: str, made_by: dict, ids: Sequence[str], overwrite: bool,
                    info: DistInfo, extension: str = ".png") -> Tuple[List[int], List[int]]:
    """``claim_outputs`` for one folder of ``<id><extension>`` files."""
    return claim_outputs({out_dir: (made_by, (extension,))}, ids, overwrite, info,
                         lambda i: os.path.isfile(os.path.join(out_dir, i + extension)))
