"""Train AffinityNet on the CRF-confident regions of the seeds (PSA, as MCTformer runs it;
``psa/train_aff.py``). The second stage: seeds -> affinities -> (infer_aff.py) masks.
Flags -> the CRF-confident dataset (``datasets.affinity_data``), AffinityNet
(``models.registry.build_affinity_net``) and poly SGD -> ``engine.training.Trainer.fit``,
whose epochs run ``engine.refine.affinity_step``.

    python infer_PCSS.py --name pcss_voc --load_epo 59 --crf --alphas 1 12
    python train_aff.py --name pcss_voc --weights pretrained/res38_cls.pth
    torchrun --nproc_per_node 4 train_aff.py --name pcss_voc --weights pretrained/res38_cls.pth --batch_size 2

Reads the CRF score dicts ``experiment/<name>/crf/<low>/`` and ``crf/<high>/`` (or
``--la_crf_dir`` / ``--ha_crf_dir``, PSA's flags). Writes ``experiment/<name>/aff/``:
``aff_net.pth`` (the state dict ``infer_aff.py`` loads, as MCTformer's ``resnet38_aff.pth``),
``last.pth`` (everything ``--resume`` needs), ``log.txt`` (a JSON line per epoch),
``train.log`` and TensorBoard events. Defaults are MCTformer's (lr 0.01, 5 epochs);
``--recipe psa`` takes PSA's (lr 0.1, 8 epochs).
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import AFF_RECIPES, refine_net_parent
from utils.args import launch_script, script_parser, training_state_parent
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser("AffinityNet training (PSA / MCTformer)", data_parent(),
                      refine_net_parent("affinity", trained=False), training_state_parent("aff"))
    g = p.add_argument_group("affinities")
    g.add_argument("--radius", type=int, default=5, help="affinity radius (pairs within it)")
    g = p.add_argument_group("data")
    g.add_argument("--train_list", default=None,
                   help="training ids (default: the dataset's, train_aug.txt for VOC)")
    g.add_argument("--la_crf_dir", default=None,
                   help="low-alpha CRF score dicts (default experiment/<name>/crf/<the "
                        "first of infer_PCSS.py's default --alphas>, crf/1)")
    g.add_argument("--ha_crf_dir", default=None,
                   help="high-alpha CRF score dicts (default experiment/<name>/crf/<the "
                        "last of infer_PCSS.py's default --alphas>, crf/12)")
    g.add_argument("--crop_size", type=int, default=448,
                   help="random crop side (a multiple of the backbone's stride: 8, toy 4)")
    g = p.add_argument_group("optimisation (PSA's PolyOptimizer)")
    g.add_argument("--recipe", choices=tuple(AFF_RECIPES), default="mct",
                   help="defaults of --lr and --max_epoches: mct (0.01, 5) or psa (0.1, 8)")
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--max_epoches", "--epochs", dest="epochs", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--wt_dec", dest="weight_decay", type=float, default=5e-4,
                   help="weight decay of the conv weights; the reference also passes it as "
                        "SGD's momentum (kept; --momentum overrides)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum (default: --wt_dec, the reference's quirk)")
    return p


def run(args, device, info) -> None:
    from datasets.affinity_data import AffinityDataset
    from datasets.layout import layout
    from engine.common import prepare_model
    from engine.refine import affinity_step
    from engine.run_folder import RunFolder
    from engine.training import Trainer
    from models.registry import (aff_recipe, affinity_stride, build_affinity_net,
                                 resolve_init_weights)
    from models.weights import describe_weights
    from utils.args import check_training_length, run_options, with_defaults
    from utils.lists import read_id_list
    from utils.optim import PolySGD
    from utils.runtime import autocast_context

    lay = layout(args.data_set, args.data_path)
    # the values that depend on other flags; args stays as parsed (what last.pth stores)
    opt = with_defaults(args, backbone=lay.dataset.backbone, **aff_recipe(args.recipe))
    run_dir = RunFolder(args.name)
    final = run_dir.trained_weights("affinity", opt.backbone)     # what infer_aff.py loads
    la_dir, ha_dir = run_dir.crf_dirs(args.la_crf_dir, args.ha_crf_dir)
    autocast_context(device, args.amp)
    weights = resolve_init_weights(opt.backbone, args.weights, "affinity")
    train_list = args.train_list or lay.train_list
    dataset = AffinityDataset(lay, read_id_list(train_list), la_dir, ha_dir, args.crop_size,
                              affinity_stride(opt.backbone))
    check_training_length("--max_epoches", opt.epochs, args.batch_size, info.world_size,
                          len(dataset), train_list)
    steps = len(dataset) // (args.batch_size * info.world_size)
    max_step = steps * opt.epochs

    trainer = Trainer(vars(args), device, info, run_dir.last_checkpoint("affinity", opt.backbone),
                      run_dir.stage_dir("affinity", opt.backbone), weights=final,
                      **run_options(args))
    net, info_w = build_affinity_net(opt.backbone, radius=args.radius, weights=weights)
    model = prepare_model(net, device, info, args.compile)
    momentum = args.weight_decay if args.momentum is None else args.momentum
    optimizer = PolySGD(net.param_groups(opt.lr, args.weight_decay), max_step, momentum=momentum)
    trainer.start(
        net, model, optimizer, f"AffinityNet ({opt.backbone}, radius {args.radius}) on "
        f"{len(dataset)} images, {steps} steps per epoch, {max_step} steps; "
        + describe_weights(weights, info_w),
        resolved={"weights": weights or "none", "train_list": train_list,
                  "la_crf_dir": la_dir, "ha_crf_dir": ha_dir, "backbone": opt.backbone,
                  "lr": opt.lr, "epochs": opt.epochs})
    trainer.fit(trainer.loader(dataset, args.batch_size), opt.epochs,
                lambda epoch: affinity_step(model, device, args.radius, args.amp),
                what="the affinity loss", desc="affinity")


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
