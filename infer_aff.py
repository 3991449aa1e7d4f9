"""The random walk (PSA, as MCTformer runs it; SPEC_REFINE section 14): seeds + AffinityNet
-> pseudo masks.

    python infer_aff.py --name pcss_voc --infer_list data/VOC2012/ImageSets/Segmentation/train.txt
    python evaluation.py --name pcss_voc --task png --dict_dir experiment/pcss_voc/rw
    python infer_aff.py --name pcss_voc            # train_aug (the default list) for train_seg.py

Reads the seeds ``experiment/<name>/dict/`` (``--cam_dir``) and the AffinityNet of
``train_aff.py`` (``experiment/<name>/aff/aff_net.pth``, or ``--weights``, e.g. PSA's
``res38_aff.pth``). Writes ``experiment/<name>/rw/<id>.png`` (``--out_rw``): palette PNGs,
0 background, k + 1 class k. The background of the walk is the run's best seed threshold
(``eval_cam.json``; MCTformer's rule, ``--bg threshold``) or PSA's ``(1 - max CAM)^alpha``
(``--bg power``). The walk runs as repeated sparse products (the same result as the
reference's dense matrix squarings, much faster); ``--walk squaring`` is the literal one.
The folder's manifest names the AffinityNet and the seeds that made it.
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import refine_net_parent
from utils.args import launch_script, overwrite_parent, script_parser
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser("Random walk with AffinityNet (PSA / MCTformer)", data_parent(),
                      refine_net_parent("affinity", trained=True), overwrite_parent("masks"))
    g = p.add_argument_group("inputs")
    g.add_argument("--radius", type=int, default=5, help="the AffinityNet's radius")
    g.add_argument("--infer_list", "--val_list", dest="infer_list", default=None,
                   help="ids to walk (default: the dataset's training list, train_aug.txt for "
                        "VOC; MCTformer walks train.txt to score the masks)")
    g.add_argument("--cam_dir", default=None,
                   help="seed dicts (default experiment/<name>/dict)")
    g.add_argument("--out_rw", default=None, help="output folder (default experiment/<name>/rw)")
    g = p.add_argument_group("random walk (SPEC_REFINE 14)")
    g.add_argument("--beta", type=float, default=8, help="affinity power")
    g.add_argument("--logt", type=int, default=6,
                   help="log2 of the walk length (6: 64 steps, MCTformer; PSA used 8)")
    g.add_argument("--bg", choices=("threshold", "power"), default="threshold",
                   help="background score: the constant --bg_thr (MCTformer) or "
                        "(1 - max CAM)^--alpha (PSA)")
    g.add_argument("--bg_thr", type=float, default=None,
                   help="background for --bg threshold (default: the best threshold of "
                        "experiment/<name>/eval_cam.json, else 0.39)")
    g.add_argument("--alpha", type=float, default=16, help="power for --bg power")
    g.add_argument("--walk", choices=("sparse", "squaring"), default="sparse",
                   help="sparse: repeated sparse products (fast); squaring: the reference's "
                        "dense matrix squarings (for checking)")
    return p


def run(args, device, info) -> None:
    import os

    from datasets import build_dataset
    from datasets.layout import layout
    from datasets.loader import image_loader
    from engine.refine import random_walk_masks
    from engine.common import pending_outputs
    from models import compile_network
    from models.registry import find_trained_weights, load_affinity_net
    from utils.dist import barrier
    from utils.errors import UserError, resolve_run_folder
    from utils.manifest import file_fingerprint, producer, read_manifest
    from utils.report import best_threshold
    from utils.runtime import autocast_context
    from wsss.scorefile import score_file
    from utils.vis import save_label_png

    lay = layout(args.data_set, args.data_path)
    exp = os.path.join("experiment", args.name)
    backbone = args.backbone or lay.dataset.backbone
    weights = find_trained_weights(args.weights, exp, "affinity", backbone)
    cam_dir = resolve_run_folder(exp, args.cam_dir, "dict", "--cam_dir", "seed dicts",
                                 f"`python infer_PCSS.py --name {args.name} --load_epo E "
                                 f"--dict`")
    out_dir = resolve_run_folder(exp, args.out_rw, "rw", "--out_rw", "", "", must_exist=False)
    list_path = args.infer_list or lay.train_list
    bg_thr = args.bg_thr if args.bg_thr is not None else best_threshold(exp, default=0.39)
    autocast_context(device, args.amp)
    dataset = build_dataset(args.data_set, args.data_path, list_path, "infer")
    missing = [i for i in dataset.ids if not os.path.isfile(score_file(cam_dir, i))]
    if missing:
        raise UserError(f"{len(missing)} of {len(dataset.ids)} seed dicts missing in {cam_dir} "
                        f"(e.g. {', '.join(missing[:3])}). Write them with `python "
                        f"infer_PCSS.py --name {args.name} --load_epo E --dict --val_list "
                        f"{list_path}`, or pass --cam_dir.")
    net = load_affinity_net(backbone, weights, radius=args.radius, device=device)
    net = compile_network(net) if args.compile else net
    seeds = read_manifest(cam_dir)
    made_by = producer({"affinity": file_fingerprint(weights),
                        "seeds": (seeds or {}).get("weights", "unknown")},
                       backbone=backbone, radius=args.radius, beta=args.beta, logt=args.logt,
                       bg=args.bg, bg_thr=bg_thr if args.bg == "threshold" else None,
                       alpha=args.alpha if args.bg == "power" else None)
    mine, todo = pending_outputs(out_dir, made_by, dataset.ids, args.overwrite, info)
    if info.is_main:
        rule = (f"threshold {bg_thr:.2f}" if args.bg == "threshold"
                else f"(1 - max)^{args.alpha:g}")
        print(f"{len(dataset)} images in {list_path}; seeds {cam_dir}; AffinityNet {weights}; "
              f"background {rule}, beta {args.beta:g}, logt {args.logt}; "
              f"{len(mine) - len(todo)} of this process's {len(mine)} already done")
    loader = image_loader(dataset, todo, args.num_workers, device)
    n = random_walk_masks(net, loader, cam_dir,
                          lambda i, labels: save_label_png(os.path.join(out_dir, i + ".png"),
                                                           labels),
                          device, args.radius, args.beta, args.logt, args.bg, bg_thr,
                          args.alpha, method="squaring" if args.walk == "squaring" else "auto",
                          amp=args.amp, progress=info.is_main)
    barrier(info)
    if info.is_main:
        print(f"wrote {n} pseudo masks{' on rank 0' if info.distributed else ''} to {out_dir}")


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
