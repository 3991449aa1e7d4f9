"""The whole pipeline on the synthetic toy set, on a CPU, in minutes (`make demo`): image
labels -> seeds -> pseudo masks -> a segmentation network.

Every step is the project's own command line (so the demo is also a test of them):

1. ``python -m datasets.toy``: 4 colour/texture classes, 96 px images, VOC layout.
2. ``pretrain_toy.py``: a short self-supervised pre-training, saved in DeiT format. It
   stands in for the ImageNet DeiT-S weights of real runs: from scratch, a small ViT learns
   the classes but its patch attention spreads class evidence over the whole image.
3. ``train_PCSS.py --finetune <that file>``: PCSS, patch embedding and all blocks but the
   last frozen, a fixed schedule (no stopping on a validation score).
4. ``infer_PCSS.py --dict --crf``: seeds of the training list and their CRF score dicts at
   alphas 0.5 and 2 (``--crf-alphas``); ``evaluation.py --task cam`` scores the seeds (threshold
   search over 0.30-0.79: the toy set's best thresholds lie higher than VOC's), and the same
   for a randomly initialised network on ``--baseline-images`` train ids (the baseline).
5. ``train_aff.py`` + ``infer_aff.py``: AffinityNet (small backbone) on the CRF-confident
   regions, then the random walk: pseudo masks of the training list, scored.
6. ``train_seg.py`` + ``infer_seg.py``: a small segmentation network on those masks,
   multi-scale inference on the validation list, scored.

Everything goes to ``experiment/<name>/`` (default ``experiment/demo``): ``summary.json``
(``miou``, ``threshold``, ``untrained_miou`` of the seeds, ``mask_miou``, ``seg_miou``,
per-class IoU, per-stage timings), ``figure.png`` (image | ground truth | CAM | seed |
pseudo mask | segmentation) and ``miou_vs_threshold.png``. ``make ablation`` runs the seed
stage with ``--W 0 0`` and with PCSS for three seeds each on the toy set with its frequency
shortcut, and prints means and standard deviations.
"""
from __future__ import annotations

import argparse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PCSS on the synthetic toy set, end to end",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--name", default=None,
                   help="output folder experiment/<name> (default demo, or ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and of every stage")
    p.add_argument("--num-images", type=int, default=1600, help="toy images (80%% train)")
    p.add_argument("--shortcut", action="store_true",
                   help="toy set with the frequency shortcut (class textures in backgrounds)")
    p.add_argument("--W", type=float, nargs=2, default=[0.5, 0.5],
                   help="PCSS loss weights (w_fss, w_mpc); 0 0 = plain multi-class-token model")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=8, help="PCSS epochs")
    p.add_argument("--batch-size", type=int, default=32, help="PCSS batch size")
    p.add_argument("--aff-epochs", type=int, default=2, help="AffinityNet epochs")
    p.add_argument("--seg-epochs", type=int, default=4, help="segmentation epochs")
    p.add_argument("--crf-alphas", nargs=2, default=["0.5", "2"],
                   help="CRF alphas (low, high) of the score dicts AffinityNet learns from. The "
                        "reference's 1 and 12 suit VOC's CAMs; the toy network's are hotter "
                        "(best threshold near 0.6): CRF label mIoU on the train list is 83%% at "
                        "0.5, 81%% at 1, 76%% at 2, 38%% at 12")
    p.add_argument("--baseline-images", type=int, default=400,
                   help="train ids on which the untrained network's seeds are scored")
    p.add_argument("--device", default="auto")
    p.add_argument("--keep-data", action="store_true",
                   help="reuse an existing toy set in experiment/<name>/toy")
    p.add_argument("--ablation", action="store_true",
                   help="instead: the seed stage with W = 0 0 against --W, three seeds each, on "
                        "the toy set with its frequency shortcut (`make ablation`)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the ablation")
    return p


