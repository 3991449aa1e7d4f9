"""The loops of the seed stage (deit's ``engine.py`` habit): ``pcss_step`` (the training
step ``engine.training`` runs), ``fim_round``, ``generate_seeds`` and ``validate`` take
explicit arguments and return plain values; ``train_PCSS.py`` and ``infer_PCSS.py`` wire them
together."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from datasets.classification import load_image
from engine.training import Step
from models.pcss import PCSSObjective
from wsss.cam import cam_dict
from utils.dist import DistInfo, barrier
from wsss.metrics import cam_miou, first_peak
from wsss.frequency import FrequencyInfluence
from wsss.scorefile import save_cam_dict
from utils.manifest import claim_folder, producer
from wsss.pseudo import crf_score_dict, pseudo_label, score_dict_label
from wsss.scorefile import CAM_SCALE, CRF_SCALE, FORMATS, save_score_dict, score_file
from utils.runtime import autocast_context
from utils.vis import cam_panel, save_jpeg, save_label_png


def pcss_step(model, objective: PCSSObjective, epoch: int, masks: Optional[torch.Tensor],
              device: torch.device, amp: str = "none") -> Step:
    """The training step of the seed stage in epoch ``epoch`` (for
    ``engine.training.train_epoch``): a batch ``(images, labels)`` -> every term of
    ``objective`` and their ``total`` (``PCSSObjective.losses``; the MPC permutation drawn
    first, as in the reference). ``masks``: the FIM masks when ``objective.uses_fss(epoch)``,
    else None."""
    if masks is not None:
        masks = masks.to(device=device, dtype=torch.float32)

    def step(batch) -> Dict[str, torch.Tensor]:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        perm = objective.draw_perm(images.shape[0])
        with autocast_context(device, amp):
            return objective.losses(model, images, labels, epoch, masks, perm)
    return step


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
    """CAM dicts (docs/method.md, CAM inference) of every item ``(image, label, id)``
    of ``loader`` (collated with ``datasets.collate_single``), handed to
    ``write(id, cams)``. Returns the count."""
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


def seeds_from_dicts(dict_dir: str, ids: Sequence[str],
                     write: Callable[[str, Dict[int, np.ndarray]], None],
                     progress: bool = True, desc: str = "seeds from dict/") -> int:
    """``generate_seeds`` without the network: the CAM dicts of ``ids`` read back from
    ``dict_dir`` handed to ``write(id, cams)``. Returns the count."""
    from wsss.scorefile import load_cam_dict

    for image_id in tqdm(ids, desc=desc, unit="img", dynamic_ncols=True, disable=not progress):
        write(image_id, load_cam_dict(score_file(dict_dir, image_id)))
    return len(ids)


_EXT = {"png": ".png", "vis": ".jpg", "crf_png": ".png"}
_SCALE = {"dict": CAM_SCALE, "crf": CRF_SCALE}


@dataclass
class SeedWriter:
    """The ``generate_seeds`` writer of ``infer_PCSS.py``: every asked-for output of an
    image. ``folders`` maps an output kind to its folder; kinds are ``"dict"``, ``"png"``,
    ``"vis"`` and, per CRF alpha a, ``("crf", a)`` (PSA score dicts) and ``("crf_png", a)``.
    ``formats`` gives the file format (``wsss.scorefile.FORMATS``) of the "dict" and "crf"
    kinds."""
    folders: Dict[Union[str, Tuple[str, float]], str]
    threshold: float                       # background score of the "png" pseudo labels
    class_names: Sequence[str]
    image_path: Callable[[str], str]       # id -> RGB image file (CRF, overlays, sizes)
    formats: Dict[str, str] = field(default_factory=lambda: {"dict": "psa", "crf": "compact"})

    @classmethod
    def plan(cls, folder: Callable[..., str], dict: bool = True, png: bool = False,
             vis: bool = False, crf_alphas: Sequence[float] = (),
             crf_png_alphas: Sequence[float] = (), **kw) -> "SeedWriter":
        """The writer of the asked-for outputs; ``folder(kind)`` / ``folder(kind, alpha)``
        names their folders (``engine.run_folder.RunFolder.seed_folder``)."""
        folders: Dict[Union[str, Tuple[str, float]], str] = {
            kind: folder(kind)
            for kind, on in (("dict", dict), ("png", png), ("vis", vis)) if on}
        for kind, alphas in (("crf", crf_alphas), ("crf_png", crf_png_alphas)):
            folders.update({(kind, a): folder(kind, a) for a in alphas})
        return cls(folders, **kw)

    def _kind(self, folder: str) -> str:
        kind = next(k for k, d in self.folders.items() if d == folder)
        return kind[0] if isinstance(kind, tuple) else kind

    def _ext(self, kind: str) -> str:
        return FORMATS[self.formats[kind]] if kind in _SCALE else _EXT[kind]

    def extensions(self, folder: str) -> Tuple[str, ...]:
        kind = self._kind(folder)
        return tuple(FORMATS.values()) if kind in _SCALE else (_EXT[kind],)

    def producers(self, weights: dict, **settings) -> Dict[str, dict]:
        """Each folder's manifest record: the weights and the settings its outputs depend
        on (the threshold for png, the alpha for CRF folders, the file format when it is
        not PSA's)."""
        out = {}
        for kind, folder in self.folders.items():
            extra = {"threshold": self.threshold} if kind == "png" else {}
            if isinstance(kind, tuple):
                extra = {"alpha": kind[1]}
            name = kind[0] if isinstance(kind, tuple) else kind
            if self.formats.get(name, "psa") != "psa":
                extra["format"] = self.formats[name]
            out[folder] = producer(weights, **settings, **extra)
        return out

    def paths(self, image_id: str) -> Dict[Union[str, Tuple[str, float]], str]:
        return {kind: os.path.join(d, image_id + self._ext(kind[0] if isinstance(kind, tuple)
                                                          else kind))
                for kind, d in self.folders.items()}

    def done(self, image_id: str) -> bool:
        return all(os.path.isfile(p) for p in self.paths(image_id).values())

    def __call__(self, image_id: str, cams: Dict[int, np.ndarray]) -> None:
        """Write every output of one image (the RGB file is read once, when needed)."""
        rgb, crf = None, {}
        if not cams or any(k == "vis" or isinstance(k, tuple) for k in self.folders):
            rgb = np.asarray(load_image(self.image_path(image_id)))
        shape = next(iter(cams.values())).shape if cams else rgb.shape[:2]
        for kind, path in self.paths(image_id).items():
            if isinstance(kind, tuple) and kind[1] not in crf:
                crf[kind[1]] = crf_score_dict(rgb, cams, kind[1])
            if kind == "dict":
                save_score_dict(path, cams, self.formats["dict"], CAM_SCALE)
            elif kind == "png":
                save_label_png(path, pseudo_label(cams, self.threshold, shape))
            elif kind == "vis":
                save_jpeg(path, cam_panel(rgb, cams, self.class_names))
            elif kind[0] == "crf":
                save_score_dict(path, crf[kind[1]], self.formats["crf"], CRF_SCALE,
                                dither=True)
            else:
                save_label_png(path, score_dict_label(crf[kind[1]]))


def validate(model, loader, names: Sequence[str], gt_files: Sequence[str], out_dir: str,
             device: torch.device, thresholds: Sequence[float], num_classes: int,
             amp: str = "none", info: DistInfo = DistInfo(), progress: bool = True,
             made_by: Optional[dict] = None) -> Optional[Tuple[float, float, np.ndarray]]:
    """Seeds of this rank's share of the validation list (``loader``) into ``out_dir``
    (emptied first; its manifest records ``made_by``), then on the main process the
    threshold search (docs/method.md, Seed evaluation) over all ``names``. Returns
    ``(miou, threshold, miou_per_threshold)`` on the main process, None elsewhere."""
    if info.is_main:
        claim_folder(out_dir, made_by or producer(None), (".npy",), "replace")
    barrier(info)
    generate_seeds(model, loader, device, dict_writer(out_dir), amp,
                   progress=progress and info.is_main, desc="validation seeds")
    barrier(info)
    if not info.is_main:
        return None
    miou, _ = cam_miou(out_dir, "", names, num_classes=num_classes + 1,
                       thresholds=thresholds, gt_files=gt_files)
    t, best = first_peak(thresholds, miou)
    return best, t, miou
