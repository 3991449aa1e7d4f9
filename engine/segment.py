"""The loops of the segmentation stage (MCTformer's ``seg/``): ``segmentation_step`` (the
training step ``engine.training`` runs over a ``SegBatchSampler`` stream) and ``predict``
(multi-scale, optional flip and CRF) over a list; ``train_seg.py`` and ``infer_seg.py`` wire
them together."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from datasets.classification import load_image
from engine.training import Step
from utils.runtime import autocast_context
from wsss.segmentation import seg_loss, seg_predict
from utils.vis import save_label_png


def segmentation_step(model, device: torch.device, amp: str = "none") -> Step:
    """The training step of the segmentation network (for ``engine.training.train_epoch``):
    a batch ``(images, masks)`` -> ``total``, the cross-entropy of ``seg_loss`` (label 255
    ignored)."""
    def step(batch) -> Dict[str, torch.Tensor]:
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        with autocast_context(device, amp):
            logits = model(images)
        return {"total": seg_loss(logits.float(), masks, ignore_index=255)}
    return step


def logged_loss(terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """What the segmentation log holds: the loss, as ``loss``."""
    return {"loss": terms["total"]}


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
