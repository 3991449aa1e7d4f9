"""CAM seeds of a trained PCSS model (SPEC section 6), plus pseudo labels, CRF and overlays.

    python infer_PCSS.py --name voc_pcss --load_epo 59 --dict
    python infer_PCSS.py --name voc_release --load_pretrained pretrained/eccv24_pcss_wsss_69.5_pascal.pth --dict
    python evaluation.py --name voc_pcss --task cam          # then pick the threshold
    python infer_PCSS.py --name voc_pcss --load_epo 59 --png # pseudo labels at that threshold

Writes under ``experiment/<name>/``: ``dict/<id>.npy`` (``{class index: H x W float32 map
in [0, 1]}`` for the image's labels, the format PSA / IRN read), ``png/<id>.png`` (palette
pseudo labels), ``crf/<alpha>/<id>.png`` (PSA-style dense CRF labels) and ``vis/<id>.jpg``
(overlays). Images whose outputs all exist are skipped unless ``--overwrite``. Under
torchrun every rank takes its share of the list.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from datasets.layout import layout
from datasets.wsss import build_dataset, collate_single, load_image
from engine.pcss import generate_seeds
from models import build_arch, load_model_weights
from utils.args import common_parent, default_input_size
from utils.dist import barrier, cleanup, init_distributed, local_device, shard
from utils.errors import UserError, run_main
from utils.io import save_cam_dict
from utils.runtime import autocast_context, resolve_device
from utils.vis import cam_panel, save_jpeg, save_label_png

DEFAULT_THRESHOLD = 0.45     # --png threshold when no evaluation has been run yet


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PCSS CAM inference", parents=[common_parent()])
    g = p.add_argument_group("weights")
    w = g.add_mutually_exclusive_group(required=True)
    w.add_argument("--load_epo", type=int,
                   help="epoch E of this run: experiment/<name>/ckpt/<EEE>net_trm.pth")
    w.add_argument("--load_pretrained", metavar="PATH",
                   help="a model state dict file, e.g. the released PCSS checkpoint")
    g = p.add_argument_group("what to compute")
    g.add_argument("--val_list", default=None,
                   help="image ids to process (default: the dataset's inference list, "
                        "train_aug.txt for VOC)")
    g.add_argument("--n_layers", type=int, default=12,
                   help="last blocks whose class-to-patch attention refines the CAMs")
    g.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="image scales whose maps are averaged before normalisation "
                        "(default 1.0 = the reference)")
    g.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="mixed precision for the forward pass (fp16 needs a GPU)")
    g = p.add_argument_group("outputs (default: --dict alone)")
    g.add_argument("--dict", action="store_true", help="write CAM dicts to dict/<id>.npy")
    g.add_argument("--png", action="store_true",
                   help="write pseudo labels argmax([threshold, CAMs]) to png/<id>.png")
    g.add_argument("--threshold", type=float, default=None,
                   help="background score for --png (default: best threshold of "
                        f"experiment/<name>/eval_cam.json, else {DEFAULT_THRESHOLD})")
    g.add_argument("--crf", action="store_true",
                   help="write dense-CRF labels to crf/<alpha>/<id>.png (PSA style; needs "
                        "pydensecrf2)")
    g.add_argument("--alphas", type=float, nargs="+", default=[4.0, 24.0],
                   help="background powers for --crf: bg = (1 - max CAM) ** alpha")
    g.add_argument("--vis", action="store_true",
                   help="write the image beside per-class CAM overlays to vis/<id>.jpg")
    g.add_argument("--overwrite", action="store_true",
                   help="recompute images whose outputs already exist")
    return p


# ------------------------------------------------------------------------------ weights
def checkpoint_path(exp_dir: str, load_epo: Optional[int], load_pretrained: Optional[str]) -> str:
    """The weights file named by --load_epo / --load_pretrained (a ``UserError`` if absent,
    listing the epochs the run did save)."""
    if load_pretrained is not None:
        return load_pretrained
    path = os.path.join(exp_dir, "ckpt", f"{load_epo:03d}net_trm.pth")
    if not os.path.isfile(path):
        saved = sorted(os.path.basename(f)[:3]
                       for f in glob.glob(os.path.join(exp_dir, "ckpt", "*net_trm.pth")))
        have = f"saved epochs: {', '.join(saved)}" if saved else "no epoch checkpoints saved"
        raise UserError(f"checkpoint not found: {path} ({have}). Check --name / --load_epo, "
                        f"or pass a state dict with --load_pretrained.")
    return path


def load_network(arch: str, num_classes: int, input_size: int, path: str,
                 device: torch.device) -> torch.nn.Module:
    """The model of ``arch`` with the weights of ``path`` (strict), in eval mode."""
    net = build_arch(arch, num_classes, img_size=input_size, drop_path_rate=0.0)
    load_model_weights(net, path)
    return net.to(device).eval()


# ------------------------------------------------------------------------------ outputs
def default_threshold(exp_dir: str) -> float:
    """Best threshold of the last ``evaluation.py --task cam`` run, else 0.45."""
    path = os.path.join(exp_dir, "eval_cam.json")
    if not os.path.isfile(path):
        return DEFAULT_THRESHOLD
    with open(path) as f:
        return float(json.load(f)["best_threshold"])


def pseudo_label(cams: Dict[int, np.ndarray], threshold: float, shape) -> np.ndarray:
    """argmax of [threshold, CAMs] as an H x W uint8 index image (0 background, k+1 class
    k; background wins ties), compared in float32 like the evaluator."""
    if not cams:
        return np.zeros(shape, np.uint8)
    keys = sorted(cams)
    stack = np.stack([np.full(shape, threshold, np.float32)]
                     + [np.asarray(cams[k], np.float32) for k in keys])
    lut = np.array([0] + [k + 1 for k in keys], np.uint8)
    return lut[np.argmax(stack, axis=0)]


def crf_label(rgb: np.ndarray, cams: Dict[int, np.ndarray], alpha: float,
              iterations: int = 10) -> np.ndarray:
    """PSA's ``_crf_with_alpha`` as labels: scores [(1 - max CAM)^alpha, CAMs], dense CRF
    (Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10, 10 iterations) on the
    RGB image, argmax mapped to 0 / class index + 1."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    H, W = rgb.shape[:2]
    if not cams:
        return np.zeros((H, W), np.uint8)
    keys = sorted(cams)
    v = np.stack([np.asarray(cams[k], np.float32) for k in keys])
    scores = np.concatenate([np.power(1 - v.max(0, keepdims=True), alpha), v])
    d = dcrf.DenseCRF2D(W, H, scores.shape[0])
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(rgb), compat=10)
    q = np.array(d.inference(iterations)).reshape(scores.shape[0], H, W)
    lut = np.array([0] + [k + 1 for k in keys], np.uint8)
    return lut[np.argmax(q, axis=0)]


