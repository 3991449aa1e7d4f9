"""mIoU of CAM seeds, pseudo-label PNGs or CRF labels against the ground truth (SPEC
section 7), for VOC 2012, COCO 2014 and the toy set.

    python evaluation.py --name voc_pcss --task cam                 # experiment/voc_pcss/dict
    python evaluation.py --name voc_pcss --task png
    python evaluation.py --name voc_pcss --task crf --dict_dir experiment/voc_pcss/crf/4
    python evaluation.py --name toy --task cam --data-set TOY --data-path data/toy \\
        --thresholds 0.30 0.80 0.01

For ``cam`` every threshold is scored in one pass over the files; the table, the best
threshold and its per-class IoU are printed and a plot of mIoU against the threshold is
saved as ``experiment/<name>/miou_vs_threshold.png``. The results always go to
``experiment/<name>/eval_<task>.json`` (``infer_PCSS.py --png`` takes its default threshold
from ``eval_cam.json``) and, with ``--json``, to that path too.

No torch import here: the program starts in well under a second.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from datasets.layout import Layout, layout
from utils.args import common_parent
from utils.errors import UserError, run_main
from utils.evaluation import cam_miou, default_thresholds, png_miou
from utils.lists import read_id_list
from utils.vis import plot_miou_curve

DEFAULT_DIRS = {"cam": "dict", "png": "png"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PCSS seed evaluation", parents=[common_parent()])
    g = p.add_argument_group("evaluation")
    g.add_argument("--task", choices=("cam", "png", "crf"), default="cam",
                   help="cam: CAM dicts over thresholds; png / crf: index PNG predictions")
    g.add_argument("--dict_dir", default=None,
                   help="predictions (default experiment/<name>/dict for cam, "
                        "experiment/<name>/png for png; required for crf, e.g. "
                        "experiment/<name>/crf/4)")
    g.add_argument("--list", default=None,
                   help="a list file, or a split name looked up in the dataset "
                        "(train -> ImageSets/Segmentation/train.txt); default: the dataset's "
                        "evaluation list (train.txt for VOC)")
    g.add_argument("--gt_dir", default=None,
                   help="folder of ground-truth index PNGs (default: the dataset's)")
    g.add_argument("--thresholds", type=float, nargs=3, default=[0.30, 0.60, 0.01],
                   metavar=("START", "STOP", "STEP"),
                   help="cam thresholds START, START+STEP, ... below STOP "
                        "(default 0.30 0.60 0.01)")
    g.add_argument("--num_classes", type=int, default=None,
                   help="classes including background (default: the dataset's + 1)")
    g.add_argument("--json", default=None, metavar="PATH",
                   help="also write the results to this JSON file")
    return p


# ------------------------------------------------------------------------------- inputs
def resolve_list(value: str, lay: Layout) -> str:
    """A list file path as given, or a split name looked up under the dataset root."""
    if os.path.isfile(value) or os.sep in value or value.endswith(".txt"):
        return value
    candidates = [os.path.join(lay.root, "ImageSets", "Segmentation", value + ".txt"),
                  os.path.join(lay.root, value + ".txt")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise UserError(f"--list {value}: neither a file nor a split of {lay.root} "
                    f"(looked for {' and '.join(candidates)})")


def prediction_dir(task: str, dict_dir: str, exp_dir: str) -> str:
    if dict_dir is None:
        if task == "crf":
            raise UserError("--task crf needs --dict_dir, e.g. "
                            f"{os.path.join(exp_dir, 'crf', '4')}")
        dict_dir = os.path.join(exp_dir, DEFAULT_DIRS[task])
    if not os.path.isdir(dict_dir):
        raise UserError(f"prediction folder not found: {dict_dir}. Run infer_PCSS.py "
                        f"(--dict / --png / --crf) for this run first, or pass --dict_dir.")
    return dict_dir


def class_names(lay: Layout, num_classes: int) -> List[str]:
    names = ["background", *lay.classes]
    return names if len(names) == num_classes else [f"class {k}" for k in range(num_classes)]


# ------------------------------------------------------------------------------ results
def cam_results(thresholds: np.ndarray, miou: np.ndarray, class_iou: np.ndarray,
                names: Sequence[str]) -> dict:
    """The JSON record of a threshold sweep (percent; best = highest mIoU, lowest t)."""
    best = int(np.argmax(miou))
    return {"thresholds": [round(float(t), 6) for t in thresholds],
            "miou": [float(m) for m in miou],
            "best_miou": float(miou[best]), "best_threshold": float(thresholds[best]),
            "class_iou": dict(zip(names, map(float, class_iou[best]))),
            "class_iou_all": [[float(v) for v in row] for row in class_iou]}


def png_results(miou: float, class_iou: np.ndarray, names: Sequence[str]) -> dict:
    """The JSON record of a label-PNG evaluation (no thresholds: empty lists)."""
    return {"thresholds": [], "miou": [], "best_miou": float(miou), "best_threshold": None,
            "class_iou": dict(zip(names, map(float, class_iou)))}


def format_threshold_table(thresholds: Sequence[float], miou: Sequence[float]) -> str:
    best = int(np.argmax(miou))
    rows = [f"{'threshold':>9}  {'mIoU':>6}"]
    rows += [f"{t:9.2f}  {m:6.2f}{'  <- best' if i == best else ''}"
             for i, (t, m) in enumerate(zip(thresholds, miou))]
    return "\n".join(rows)


def format_class_table(class_iou: Dict[str, float]) -> str:
    width = max(len(n) for n in class_iou)
    return "\n".join(f"{n:>{width}}  {v:6.2f}" for n, v in class_iou.items())


def evaluate(args) -> dict:
    """Score the predictions named by ``args``; returns the JSON record (with the task,
    folders and image count added)."""
    exp_dir = os.path.join("experiment", args.name)
    pred_dir = prediction_dir(args.task, args.dict_dir, exp_dir)
    lay = layout(args.data_set, args.data_path, check=args.gt_dir is None)
    list_path = resolve_list(args.list, lay) if args.list else lay.eval_list
    ids = read_id_list(list_path)
    if args.gt_dir is None:
        gt_files, gt_dir = [lay.gt_path(i) for i in ids], lay.gt_dir(ids[0])
    else:
        gt_files, gt_dir = [os.path.join(args.gt_dir, lay.gt_name(i)) for i in ids], args.gt_dir
    K = args.num_classes or lay.num_classes + 1
    names = class_names(lay, K)
    workers = max(1, args.num_workers)
    print(f"{args.task}: {len(ids)} images of {list_path}, predictions {pred_dir}, "
          f"ground truth {gt_dir}")
    if args.task == "cam":
        th = default_thresholds(*args.thresholds)
        if th.size == 0:
            raise UserError(f"--thresholds {args.thresholds}: no threshold in that range")
        miou, class_iou = cam_miou(pred_dir, gt_dir, ids, K, th, workers, progress=True,
                                   gt_files=gt_files)
        res = cam_results(th, miou, class_iou, names)
    else:
        miou, class_iou = png_miou(pred_dir, gt_dir, ids, K, workers, progress=True,
                                   gt_files=gt_files)
        res = png_results(miou, class_iou, names)
    return {"task": args.task, "dict_dir": pred_dir, "list": list_path,
            "num_images": len(ids), **res}


def write_json(res: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def main(args) -> None:
    res = evaluate(args)
    exp_dir = os.path.join("experiment", args.name)
    outputs = [os.path.join(exp_dir, f"eval_{args.task}.json")] + ([args.json] if args.json else [])
    if args.task == "cam":
        print(format_threshold_table(res["thresholds"], res["miou"]))
        print(f"best mIoU {res['best_miou']:.2f} at threshold {res['best_threshold']:.2f}; "
              f"per class at that threshold:")
    else:
        print(f"mIoU {res['best_miou']:.2f}; per class:")
    print(format_class_table(res["class_iou"]))
    for path in outputs:
        write_json(res, path)
    if args.task == "cam":
        outputs.append(os.path.join(exp_dir, "miou_vs_threshold.png"))
        plot_miou_curve(res["thresholds"], res["miou"], outputs[-1], title=args.name)
    print("wrote " + ", ".join(outputs))

if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