def main(args) -> dict:
    """The demo (one pipeline run, report, figure), or the ablation (seed stage only,
    several seeds, two loss weightings)."""
    import json
    import os

    import numpy as np

    from utils.pipeline import ROOT

    if not args.ablation:
        args.name = args.name or "demo"
        summary = run(args, args.name, args.W, full=True)
        print(f"\n=== PCSS demo done in {summary['total_s']:.0f} s")
        for stage, miou in (("seeds (train list)", summary["miou"]),
                            ("  untrained network", summary["untrained_miou"]),
                            ("pseudo masks (train list)", summary["mask_miou"]),
                            ("segmentation (val list)", summary["seg_miou"])):
            print(f"{stage:>27s}: {miou:6.2f}% mIoU")
        exp = os.path.join("experiment", args.name)
        print(f"timings (s): {json.dumps(summary['timings_s'])}")
        print(f"pictures: {exp}/figure.png, {exp}/miou_vs_threshold.png, FIM masks in "
              f"{exp}/fim/; summary: {exp}/summary.json")
        return summary
    args.name = args.name or "ablation"
    args.shortcut = True
    results = {}
    for label, W in (("baseline_W0", [0.0, 0.0]), ("pcss", args.W)):
        for seed in args.seeds:
            args.seed = seed
            results.setdefault(label, []).append(
                run(args, f"{args.name}/{label}_seed{seed}", W, full=False))
    summary = {label: {"miou": [r["miou"] for r in rs],
                       "mean": float(np.mean([r["miou"] for r in rs])),
                       "std": float(np.std([r["miou"] for r in rs]))}
               for label, rs in results.items()}
    summary.update(seeds=args.seeds, W=args.W)
    with open(os.path.join(ROOT, "experiment", args.name, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n=== ablation on the toy set with a frequency shortcut, seeds {args.seeds}")
    for label, title in (("baseline_W0", "plain multi-class-token model (W 0 0)"),
                         ("pcss", f"PCSS (W {args.W[0]:g} {args.W[1]:g})")):
        s = summary[label]
        print(f"  {title:40s} seed mIoU {s['mean']:.2f} +- {s['std']:.2f}  "
              f"({', '.join(f'{m:.2f}' for m in s['miou'])})")
    print(f"summary: experiment/{args.name}/summary.json")
    return summary


def run(args, name: str, W, full: bool = True) -> dict:
    """One run of the pipeline into ``experiment/<name>``: the seed stage (and, with
    ``full``, the baseline, refinement, segmentation and the figure); returns the
    summary (also written to ``summary.json``)."""
    import json
    import os
    import time

    import numpy as np

    from datasets.layout import layout
    from datasets.wsss import load_image
    from models.checkpoint import save_initial_weights
    from utils.io import load_cam_dict, read_label_png
    from utils.scorefile import score_file
    from utils.lists import read_id_list
    from utils.pipeline import ROOT, CommandRunner, clean_experiment
    from utils.pseudo import pseudo_label
    from utils.vis import cam_overlay, save_panel_grid

    start = time.time()
    exp_rel = os.path.join("experiment", name)
    exp = os.path.join(ROOT, exp_rel)
    data_rel = os.path.join(exp_rel, "toy")
    clean_experiment(exp, keep=["toy"] if args.keep_data else [])
    step = CommandRunner()
    dev = ["--device", args.device, "--seed", str(args.seed)]
    data = ["--data-set", "TOY", "--data-path", data_rel]
    lay = layout("TOY", os.path.join(ROOT, data_rel), check=False)
    train_list, val_list = lay.train_list, lay.seg_val_list

    def score(label, run_name, task, folder, list_path):
        extra = ["--thresholds", "0.30", "0.80", "0.01"] if task == "cam" else []
        step(f"score {label}", ["evaluation.py", "--name", run_name, "--task", task,
                                "--dict_dir", folder, "--list", list_path, *data, *extra])
        with open(os.path.join(ROOT, "experiment", run_name, f"eval_{task}.json")) as f:
            return json.load(f)

    # ---- data, pre-training, PCSS
    if not (args.keep_data and os.path.isfile(os.path.join(ROOT, lay.label_file))):
        step("toy data", ["-m", "datasets.toy", "--out", data_rel, "--num-images",
                          str(args.num_images), "--seed", str(args.seed)]
             + (["--shortcut"] if args.shortcut else []))
    weights = os.path.join(exp_rel, "pretrain", "deit_toy.pth")
    step("pretrain", ["pretrain_toy.py", "--name", name, "--epochs", str(args.pretrain_epochs),
                      "--num_workers", "1", "--out", weights, *data, *dev])
    lr = 5e-4 * 512 / args.batch_size      # AdamW at 5e-4: the script scales --lr by batch/512
    step("train PCSS", ["train_PCSS.py", "--name", name, "--arch", "toy", "--finetune", weights,
                        "--freeze", "patch_embed.*", "blocks.[0-2].*", "--epochs",
                        str(args.epochs), "--batch_size", str(args.batch_size), "--lr", str(lr),
                        "--warmup-epochs", "0", "--augment", "light", "--W", *map(str, W),
                        "--val_start_epo", str(args.epochs), "--num_workers", "1",
                        "--no-tensorboard", *data, *dev])
    # ---- seeds (and the CRF score dicts that affinity training reads) of the train list
    step("seeds", ["infer_PCSS.py", "--name", name, "--arch", "toy", "--load_epo",
                   str(args.epochs - 1), "--dict"] + (["--crf", "--alphas", *args.crf_alphas]
                                                      if full else [])
         + ["--val_list", train_list, "--num_workers", "1", *data, *dev])
    seeds = score("seeds", name, "cam", os.path.join(exp_rel, "dict"), train_list)
    summary = {"miou": seeds["best_miou"], "threshold": seeds["best_threshold"],
               "class_iou": seeds["class_iou"], "seed": args.seed, "W": list(W),
               "shortcut": args.shortcut, "num_images": args.num_images}
    if full:
        untrained = os.path.join(exp_rel, "untrained", "random_init.pth")
        save_initial_weights(os.path.join(ROOT, untrained), "toy", len(lay.classes), 96,
                             args.seed)
        # the baseline on the first --baseline-images ids of the train list (a random
        # network scores about the same on any sizeable sample)
        base_list = os.path.join(exp_rel, "baseline_ids.txt")
        with open(os.path.join(ROOT, base_list), "w") as f:
            ids = read_id_list(os.path.join(ROOT, train_list))
            f.write("\n".join(ids[:args.baseline_images]) + "\n")
        step("seeds, untrained", ["infer_PCSS.py", "--name", f"{name}/untrained", "--arch",
                                  "toy", "--load_pretrained", untrained, "--val_list",
                                  base_list, "--num_workers", "1", *data, *dev])
        base = score("seeds, untrained", f"{name}/untrained", "cam",
                     os.path.join(exp_rel, "untrained", "dict"), base_list)
        summary.update(untrained_miou=base["best_miou"],
                       untrained_threshold=base["best_threshold"],
                       untrained_images=args.baseline_images)
        # ---- refinement: AffinityNet and the random walk
        crf_rel = os.path.join(exp_rel, "crf")
        step("train AffinityNet", ["train_aff.py", "--name", name, "--crop_size", "96",
                                   "--batch_size", "16", "--max_epoches",
                                   str(args.aff_epochs), "--lr", "0.05", "--momentum", "0.9",
                                   "--la_crf_dir", os.path.join(crf_rel, args.crf_alphas[0]),
                                   "--ha_crf_dir", os.path.join(crf_rel, args.crf_alphas[1]),
                                   "--num_workers", "1",
                                   "--no-tensorboard", *data, *dev])
        step("random walk", ["infer_aff.py", "--name", name, "--infer_list", train_list,
                             "--num_workers", "1", *data, *dev])
        masks = score("pseudo masks", name, "png", os.path.join(exp_rel, "rw"), train_list)
        # ---- segmentation
        step("train segmentation", ["train_seg.py", "--name", name, "--crop_size", "96",
                                    "--num_epochs", str(args.seg_epochs), "--num_workers", "1",
                                    "--no-tensorboard", *data, *dev])
        step("segment val", ["infer_seg.py", "--name", name, "--infer_list", val_list,
                             "--num_workers", "1", *data, *dev])
        seg = score("segmentation", name, "png", os.path.join(exp_rel, "seg"), val_list)
        summary.update(mask_miou=masks["best_miou"], mask_class_iou=masks["class_iou"],
                       seg_miou=seg["best_miou"], seg_class_iou=seg["class_iou"])
        # ---- the figure: a few training images through every stage
        shown = read_id_list(os.path.join(ROOT, train_list))[:6]
        with open(os.path.join(exp, "figure_ids.txt"), "w") as f:
            f.write("\n".join(shown) + "\n")
        step("segment the figure's images",
             ["infer_seg.py", "--name", name, "--infer_list", os.path.join(exp_rel,
                                                                          "figure_ids.txt"),
              "--out", os.path.join(exp_rel, "figure_seg"), "--num_workers", "0", *data, *dev])
        rows = []
        for i in shown:
            rgb = np.asarray(load_image(lay.image_path(i)))
            cams = load_cam_dict(score_file(os.path.join(exp, "dict"), i))
            cam = np.max(np.stack(list(cams.values())), 0) if cams else np.zeros(rgb.shape[:2])
            rows.append([(rgb, "image"), (read_label_png(lay.gt_path(i)), "ground truth"),
                         (cam_overlay(rgb, cam), "CAM"),
                         (pseudo_label(cams, summary["threshold"], rgb.shape[:2]),
                          f"seed @ {summary['threshold']:.2f}"),
                         (read_label_png(os.path.join(exp, "rw", i + ".png")), "pseudo mask"),
                         (read_label_png(os.path.join(exp, "figure_seg", i + ".png")),
                          "segmentation")])
        save_panel_grid(rows, os.path.join(exp, "figure.png"))
    summary.update(timings_s=step.timings, total_s=round(time.time() - start, 1))
    with open(os.path.join(exp, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    from utils.args import parse_args
    from utils.errors import run_main

    run_main(lambda: main(parse_args(get_args_parser())))