def crf_available() -> bool:
    """Whether pydensecrf (the ``pydensecrf2`` package) can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401  (availability check)
    except ImportError:
        return False
    return True


@dataclass
class OutputPlan:
    """The outputs asked for: ``folders`` maps each kind to its folder, the kinds being
    "dict", "png", "vis" and, for ``--crf``, each alpha (a float)."""
    folders: Dict[Union[str, float], str]
    threshold: float                      # background score of the "png" pseudo labels
    class_names: Sequence[str]

    @classmethod
    def from_args(cls, args, exp_dir: str, class_names: Sequence[str]) -> "OutputPlan":
        folders: Dict[Union[str, float], str] = {
            kind: os.path.join(exp_dir, kind)
            for kind, on in (("dict", args.dict), ("png", args.png), ("vis", args.vis)) if on}
        if args.crf:
            folders.update({a: os.path.join(exp_dir, "crf", f"{a:g}") for a in args.alphas})
        threshold = args.threshold if args.threshold is not None else default_threshold(exp_dir)
        return cls(folders, threshold, class_names)

    def paths(self, image_id: str) -> Dict[Union[str, float], str]:
        ext = {"dict": ".npy", "vis": ".jpg"}
        return {kind: os.path.join(d, image_id + ext.get(kind, ".png"))
                for kind, d in self.folders.items()}

    def done(self, image_id: str) -> bool:
        return all(os.path.isfile(p) for p in self.paths(image_id).values())

    @property
    def needs_rgb(self) -> bool:
        return any(kind not in ("dict", "png") for kind in self.folders)

    def write(self, image_id: str, cams: Dict[int, np.ndarray], shape,
              rgb: Optional[np.ndarray]) -> None:
        """All asked-for outputs of one image (``rgb``: H x W x 3 uint8, for CRF / vis)."""
        for kind, path in self.paths(image_id).items():
            if kind == "dict":
                save_cam_dict(path, cams)
            elif kind == "png":
                save_label_png(path, pseudo_label(cams, self.threshold, shape))
            elif kind == "vis":
                save_jpeg(path, cam_panel(rgb, cams, self.class_names))
            else:
                save_label_png(path, crf_label(rgb, cams, alpha=kind))


def main(args) -> None:
    if not (args.dict or args.png or args.crf or args.vis):
        args.dict = True
    if args.crf and not crf_available():
        raise UserError("--crf needs the dense CRF package: pip install pydensecrf2")
    if any(s <= 0 for s in args.scales):
        raise UserError(f"--scales must be positive, got {args.scales}")
    exp_dir = os.path.join("experiment", args.name)
    lay = layout(args.data_set, args.data_path)
    list_path = args.val_list or lay.infer_list
    weights = checkpoint_path(exp_dir, args.load_epo, args.load_pretrained)
    input_size = default_input_size(args)

    device = resolve_device(args.device)
    info = init_distributed(device.type)
    device = local_device(info, device)
    autocast_context(device, args.amp)  # rejects a bad --amp before any work
    try:
        dataset = build_dataset(args.data_set, args.data_path, list_path, "infer")
        net = load_network(args.arch, lay.num_classes, input_size, weights, device)
        plan = OutputPlan.from_args(args, exp_dir, lay.classes)
        for d in plan.folders.values():
            os.makedirs(d, exist_ok=True)
        mine = shard(range(len(dataset)), info)
        todo = [i for i in mine if args.overwrite or not plan.done(dataset.ids[i])]
        if info.is_main:
            print(f"{len(dataset)} images in {list_path}; weights {weights}; "
                  f"{len(mine) - len(todo)} of this process's {len(mine)} already done"
                  + (f"; --png threshold {plan.threshold:.2f}" if "png" in plan.folders else ""))
        loader = DataLoader(Subset(dataset, todo), batch_size=1, shuffle=False,
                            num_workers=min(args.num_workers, len(todo)),
                            pin_memory=device.type == "cuda", collate_fn=collate_single)

        def write(image_id, cams):
            # the original image for CRF / overlays, or for the size of a label-less image
            rgb = (np.asarray(load_image(lay.image_path(image_id)))
                   if plan.needs_rgb or not cams else None)
            shape = next(iter(cams.values())).shape if cams else rgb.shape[:2]
            plan.write(image_id, cams, shape, rgb)

        n = generate_seeds(net, loader, device, write, args.amp, args.n_layers, args.scales,
                           progress=info.is_main, desc="infer")
        barrier(info)
        if info.is_main:
            where = " on rank 0" if info.distributed else ""
            print(f"wrote {n} images{where} to {', '.join(plan.folders.values())}")
    finally:
        cleanup(info)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
