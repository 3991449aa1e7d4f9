"""The whole PCSS pipeline on the synthetic toy set, on a CPU, in a few minutes (`make demo`).

Steps, each one the project's own command line (so the demo is also a test of them):

1. ``python -m datasets.toy``: 4 colour/texture classes, 96 px images, VOC layout.
2. ``pretrain_toy.py``: a short self-supervised pre-training, saved in DeiT format. It
   stands in for the ImageNet DeiT-S weights of real runs: from scratch, a small ViT learns
   the classes but its patch attention spreads class evidence over the whole image, and the
   refined CAMs are no better than an untrained network's.
3. ``train_PCSS.py --finetune <that file>``: PCSS with the patch embedding and all blocks
   but the last frozen, a fixed 8-epoch schedule (no stopping on a validation score).
4. ``infer_PCSS.py``: CAM seeds (SPEC section 6) of the validation images, and the same for
   a randomly initialised network (the baseline).
5. ``evaluation.py``: seed mIoU over thresholds 0.30-0.79 (the toy set's best thresholds
   lie higher than VOC's 0.30-0.59).

Everything goes to ``experiment/<name>/`` (default ``experiment/demo``): ``summary.json``
(``miou``, ``threshold``, ``untrained_miou``, per-class IoU, timings), ``figure.png`` (images,
ground truth, CAM overlays, pseudo labels) and ``miou_vs_threshold.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
THRESHOLDS = ["0.30", "0.80", "0.01"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PCSS on the synthetic toy set, end to end",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--name", default="demo", help="output folder experiment/<name>")
    p.add_argument("--seed", type=int, default=0, help="seed of data, pre-training, training")
    p.add_argument("--num-images", type=int, default=3000, help="toy images (80%% train)")
    p.add_argument("--shortcut", action="store_true",
                   help="toy set with the frequency shortcut (class textures in backgrounds)")
    p.add_argument("--W", type=float, nargs=2, default=[0.5, 0.5],
                   help="PCSS loss weights (w_fss, w_mpc); 0 0 = plain multi-class-token model")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--keep-data", action="store_true",
                   help="reuse an existing toy set in experiment/<name>/toy")
    p.add_argument("--ablation", action="store_true",
                   help="instead: W = 0 0 against --W on the toy set with its frequency "
                        "shortcut (`make ablation`; default name ablation)")
    return p


class Runner:
    """Runs the project's commands from the repository root and times them."""

    def __init__(self):
        self.timings: Dict[str, float] = {}

    def __call__(self, step: str, args: List[str]) -> None:
        print(f"\n=== {step}: python {' '.join(args)}", flush=True)
        t0 = time.time()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable] + args, cwd=ROOT, env=env)
        self.timings[step] = round(time.time() - t0, 1)
        if res.returncode != 0:
            sys.exit(f"demo step '{step}' failed (exit {res.returncode}); see the output above")


def save_random_init(path: str, seed: int, device: str) -> None:
    """A randomly initialised toy network (the baseline), as a bare state dict."""
    import torch

    from models import build_arch
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(build_arch("toy", 4, 96).state_dict(), path)


def make_figure(exp: str, data: str, ids: List[str], threshold: float, path: str) -> None:
    """Rows of: image, ground truth, CAM overlay per label class, pseudo label."""
    from matplotlib.figure import Figure
    from PIL import Image

    from datasets.layout import layout
    from utils.io import load_cam_dict
    from utils.vis import cam_overlay, voc_palette

    lay = layout("TOY", data)
    pal = np.array(voc_palette(), np.uint8).reshape(-1, 3)
    cols = 5
    fig = Figure(figsize=(2.0 * cols, 2.1 * len(ids)), dpi=90)
    axes = fig.subplots(len(ids), cols, squeeze=False)
    for row, image_id in zip(axes, ids):
        rgb = np.asarray(Image.open(lay.image_path(image_id)).convert("RGB"))
        gt = np.asarray(Image.open(lay.gt_path(image_id)))
        cams = load_cam_dict(os.path.join(exp, "dict", image_id + ".npy"))
        keys = sorted(cams)
        stack = np.stack([np.full(gt.shape, threshold, np.float32)] + [cams[k] for k in keys])
        pred = np.array([0] + [k + 1 for k in keys])[stack.argmax(0)]
        panels = [(rgb, "image"), (pal[gt], "ground truth")]
        panels += [(cam_overlay(rgb, cams[k]), f"CAM {lay.classes[k]}") for k in keys[:2]]
        panels += [(np.full_like(rgb, 255), "")] * (2 - len(keys[:2]))
        panels += [(pal[pred], f"seed @ {threshold:.2f}")]
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)


