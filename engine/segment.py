"""The loops of the segmentation stage (MCTformer's ``seg/``): ``train_steps`` over a
``SegBatchSampler`` stream and ``predict`` (multi-scale, optional flip and CRF) over a list;
``train_seg.py`` and ``infer_seg.py`` wire them together."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from datasets.classification import load_image
from engine.common import divergence_hint, optimizer_step, stop_if_not_finite
from utils.dist import DistInfo, all_reduce_sum
from utils.runtime import autocast_context
from wsss.segmentation import seg_loss, seg_predict
from utils.vis import save_label_png


def train_steps(model, loader, optimizer, device: torch.device, steps_per_epoch: int,
                first_step: int = 0, amp: str = "none", scaler=None,
                info: DistInfo = DistInfo(), progress: bool = True,
                on_epoch_end: Optional[Callable[[int, Dict[str, float]], None]] = None,
                last_good: Optional[str] = None) -> None:
    """Train on every batch of ``loader`` (``(image, mask)`` batches of the reference's
    stream); after each ``steps_per_epoch`` batches ``on_epoch_end(epoch, {"loss": mean})``
    runs (checkpoint, log). ``optimizer`` is a ``utils.optim.PolySGD`` (its own poly
    schedule per step). ``first_step`` is the step a resumed run starts at."""
    model.train()
    step = first_step
    total = torch.zeros(2, dtype=torch.float64, device=device)
    bar = tqdm(loader, desc="segmentation", unit="batch", dynamic_ncols=True,
               initial=first_step, total=first_step + len(loader),
               disable=not (progress and info.is_main))
    for images, masks in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast_context(device, amp):
            logits = model(images)
        loss = seg_loss(logits.float(), masks, ignore_index=255)
        stop_if_not_finite(loss, "the segmentation loss", f"at step {step}", last_good,
                           divergence_hint(amp))
        optimizer_step(loss, optimizer, scaler)
        total += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64,
                                                                  device=device)])
        step += 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(total[0] / total[1]):.4f}", refresh=False)
        if step % steps_per_epoch == 0:
            summed = all_reduce_sum(total, info)
            if on_epoch_end is not None:
                on_epoch_end(step // steps_per_epoch - 1,
                             {"loss": float(summed[0] / summed[1].clamp(min=1))})
            total.zero_()
            model.train()


@dataclass
class LabelPngWriter:
    """``write(id, labels)``: ``out_dir/<id>.png`` palette PNGs (atomic); picklable, so it
    can run in a worker process."""
    out_dir: str

    def __call__(self, image_id: str, labels: np.ndarray) -> None:
        save_label_png(os.path.join(self.out_dir, image_id + ".png"), labels)


def present_classes(probs: np.ndarray) -> np.ndarray:
    """The channels of ``probs`` (K x H x W) that win some pixel, with channel 0 (the
    background) always among them; ascending."""
    return np.union1d([0], np.unique(np.argmax(probs, axis=0)))


@dataclass
class SegFinish:
    """The CPU part of a prediction: the dense CRF (preset "seg") on the merged map with the
    RGB file at ``image_path(id)`` when ``crf``, the argmax, ``write(id, labels)``. Called
    with ``(id, probs, classes)``: ``probs`` holds the channels ``classes`` (None: all)."""
    write: Callable[[str, np.ndarray], None]
    crf: bool = False
    image_path: Optional[Callable[[str], str]] = None

    def __call__(self, image_id: str, probs: np.ndarray,
                 classes: Optional[np.ndarray] = None) -> None:
        from wsss.crf import dense_crf

        if self.crf:
            rgb = np.asarray(load_image(self.image_path(image_id)))
            probs = dense_crf(rgb, probs, kind="seg")
        labels = np.argmax(probs, axis=0)
        if classes is not None:
            labels = classes[labels]
        self.write(image_id, labels.astype(np.uint8))


@torch.no_grad()
def predict(net, loader, device: torch.device,
            write: Callable[[str, np.ndarray], None], scales: Sequence[float],
            flip: bool = False, merge: str = "max", crf: bool = False,
            image_path: Optional[Callable[[str], str]] = None, amp: str = "none",
            progress: bool = True, crf_labels: str = "all",
            submit: Optional[Callable] = None) -> int:
    """Predictions of every ``(image, label, id)`` of ``loader`` (native sizes, batch 1):
    ``seg_predict`` over ``scales`` (+ flip, max or mean merge), optionally the dense CRF
    (preset "seg") on the merged map with the RGB file at ``image_path(id)``, over all
    classes (``crf_labels`` "all", the reference) or only those the prediction uses plus the
    background ("present"); the label map (uint8, argmax) goes to ``write(id, labels)``.
    ``submit(job, *args)`` (e.g. ``engine.pool.WorkPool.submit``: ``write`` must then be
    picklable) runs the CRF and the write; default inline. Returns the count."""
    if crf_labels not in ("all", "present"):
        raise ValueError(f"crf_labels must be 'all' or 'present', not {crf_labels!r}")
    finish = SegFinish(write, crf, image_path)
    net.eval()
    n = 0
    for image, _, image_id in tqdm(loader, desc="predict", unit="img", dynamic_ncols=True,
                                   disable=not progress):
        with autocast_context(device, amp):
            probs = seg_predict(net, image[None].to(device, non_blocking=True), scales=scales,
                                flip=flip, merge=merge)
        probs = probs.float().cpu().numpy()
        classes = None
        if crf and crf_labels == "present":
            classes = present_classes(probs)
            probs = np.ascontiguousarray(probs[classes])
        (submit or (lambda job, *a: job(*a)))(finish, image_id, probs, classes)
        n += 1
    return n
