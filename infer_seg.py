"""Predict with the trained segmentation network: multi-scale (+ flip) inference and the
dense CRF (MCTformer's ``seg/infer_seg.py``, SPEC_REFINE 15.3-15.4), scores on val, and the
VOC test server's layout.

    python infer_seg.py --name pcss_voc --use_crf
    python evaluation.py --name pcss_voc --task png --dict_dir experiment/pcss_voc/seg --list val
    python infer_seg.py --name pcss_voc --use_crf --split test     # -> results.tar.gz

Reads ``experiment/<name>/segnet/seg_net.pth`` (``--weights``). Writes
``experiment/<name>/seg/<id>.png`` (palette PNGs of class indices; ``--out``). With ``--split
test`` (VOC) the predictions of ``ImageSets/Segmentation/test.txt`` go to
``experiment/<name>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` and are packed
into ``experiment/<name>/results.tar.gz``, ready to upload to the evaluation server.
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import refine_net_parent
from utils.args import (crf_workers_parent, launch_script, overwrite_parent, positive_float,
                        script_parser)
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser("Segmentation inference (multi-scale, CRF)", data_parent(),
                      refine_net_parent("segmentation", trained=True),
                      overwrite_parent("predictions"), crf_workers_parent())
    g = p.add_argument_group("inputs")
    g.add_argument("--split", choices=("val", "test"), default="val",
                   help="val: the dataset's validation list; test: VOC test, in the "
                        "evaluation server's layout")
    g.add_argument("--infer_list", "--val_list", dest="infer_list", default=None,
                   help="ids to predict (overrides --split's list)")
    g.add_argument("--out", default=None, help="output folder (default experiment/<name>/seg)")
    g = p.add_argument_group("inference (SPEC_REFINE 15.3-15.4)")
    g.add_argument("--scales", type=positive_float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5])
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                   help="also run each scale on the flipped image (ours)")
    g.add_argument("--merge", choices=("max", "mean"), default="max",
                   help="merge of the per-scale probabilities: max (the reference) or mean")
    g.add_argument("--use_crf", action="store_true",
                   help="dense CRF (preset 'seg') on the merged probabilities")
    g.add_argument("--crf_labels", choices=("all", "present"), default="all",
                   help="labels of the CRF: all classes (the reference) or those the "
                        "prediction uses plus background (several times faster)")
    return p


def run(args, device, info) -> None:
    import os
    import tarfile

    from datasets.layout import layout
    from datasets.loader import image_loader
    from datasets.classification import WSSSDataset, build_transform
    from engine.common import pending_outputs
    from engine.pool import WorkPool, default_workers, limit_torch_threads
    from engine.segment import LabelPngWriter, predict
    from models import compile_network
    from models.registry import backbone_folder, find_trained_weights, load_segmentation_net
    from wsss.crf import crf_available
    from utils.dist import barrier
    from utils.errors import UserError, resolve_run_folder
    from utils.lists import read_id_list
    from utils.manifest import file_fingerprint, producer
    from utils.runtime import autocast_context

    if args.use_crf and not crf_available():
        raise UserError("--use_crf needs the dense CRF package: pip install pydensecrf2")
    test = args.split == "test"
    lay = layout(args.data_set, args.data_path)
    if test and lay.test_list is None and args.infer_list is None:
        raise UserError(f"--split test is an evaluation server's test split (VOC 2012's); "
                        f"{args.data_set} has none: for other datasets pass --infer_list")
    exp = os.path.join("experiment", args.name)
    backbone = args.backbone or lay.dataset.backbone
    weights = find_trained_weights(args.weights, exp, "segmentation", backbone)
    list_path = args.infer_list or (lay.test_list if test else lay.seg_val_list)
    results = backbone_folder("results", backbone)   # other backbones' outputs kept apart
    out_dir = resolve_run_folder(
        exp, args.out, os.path.join(results, "VOC2012", "Segmentation", "comp6_test_cls")
        if test else backbone_folder("seg", backbone), "--out", "", "", must_exist=False)
    autocast_context(device, args.amp)
    dataset = WSSSDataset(lay, read_id_list(list_path), build_transform("infer"),
                          return_id=True, require_labels=not test)   # test images: no labels
    workers = (args.crf_workers if args.crf_workers is not None
               else default_workers(args.num_workers) if args.use_crf else 0)
    pool = WorkPool(workers)        # forked before the network exists
    limit_torch_threads(workers, device.type)
    net = load_segmentation_net(backbone, weights, lay.num_classes + 1, device=device)
    net = compile_network(net) if args.compile else net
    made_by = producer(file_fingerprint(weights), backbone=backbone, scales=args.scales,
                       flip=args.flip, merge=args.merge, crf=args.use_crf, amp=args.amp,
                       **({"crf_labels": "present"}
                          if args.use_crf and args.crf_labels == "present" else {}))
    mine, todo = pending_outputs(out_dir, made_by, dataset.ids, args.overwrite, info)
    if info.is_main:
        print(f"{len(dataset)} images in {list_path}; weights {weights}; scales "
              f"{args.scales}{' + flip' if args.flip else ''}, {args.merge} merge"
              f"{', CRF' if args.use_crf else ''}; {len(mine) - len(todo)} of this "
              f"process's {len(mine)} already done")
    loader = image_loader(dataset, todo, args.num_workers, device)
    with pool:
        n = predict(net, loader, device, LabelPngWriter(out_dir), args.scales, args.flip,
                    args.merge, args.use_crf, lay.image_path, args.amp,
                    progress=info.is_main, crf_labels=args.crf_labels, submit=pool.submit)
    barrier(info)
    if not info.is_main:
        return
    print(f"wrote {n} predictions{' on rank 0' if info.distributed else ''} to {out_dir}")
    if test:
        # exactly this list's predictions, at the server's path, whatever else the folder holds
        archive = os.path.join(exp, results + ".tar.gz")
        os.makedirs(exp, exist_ok=True)
        tmp = archive + ".tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for i in dataset.ids:
                tar.add(os.path.join(out_dir, i + ".png"),
                        arcname=f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png")
        os.replace(tmp, archive)
        print(f"packed the {len(dataset.ids)} predictions of {list_path} into {archive}: "
              f"upload it to the PASCAL VOC evaluation server (Segmentation, comp6)")

if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