def clean(exp: str, keep_data: bool) -> None:
    """Remove an earlier run's outputs (the toy set too, unless ``keep_data``)."""
    if not os.path.isdir(exp):
        return
    for entry in os.listdir(exp):
        if keep_data and entry == "toy":
            continue
        path = os.path.join(exp, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def prepare(run: Runner, args, name: str) -> tuple:
    """Toy set and pre-trained weights; returns (data folder, weights file, common flags)."""
    exp_rel = os.path.join("experiment", name)
    data_rel = os.path.join(exp_rel, "toy")
    common = ["--data-set", "TOY", "--data-path", data_rel, "--arch", "toy",
              "--device", args.device, "--seed", str(args.seed)]
    if not (args.keep_data and os.path.isfile(os.path.join(ROOT, data_rel, "cls_labels.npy"))):
        run("toy data", ["-m", "datasets.toy", "--out", data_rel, "--num-images",
                         str(args.num_images), "--seed", str(args.seed)]
            + (["--shortcut"] if args.shortcut else []))
    weights = os.path.join(exp_rel, "pretrain", "deit_toy.pth")
    run("pretrain", ["pretrain_toy.py", "--name", name, "--epochs",
                     str(args.pretrain_epochs), "--num_workers", "1", "--out", weights] + common)
    return data_rel, weights, common


def train_and_score(run: Runner, args, name: str, weights: str, common: List[str],
                    W: List[float]) -> dict:
    """PCSS fine-tuning with loss weights ``W``, seeds of the validation list, their score
    (``experiment/<name>/eval_cam.json``, returned)."""
    lr = 5e-4 * 512 / args.batch_size   # AdamW at 5e-4: the script scales --lr by batch/512
    run(f"train {name}", ["train_PCSS.py", "--name", name, "--finetune", weights,
                          "--freeze", "patch_embed.*", "blocks.[0-2].*", "--epochs",
                          str(args.epochs), "--batch_size", str(args.batch_size), "--lr",
                          str(lr), "--warmup-epochs", "0", "--augment", "light",
                          "--W", *map(str, W), "--val_start_epo", str(args.epochs),
                          "--num_workers", "1", "--no-tensorboard"] + common)
    return seeds_and_score(run, name, ["--load_epo", str(args.epochs - 1)], common)


def seeds_and_score(run: Runner, name: str, weights: List[str], common: List[str]) -> dict:
    run(f"seeds {name}", ["infer_PCSS.py", "--name", name, "--num_workers", "1"]
        + weights + common)
    run(f"score {name}", ["evaluation.py", "--name", name, "--task", "cam", "--thresholds",
                          *THRESHOLDS] + common)
    with open(os.path.join(ROOT, "experiment", name, "eval_cam.json")) as f:
        return json.load(f)


def main(args) -> dict:
    start = time.time()
    exp_rel = os.path.join("experiment", args.name)
    exp = os.path.join(ROOT, exp_rel)
    clean(exp, args.keep_data)
    run = Runner()
    data_rel, weights, common = prepare(run, args, args.name)
    trained = train_and_score(run, args, args.name, weights, common, args.W)
    untrained = os.path.join(exp_rel, "untrained", "random_init.pth")
    save_random_init(os.path.join(ROOT, untrained), args.seed, args.device)
    baseline = seeds_and_score(run, f"{args.name}/untrained", ["--load_pretrained", untrained],
                               common)

    sys.path.insert(0, ROOT)
    from datasets.layout import layout
    from utils.lists import read_id_list
    ids = read_id_list(layout("TOY", os.path.join(ROOT, data_rel)).eval_list)[:6]
    make_figure(exp, os.path.join(ROOT, data_rel), ids, trained["best_threshold"],
                os.path.join(exp, "figure.png"))
    summary = {"miou": trained["best_miou"], "threshold": trained["best_threshold"],
               "untrained_miou": baseline["best_miou"],
               "untrained_threshold": baseline["best_threshold"],
               "class_iou": trained["class_iou"], "seed": args.seed, "W": args.W,
               "shortcut": args.shortcut, "num_images": args.num_images,
               "timings_s": run.timings, "total_s": round(time.time() - start, 1)}
    with open(os.path.join(exp, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print(f"\n=== PCSS demo done in {summary['total_s']:.0f} s")
    print(f"seed mIoU {summary['miou']:.2f}% at threshold {summary['threshold']:.2f} "
          f"(randomly initialised network: {summary['untrained_miou']:.2f}%)")
    for cls, iou in trained["class_iou"].items():
        print(f"  {cls:>12s} {iou:6.2f}")
    print(f"pictures: {exp_rel}/figure.png, {exp_rel}/miou_vs_threshold.png, "
          f"FIM masks in {exp_rel}/fim/; summary: {exp_rel}/summary.json")
    return summary


def ablation(args) -> dict:
    """The plain multi-class-token baseline (W = 0 0) against PCSS (``--W``) on the same
    toy set with its frequency shortcut, from the same pre-trained weights."""
    start = time.time()
    if args.name == "demo":
        args.name = "ablation"
    exp_rel = os.path.join("experiment", args.name)
    clean(os.path.join(ROOT, exp_rel), args.keep_data)
    args.shortcut = True
    run = Runner()
    _, weights, common = prepare(run, args, args.name)
    results = {label: train_and_score(run, args, f"{args.name}/{label}", weights, common, W)
               for label, W in (("baseline_W0", [0.0, 0.0]), ("pcss", args.W))}
    summary = {k: {"miou": r["best_miou"], "threshold": r["best_threshold"],
                   "class_iou": r["class_iou"]} for k, r in results.items()}
    summary.update(seed=args.seed, W=args.W, timings_s=run.timings,
                   total_s=round(time.time() - start, 1))
    with open(os.path.join(ROOT, exp_rel, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n=== ablation on the toy set with a frequency shortcut (seed {args.seed}), "
          f"{summary['total_s']:.0f} s")
    print(f"  plain multi-class-token model (W 0 0): {summary['baseline_W0']['miou']:.2f}% "
          f"at {summary['baseline_W0']['threshold']:.2f}")
    print(f"  PCSS (W {args.W[0]:g} {args.W[1]:g}):{'':>18s}{summary['pcss']['miou']:.2f}% "
          f"at {summary['pcss']['threshold']:.2f}")
    print(f"summary: {exp_rel}/summary.json")
    return summary


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    ablation(parsed) if parsed.ablation else main(parsed)
