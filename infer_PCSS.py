"""CAM seeds of a trained PCSS model (SPEC section 6), plus pseudo labels, CRF score dicts
and overlays.

    python infer_PCSS.py --name voc_pcss --load_epo 59 --dict
    python infer_PCSS.py --name voc_release --load_pretrained pretrained/eccv24_pcss_wsss_69.5_pascal.pth --dict
    python evaluation.py --name voc_pcss --task cam          # then pick the threshold
    python infer_PCSS.py --name voc_pcss --load_epo 59 --png # pseudo labels at that threshold
    python infer_PCSS.py --name voc_pcss --load_epo 59 --crf --alphas 1 12   # for train_aff.py

Writes under ``experiment/<name>/``: ``dict/<id>.npy`` (``{class index: H x W float32 map
in [0, 1]}`` for the image's labels, the format PSA / IRN read), ``png/<id>.png`` (palette
pseudo labels), ``crf/<alpha>/<id>.sdz`` (PSA's CRF score dicts ``{0: background, k + 1:
class k}``, what affinity training reads, in the compact format of ``wsss.scorefile``;
``--crf_format psa``: ``.npy``), ``crf_png/<alpha>/<id>.png`` (their labels) and
``vis/<id>.jpg`` (overlays). Each folder's ``manifest.json`` records the weights and settings
that made it: images already done by the same weights are skipped; a folder made by other
weights is refused unless ``--overwrite`` (which replaces it). Under torchrun every rank
takes its share of the list, with its own pool of ``--crf_workers``.

The CRF and the file writes run in ``--crf_workers`` processes while the network goes on
(same bytes for any number). ``--crf``, ``--png``, ``--crf_png`` and ``--vis`` without
``--dict`` read the CAMs from ``dict/`` instead of running the network when it holds every
image's PSA-format dict from the same weights and settings (its manifest says so).
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import network_parent
from utils.args import (crf_workers_parent, launch_script, overwrite_parent, positive_float,
                        script_parser)
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser("PCSS CAM inference", data_parent(), network_parent(),
                      overwrite_parent("outputs"),
                      crf_workers_parent())
    g = p.add_argument_group("weights")
    w = g.add_mutually_exclusive_group(required=True)
    w.add_argument("--load_epo", type=int,
                   help="epoch E of this run: experiment/<name>/ckpt/<EEE>net_trm.pth")
    w.add_argument("--load_pretrained", metavar="PATH",
                   help="a model state dict file, e.g. the released PCSS checkpoint "
                        "(also {'model': ...}, {'state_dict': ...}, 'module.' keys)")
    g = p.add_argument_group("what to compute")
    g.add_argument("--val_list", "--infer_list", dest="val_list", default=None,
                   help="image ids to process (default: the dataset's inference list, "
                        "train_aug.txt for VOC)")
    g.add_argument("--n_layers", type=int, default=12,
                   help="last blocks whose class-to-patch attention refines the CAMs")
    g.add_argument("--scales", type=positive_float, nargs="+", default=[1.0],
                   help="image scales whose maps are averaged before normalisation "
                        "(default 1.0 = the reference)")
    g = p.add_argument_group("outputs (default: --dict alone)")
    g.add_argument("--dict", action="store_true", help="write CAM dicts to dict/<id>.npy")
    g.add_argument("--png", action="store_true",
                   help="write pseudo labels argmax([threshold, CAMs]) to png/<id>.png")
    g.add_argument("--threshold", type=float, default=None,
                   help="background score for --png (default: best threshold of "
                        "experiment/<name>/eval_cam.json, else 0.45)")
    g.add_argument("--crf", action="store_true",
                   help="write PSA's dense-CRF score dicts to crf/<alpha>/<id>.npy for each "
                        "--alphas (the input of train_aff.py; needs pydensecrf2)")
    g.add_argument("--crf_png", action="store_true",
                   help="write the CRF labels to crf_png/<alpha>/<id>.png")
    g.add_argument("--alphas", type=float, nargs="+", default=[1.0, 12.0],
                   help="background powers for --crf / --crf_png: bg = (1 - max CAM) ** alpha "
                        "(default 1 12 as MCTformer; PSA used 4 32)")
    g.add_argument("--vis", action="store_true",
                   help="write the image beside per-class CAM overlays to vis/<id>.jpg")
    g = p.add_argument_group("file formats (psa: PSA's float32 .npy dicts; compact: .sdz, "
                             "uint16 fixed point + LZMA, 20-70x smaller; every reader reads both)")
    g.add_argument("--crf_format", choices=("compact", "psa"), default="compact",
                   help="format of the crf/<alpha>/ score dicts (values within 1e-4)")
    g.add_argument("--dict_format", choices=("psa", "compact"), default="psa",
                   help="format of the dict/ CAM dicts (compact: values within 2e-5, "
                        "comparisons with the thresholds 0.00, 0.01, ... unchanged)")
    return p


def run(args, device, info) -> None:
    import os

    from datasets import build_dataset
    from datasets.loader import image_loader
    from datasets.layout import default_input_size, layout
    from engine.common import claim_outputs
    from engine.seeds import SeedWriter, generate_seeds, seeds_from_dicts
    from engine.pool import WorkPool, default_workers, limit_torch_threads
    from models import compile_network
    from models.weights import epoch_checkpoint, load_network
    from wsss.crf import crf_available
    from utils.dist import barrier
    from utils.errors import UserError
    from utils.manifest import file_fingerprint, producer, read_manifest, same_producer
    from utils.report import best_threshold
    from utils.runtime import autocast_context

    if not (args.dict or args.png or args.crf or args.crf_png or args.vis):
        args.dict = True
    if (args.crf or args.crf_png) and not crf_available():
        raise UserError("--crf needs the dense CRF package: pip install pydensecrf2")
    exp_dir = os.path.join("experiment", args.name)
    lay = layout(args.data_set, args.data_path)
    list_path = args.val_list or lay.infer_list
    weights = (args.load_pretrained if args.load_pretrained is not None
               else epoch_checkpoint(exp_dir, args.load_epo))
    autocast_context(device, args.amp)  # rejects a bad --amp before any work
    dataset = build_dataset(args.data_set, args.data_path, list_path, "infer")
    crf = args.crf or args.crf_png
    workers = (args.crf_workers if args.crf_workers is not None
               else default_workers(args.num_workers) if crf else 0)
    threshold = args.threshold if args.threshold is not None else best_threshold(exp_dir)
    writer = SeedWriter.plan(exp_dir, dict=args.dict, png=args.png, vis=args.vis,
                             crf_alphas=args.alphas if args.crf else (),
                             crf_png_alphas=args.alphas if args.crf_png else (),
                             threshold=threshold, class_names=lay.classes,
                             image_path=lay.image_path,
                             formats={"dict": args.dict_format, "crf": args.crf_format})
    fingerprint = file_fingerprint(weights)
    settings = dict(scales=args.scales, n_layers=args.n_layers, amp=args.amp)
    made_by = writer.producers(fingerprint, **settings)
    mine, todo = claim_outputs({d: (made_by[d], writer.extensions(d))
                                for d in writer.folders.values()},
                               dataset.ids, args.overwrite, info, writer.done)
    # work done once: the CAMs of these weights and settings are in dict/ already (in PSA's
    # lossless format, so every output is the one the network would give)
    dict_dir = os.path.join(exp_dir, "dict")
    todo_ids = [dataset.ids[i] for i in todo]
    reuse = (not args.dict
             and same_producer(read_manifest(dict_dir), producer(fingerprint, **settings))
             and all(os.path.isfile(os.path.join(dict_dir, i + ".npy")) for i in todo_ids))
    if info.is_main:
        print(f"{len(dataset)} images in {list_path}; weights {weights}; "
              f"{len(mine) - len(todo)} of this process's {len(mine)} already done by them"
              + (f"; --png threshold {threshold:.2f}" if args.png else "")
              + (f"; CRF in {workers} worker process(es)" if crf else "")
              + (f"; CAMs read from {dict_dir} (same weights and settings)" if reuse else ""))
    limit_torch_threads(workers, device.type)
    with WorkPool(workers) as pool:     # forked before the network exists
        if reuse:
            n = seeds_from_dicts(dict_dir, todo_ids, pool.submit_to(writer),
                                 progress=info.is_main)
        else:
            size = default_input_size(args.data_set, args.input_size)
            net = load_network(args.arch, lay.num_classes, size, weights, device,
                               report=print if info.is_main else None)
            net = compile_network(net) if args.compile else net
            loader = image_loader(dataset, todo, args.num_workers, device)
            n = generate_seeds(net, loader, device, pool.submit_to(writer), args.amp,
                               args.n_layers, args.scales, progress=info.is_main, desc="infer")
    barrier(info)
    if info.is_main:
        where = " on rank 0" if info.distributed else ""
        waited = (f"; the network waited {pool.blocked_s:.0f} s for the {workers} CRF "
                  f"worker(s) (more --crf_workers would cut that)" if pool.blocked_s >= 1 else "")
        print(f"wrote {n} images{where} to {', '.join(writer.folders.values())}{waited}")


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
