"""The loops of the seed stage (deit's ``engine.py`` habit): ``train_one_epoch``,
``fim_round``, ``generate_seeds`` and ``validate`` take explicit arguments and return plain
values; ``train_PCSS.py`` and ``infer_PCSS.py`` wire them together."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from models.pcss import PCSSConfig
from utils.cam import cam_dict
from utils.dist import DistInfo, all_reduce_sum, barrier
from utils.errors import NonFiniteLoss
from utils.evaluation import cam_miou, first_peak
from utils.frequency import FrequencyInfluence
from utils.io import save_cam_dict
from utils.runtime import autocast_context

LOSS_NAMES = ("cls", "cls_fss", "cam_fss", "cls_mpc", "cam_mpc")


def train_one_epoch(model, loader, optimizer, device: torch.device, epoch: int,
                    cfg: PCSSConfig, masks: Optional[torch.Tensor], amp: str = "none",
                    scaler=None, info: DistInfo = DistInfo(), progress: bool = True
                    ) -> Dict[str, float]:
    """One epoch of PCSS; returns the epoch means ``loss_<term>`` (over all ranks)."""
    model.train()
    if masks is not None:
        masks = masks.to(device=device, dtype=torch.float32)
    sums = torch.zeros(len(LOSS_NAMES) + 1, dtype=torch.float64, device=device)
    bar = tqdm(loader, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True,
               disable=not (progress and info.is_main))
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        perm = torch.randperm(images.shape[0]) if cfg.w_mpc > 0 else None
        with autocast_context(device, amp):
            L = cfg.losses(model, images, labels, epoch, masks, perm)
        total = L["total"]
        if not torch.isfinite(total):
            raise NonFiniteLoss(
                f"the loss became {float(total)} at epoch {epoch}, step {step} "
                f"({', '.join(f'{k}={float(L[k]):.4g}' for k in LOSS_NAMES)}). Training stopped; "
                f"the last good checkpoint is ckpt/last.pth. Try a lower --lr, --amp none "
                f"(or bf16 instead of fp16), and check the data.")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        batch = torch.stack([L[k].detach().double() for k in LOSS_NAMES])
        sums[:-1] += batch * images.shape[0]
        sums[-1] += images.shape[0]
        if bar.disable is False and step % 5 == 0:
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in zip(LOSS_NAMES, batch)
                             if float(v) != 0}, refresh=False)
    sums = all_reduce_sum(sums, info)
    n = max(float(sums[-1]), 1.0)
    return {f"loss_{k}": float(sums[i]) / n for i, k in enumerate(LOSS_NAMES)}


@torch.no_grad()
def fim_round(model, loader, fim: FrequencyInfluence, device: torch.device,
              amp: str = "none", progress: bool = True) -> torch.Tensor:
    """One frequency-influence round over ``loader`` (deterministic transform, shuffled);
    returns the new C x S x S masks. Every rank must see the same batches."""
    model.eval()
    fim.start_round()
    show = progress and fim.shard[0] == 0
    with tqdm(loader, desc="FIM round", unit="batch", dynamic_ncols=True,
              disable=not show) as bar:
        for images, labels in bar:
            with autocast_context(device, amp):
                done = fim.accumulate(model, images.to(device, non_blocking=True), labels)
            bar.set_postfix(budget_left=int(fim.budget.clamp(min=0).sum()), refresh=False)
            if done:
                break
    return fim.finish_round()


@torch.no_grad()
def generate_seeds(model, loader, device: torch.device,
                   write: Callable[[str, Dict[int, np.ndarray]], None], amp: str = "none",
                   n_layers: int = 12, scales: Sequence[float] = (1.0,),
                   progress: bool = True, desc: str = "seeds") -> int:
    """CAM dicts (SPEC section 6) of every item ``(image, label, id)`` of ``loader``
    (collated with ``datasets.collate_single``), handed to ``write(id, cams)``. Returns the count."""
    model.eval()
    n = 0
    for image, label, image_id in tqdm(loader, desc=desc, unit="img", dynamic_ncols=True,
                                       disable=not progress):
        with autocast_context(device, amp):
            cams = cam_dict(model, image.unsqueeze(0).to(device, non_blocking=True), label,
                            n_layers=n_layers, scales=scales)
        write(image_id, cams)
        n += 1
    return n


def dict_writer(out_dir: str) -> Callable[[str, Dict[int, np.ndarray]], None]:
    """A ``generate_seeds`` writer: ``out_dir/<id>.npy`` CAM dicts."""
    os.makedirs(out_dir, exist_ok=True)
    return lambda image_id, cams: save_cam_dict(os.path.join(out_dir, f"{image_id}.npy"), cams)


def validate(model, loader, names: Sequence[str], gt_files: Sequence[str], out_dir: str,
             device: torch.device, thresholds: Sequence[float], num_classes: int,
             amp: str = "none", info: DistInfo = DistInfo(), progress: bool = True
             ) -> Optional[Tuple[float, float, np.ndarray]]:
    """Seeds of this rank's share of the validation list (``loader``), then on the main
    process the threshold search of SPEC section 7 over all ``names``. Returns
    ``(miou, threshold, miou_per_threshold)`` on the main process, None elsewhere."""
    generate_seeds(model, loader, device, dict_writer(out_dir), amp,
                   progress=progress and info.is_main, desc="validation seeds")
    barrier(info)
    if not info.is_main:
        return None
    miou, _ = cam_miou(out_dir, "", names, num_classes=num_classes + 1,
                       thresholds=thresholds, gt_files=gt_files)
    t, best = first_peak(thresholds, miou)
    return best, t, miou
