"""Train AffinityNet on the CRF-confident regions of the seeds (PSA, as MCTformer runs it;
SPEC_REFINE sections 12-13). The second stage: seeds -> affinities -> (infer_aff.py) masks.

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
                   help="low-alpha CRF score dicts (default experiment/<name>/crf/1)")
    g.add_argument("--ha_crf_dir", default=None,
                   help="high-alpha CRF score dicts (default experiment/<name>/crf/12)")
    g.add_argument("--crop_size", type=int, default=448,
                   help="random crop side (a multiple of the backbone's stride: 8, toy 4)")
    g = p.add_argument_group("optimisation (SPEC_REFINE 13.3-13.4)")
    g.add_argument("--recipe", choices=tuple(AFF_RECIPES), default="mct",
                   help="defaults of --lr and --max_epoches: mct (0.01, 5) or psa (0.1, 8)")
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--max_epoches", "--epochs", dest="max_epoches", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--wt_dec", type=float, default=5e-4,
                   help="weight decay of the conv weights; the reference also passes it as "
                        "SGD's momentum (kept; --momentum overrides)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum (default: --wt_dec, the reference's quirk)")
    return p


def run(args, device, info) -> None:
    import os

    import torch
    from torch.utils.data.distributed import DistributedSampler

    from datasets.affinity_data import AffinityDataset
    from datasets.layout import layout
    from datasets.loader import make_loader, reseed
    from engine.refine import train_one_epoch
    from engine.common import prepare_model
    from models.registry import (aff_recipe, affinity_stride, build_affinity_net,
                                 resolve_init_weights, trained_weights_path)
    from utils.args import check_training_length
    from utils.checkpoint import claim_run, save_training_state, start_training
    from utils.errors import resolve_run_folder
    from utils.lists import read_id_list
    from utils.logger import RunLog
    from utils.optim import PolySGD
    from utils.runtime import autocast_context, seed_everything

    for key, value in aff_recipe(args.recipe).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    lay = layout(args.data_set, args.data_path)
    args.backbone = args.backbone or lay.dataset.backbone
    exp = os.path.join("experiment", args.name)
    final = trained_weights_path(exp, "affinity", args.backbone)     # what infer_aff.py loads
    out_dir = os.path.dirname(final)
    la_dir, ha_dir = (resolve_run_folder(
        exp, value, os.path.join("crf", alpha), flag, "CRF score dicts",
        f"`python infer_PCSS.py --name {args.name} --load_epo E --crf --alphas 1 12` (for "
        f"the training list)") for value, alpha, flag in (
            (args.la_crf_dir, "1", "--la_crf_dir"), (args.ha_crf_dir, "12", "--ha_crf_dir")))
    autocast_context(device, args.amp)
    weights = resolve_init_weights(args.backbone, args.weights, "affinity")
    train_list = args.train_list or lay.train_list
    stride = affinity_stride(args.backbone)
    dataset = AffinityDataset(lay, read_id_list(train_list), la_dir, ha_dir, args.crop_size,
                              stride)
    check_training_length("--max_epoches", args.max_epoches, args.batch_size, info.world_size,
                          len(dataset), train_list)
    steps = len(dataset) // (args.batch_size * info.world_size)
    max_step = steps * args.max_epoches

    claim_run(os.path.join(out_dir, "last.pth"), out_dir, args.resume, args.overwrite, info)
    log = RunLog(out_dir, enabled=info.is_main, tensorboard=args.tensorboard)
    seed_everything(args.seed + info.rank)
    net, info_w = build_affinity_net(args.backbone, radius=args.radius, weights=weights)
    model = prepare_model(net, device, info, args.compile)
    momentum = args.wt_dec if args.momentum is None else args.momentum
    optimizer = PolySGD(net.param_groups(args.lr, args.wt_dec), max_step, momentum=momentum)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    last = os.path.join(out_dir, "last.pth")
    start_epoch = start_training(
        last, log, args, f"AffinityNet ({args.backbone}, radius {args.radius}) on "
        f"{len(dataset)} images, {steps} steps per epoch, {max_step} steps; weights "
        f"{weights or 'none (from scratch)'}: {len(info_w['fresh'])} fresh tensors, "
        f"{len(info_w['dropped'])} file tensors unused", net, optimizer, scaler, info,
        resolved={"weights": weights or "none", "train_list": train_list,
                  "la_crf_dir": la_dir, "ha_crf_dir": ha_dir})
    sampler = (DistributedSampler(dataset, info.world_size, info.rank, shuffle=True,
                                  seed=args.seed, drop_last=True) if info.distributed else None)
    loader = make_loader(dataset, args.batch_size, args.num_workers, device, shuffle=True,
                         sampler=sampler, drop_last=True, persistent=True)
    for epoch in range(start_epoch, args.max_epoches):
        stats = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        stats.update(train_one_epoch(model, reseed(loader, args.seed, epoch), optimizer,
                                     device, epoch, args.radius, args.amp, scaler, info,
                                     last_good=last))
        log.epoch(stats)
        save_training_state(last, epoch, net, optimizer, scaler, args, info, weights=final)
    log.close()
    if info.is_main:
        print(f"saved {final}")


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
