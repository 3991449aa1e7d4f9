"""mIoU of CAM seeds over thresholds, or of any label predictions (pseudo labels, CRF,
random-walk masks, segmentation) against the ground truth (SPEC section 7), for VOC 2012,
COCO 2014 and the toy set.

    python evaluation.py --name voc_pcss --task cam                 # experiment/voc_pcss/dict
    python evaluation.py --name voc_pcss --task png
    python evaluation.py --name voc_pcss --task crf --dict_dir experiment/voc_pcss/crf/1
    python evaluation.py --name voc_pcss --task png --dict_dir experiment/voc_pcss/rw
    python evaluation.py --name toy --task cam --data-set TOY --data-path data/toy \\
        --thresholds 0.30 0.80 0.01

For ``cam`` every threshold is scored in one pass over the files; the table, the best
threshold and its per-class IoU are printed and a plot of mIoU against the threshold is
saved as ``experiment/<name>/miou_vs_threshold.png``. For label predictions the
segmentation reference's mIoU over the classes present (a nan-mean) is printed too where it
differs. The results always go to ``experiment/<name>/eval_<task>.json`` (later stages take
the seed threshold from ``eval_cam.json``) and, with ``--json``, to that path too. The
weights that made the predictions are named from the folder's ``manifest.json``.

No torch import here: the program starts in well under a second.
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from utils.args import parse_args, run_parent
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("PCSS evaluation", parents=[run_parent(), data_parent()])
    g = p.add_argument_group("evaluation")
    g.add_argument("--task", choices=("cam", "png", "crf"), default="cam",
                   help="cam: CAM dicts over thresholds; png: label PNGs; crf: PSA score "
                        "dicts (or their PNGs) in --dict_dir")
    g.add_argument("--dict_dir", default=None,
                   help="predictions (default experiment/<name>/dict for cam, "
                        "experiment/<name>/png for png; required for crf, e.g. "
                        "experiment/<name>/crf/1)")
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


def main(args) -> dict:
    """Score (``run``), print the report, write the JSON files and the plot."""
    import os

    from utils.report import format_class_table, format_threshold_table, write_json
    from utils.vis import plot_miou_curve

    res = run(args)
    exp_dir = os.path.join("experiment", args.name)
    outputs = [os.path.join(exp_dir, f"eval_{args.task}.json")] + ([args.json] if args.json else [])
    if args.task == "cam":
        print(format_threshold_table(res["thresholds"], res["miou"]))
        print(f"best mIoU {res['best_miou']:.2f} at threshold {res['best_threshold']:.2f}; "
              f"per class at that threshold:")
    else:
        differs = abs(res["nanmean_miou"] - res["best_miou"]) > 5e-3
        print(f"mIoU {res['best_miou']:.2f}"
              + (f" (over the classes present, as the segmentation reference counts: "
                 f"{res['nanmean_miou']:.2f})" if differs else "") + "; per class:")
    print(format_class_table(res["class_iou"]))
    for path in outputs:
        write_json(res, path)
    if args.task == "cam":
        outputs.append(os.path.join(exp_dir, "miou_vs_threshold.png"))
        plot_miou_curve(res["thresholds"], res["miou"], outputs[-1], title=args.name)
    print("wrote " + ", ".join(outputs))
    return res


def run(args) -> dict:
    """Score the predictions named by ``args``; returns the JSON record."""
    import os

    from datasets.layout import layout
    from utils.errors import UserError
    from wsss.metrics import (cam_miou, default_thresholds, iou_from_confusion,
                                  nanmean_miou, png_confusion)
    from utils.lists import read_id_list, resolve_list
    from utils.manifest import describe, read_manifest
    from utils.report import cam_results, class_names, png_results, prediction_dir

    exp_dir = os.path.join("experiment", args.name)
    pred_dir = prediction_dir(args.task, args.dict_dir, exp_dir)
    lay = layout(args.data_set, args.data_path, check=args.gt_dir is None)
    list_path = resolve_list(args.list, lay.root) if args.list else lay.eval_list
    ids = read_id_list(list_path)
    if args.gt_dir is None:
        gt_files, gt_dir = [lay.gt_path(i) for i in ids], lay.gt_dir(ids[0])
    else:
        gt_files = [os.path.join(args.gt_dir, lay.gt_name(i)) for i in ids]
        gt_dir = args.gt_dir
    K = args.num_classes or lay.num_classes + 1
    names = class_names(lay.classes, K)
    workers = max(1, args.num_workers)
    made_by = describe(read_manifest(pred_dir))
    print(f"{args.task}: {len(ids)} images of {list_path}, predictions {pred_dir}, "
          f"ground truth {gt_dir}\npredictions made by {made_by}")
    if args.task == "cam":
        th = default_thresholds(*args.thresholds)
        if th.size == 0:
            raise UserError(f"--thresholds {args.thresholds}: no threshold in that range")
        miou, class_iou = cam_miou(pred_dir, gt_dir, ids, K, th, workers, progress=True,
                                   gt_files=gt_files)
        res = cam_results(th, miou, class_iou, names)
    else:
        ext = ".png"
        if args.task == "crf" and not any(n.endswith(".png") for n in os.listdir(pred_dir)):
            ext = ".npy"     # score dicts (.npy or .sdz: read alike)
        conf = png_confusion(pred_dir, gt_dir, ids, K, workers, progress=True,
                             gt_files=gt_files, ext=ext)
        miou, class_iou = iou_from_confusion(conf)
        res = png_results(float(miou), class_iou, names, nanmean_miou(conf))
    return {"task": args.task, "dict_dir": pred_dir, "list": list_path, "num_images": len(ids),
            "made_by": made_by, **res}


if __name__ == "__main__":
    run_main(lambda: main(parse_args(get_args_parser())))
