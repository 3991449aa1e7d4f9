"""From image labels to a segmentation model in one command: every stage of the pipeline as
the project's own command lines (the ones the README prints), checked before any work,
skipping what is done and resuming what was killed, with a report at the end.

    python pipeline.py --name pcss_voc --data-set VOC12 --data-path data/VOC2012 --dry-run
    python pipeline.py --name pcss_voc --data-set VOC12 --data-path data/VOC2012 --amp bf16
    python pipeline.py --name pcss_voc --nproc_per_node 4 --train_aff.batch_size 2
    python pipeline.py --name demo --preset toy          # make demo

Other flags go to the stages that take them (``--amp``, ``--compile``, ``--backbone``,
...); ``--STAGE.flag`` (a stage, a script such as ``train_seg``, or seeds / aff / seg) to
those stages only. Writes ``experiment/<name>/``: the stages' outputs, ``pipeline.json``
(what is done), ``summary.json``, ``report.md`` and ``figure.png``. The stages, the checks
and the toy preset are in ``engine/pipeline.py``.
"""
from __future__ import annotations

import argparse


def get_args_parser() -> argparse.ArgumentParser:
    from datasets.layout import DATASETS, TOY_SET
    from engine.pipeline import stage_names

    real = [n for n in DATASETS if not DATASETS[n].synthetic]    # the toy preset makes its own
    stages = {preset: " ".join(n for n, _ in stage_names(ds, preset, test=True))
              for ds, preset in ((real[0], "full"), (TOY_SET.name, "toy"))}
    p = argparse.ArgumentParser(
        description="the whole pipeline: seeds, pseudo masks, segmentation, report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        epilog="Any other flag goes to the stages whose script takes it; --STAGE.flag to "
               f"one stage (or script, or family seeds / aff / seg) only. Stages (VOC): "
               f"{stages['full']} (COCO: one walk, rw, then masks_eval); the toy preset: "
               f"{stages['toy']}.")
    p.add_argument("--name", required=True, help="run folder experiment/<name>")
    p.add_argument("--data-set", "--data_set", dest="data_set", default=real[0],
                   choices=real, help="dataset (the toy preset makes its own)")
    p.add_argument("--data-path", "--data_path", dest="data_path", default=None,
                   help="dataset root (default data/VOC2012, data/COCO2014)")
    p.add_argument("--preset", choices=("full", "toy"), default="full",
                   help="full: the paper's settings; toy: the synthetic set on a CPU in "
                        "minutes (what make demo runs)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the plan (every command, estimated disk and time) and the "
                        "preflight's findings; run nothing")
    p.add_argument("--from", dest="redo_from", default=None, metavar="STAGE",
                   help="redo STAGE and every later one (their outputs are replaced)")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after STAGE")
    p.add_argument("--test", action="store_true",
                   help="also predict VOC test for the evaluation server (results.tar.gz)")
    p.add_argument("--nproc_per_node", "--nproc-per-node", dest="nproc", type=int, default=1,
                   help="processes (GPUs) for the stages that run under torchrun")
    p.add_argument("--resume-training", "--resume_training", dest="resume_training",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="continue a killed training stage with --resume (default on; off for "
                        "the toy preset, whose training stages take a minute or two and start "
                        "over, so that its figures stay exactly an uninterrupted run's: a "
                        "resumed run's loader workers draw other augmentations)")
    p.add_argument("--baseline-images", type=int, default=400,
                   help="toy preset: train ids on which an untrained network's seeds are "
                        "scored")
    p.add_argument("--print-args", action="store_true",
                   help="print the parsed arguments and each stage's extra flags as JSON, exit")
    return p


def main(argv=None):
    import importlib
    import json

    from datasets.layout import DATASETS, TOY_SET
    from engine.pipeline import program_name, route_flags, run_pipeline, stage_names

    from utils.errors import UserError

    parser = get_args_parser()
    args, extra = parser.parse_known_args(argv)
    other_data = args.data_path or args.data_set != parser.get_default("data_set")
    if args.preset == "toy" and other_data:
        raise UserError(f"--preset toy makes its own data set in experiment/{args.name}/toy: "
                        f"leave out --data-set and --data-path")
    data_path = args.data_path or DATASETS[args.data_set].default_path
    stages = stage_names(TOY_SET.name if args.preset == "toy" else args.data_set, args.preset,
                         args.test)
    parsers = {s: importlib.import_module(program_name(s)).get_args_parser() for _, s in stages}
    if args.print_args:
        routed = route_flags(extra, stages, parsers)
        print(json.dumps(dict(sorted(vars(args).items()), stages=routed)))
        return None
    summary = run_pipeline(args.name, args.data_set, data_path, args.preset, extra, parsers,
                           args.dry_run, args.redo_from, args.until, args.test, args.nproc,
                           args.resume_training, args.baseline_images)
    if summary:
        lines = (("seeds (train list)", "miou"), ("  untrained network", "untrained_miou"),
                 ("pseudo masks (train list)", "mask_miou"), ("segmentation (val list)",
                                                              "seg_miou"))
        print(f"\n=== pipeline done: experiment/{args.name} ({summary['total_s']:.0f} s of "
              f"stage time)")
        for label, key in lines:
            if key in summary:
                print(f"{label:>27s}: {summary[key]:6.2f}% mIoU")
        print(f"report: experiment/{args.name}/report.md, summary.json, figure.png")
    return summary


if __name__ == "__main__":
    from utils.errors import run_main

    run_main(main)
