"""The whole pipeline on the synthetic toy set, on a CPU, in minutes (`make demo`): image
labels -> seeds -> pseudo masks -> a segmentation network. It is ``python pipeline.py --name
demo --preset toy``: the stages, and the toy choices with their reasons, are in
``engine/pipeline.py`` (the ``toy_*`` functions); this script maps its few flags to the pipeline's.

Everything goes to ``experiment/<name>/`` (default ``experiment/demo``): ``summary.json``
(``miou``, ``threshold``, ``untrained_miou`` of the seeds, ``mask_miou``, ``seg_miou``,
per-class IoU, per-stage timings), ``report.md``, ``figure.png`` (image | ground truth | CAM
| seed | pseudo mask | segmentation) and ``miou_vs_threshold.png``. A second run skips what
is done. ``make ablation`` runs the seed stage with ``--W 0 0`` and with PCSS for three
seeds each on the toy set with its frequency shortcut, and prints means and standard
deviations.
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
    p.add_argument("--baseline-images", type=int, default=400,
                   help="train ids on which the untrained network's seeds are scored")
    p.add_argument("--device", default="auto")
    p.add_argument("--ablation", action="store_true",
                   help="instead: the seed stage with W = 0 0 against --W, three seeds each, on "
                        "the toy set with its frequency shortcut (`make ablation`)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the ablation")
    return p


def main(args) -> dict:
    """The demo (one pipeline run), or the ablation (the seed stages only, several seeds,
    two loss weightings)."""
    import json

    import numpy as np

    from engine.run_folder import RunFolder
    from utils.commands import ROOT, CommandRunner

    step = CommandRunner()
    defaults = get_args_parser().parse_args([])
    # this script's flag -> the pipeline's (passed only when not at the preset's value)
    flags = {"device": "--device", "num_images": "--toy_data.num-images",
             "pretrain_epochs": "--pretrain.epochs", "epochs": "--seeds_train.epochs",
             "batch_size": "--seeds_train.batch_size", "aff_epochs": "--aff_train.max_epoches",
             "seg_epochs": "--seg_train.num_epochs", "baseline_images": "--baseline-images"}
    changed = [w for k, flag in flags.items() if getattr(args, k) != getattr(defaults, k)
               for w in (flag, str(getattr(args, k)))]

    def run(name, seed, W, shortcut, until=None):
        step(name, ["pipeline.py", "--name", name, "--preset", "toy", *changed]
             + (["--seed", str(seed)] if seed != defaults.seed else [])
             + (["--seeds_train.W", *map(str, W)] if list(W) != defaults.W else [])
             + (["--toy_data.shortcut"] if shortcut else [])
             + (["--until", until] if until else []))
        with open(RunFolder(name, ROOT).summary) as f:
            return json.load(f)

    if not args.ablation:
        run_dir = RunFolder(args.name or "demo")
        summary = run(run_dir.name, args.seed, args.W, args.shortcut)
        print(f"pictures: {run_dir.figure}, {run_dir.miou_plot}, FIM masks in "
              f"{run_dir.fim_dir}/; report: {run_dir.report}")
        return summary
    run_dir = RunFolder(args.name or "ablation")
    results = {}
    for label, W in (("baseline_W0", [0.0, 0.0]), ("pcss", args.W)):
        for seed in args.seeds:      # the ablation is on the toy set with its shortcut
            results.setdefault(label, []).append(
                run(run_dir.sub(f"{label}_seed{seed}").name, seed, W, True,
                    until="seeds_eval"))
    summary = {label: {"miou": [r["miou"] for r in rs],
                       "mean": float(np.mean([r["miou"] for r in rs])),
                       "std": float(np.std([r["miou"] for r in rs]))}
               for label, rs in results.items()}
    summary.update(seeds=args.seeds, W=args.W)
    with open(RunFolder(run_dir.name, ROOT).summary, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\n=== ablation on the toy set with a frequency shortcut, seeds {args.seeds}")
    for label, title in (("baseline_W0", "plain multi-class-token model (W 0 0)"),
                         ("pcss", f"PCSS (W {args.W[0]:g} {args.W[1]:g})")):
        s = summary[label]
        print(f"  {title:40s} seed mIoU {s['mean']:.2f} +- {s['std']:.2f}  "
              f"({', '.join(f'{m:.2f}' for m in s['miou'])})")
    print(f"summary: {run_dir.summary}")
    return summary


if __name__ == "__main__":
    from utils.args import parse_args
    from utils.errors import run_main

    run_main(lambda: main(parse_args(get_args_parser())))
