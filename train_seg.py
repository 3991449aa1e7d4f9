"""Train the segmentation network on the pseudo masks (MCTformer's ``seg/``, SPEC_REFINE
section 15): the third stage, masks -> a DeepLab.

    python train_seg.py --name pcss_voc --weights pretrained/res38_cls.pth
    python train_seg.py --name pcss_voc --backbone deeplabv2_r101 --weights pretrained/resnet101-63fe2227.pth
    torchrun --nproc_per_node 4 train_seg.py --name pcss_voc --weights pretrained/res38_cls.pth --batch_size 1

Reads the pseudo masks ``experiment/<name>/rw/`` (``--seg_pgt_path``) of the training list
(train_aug for VOC: walk it with ``infer_aff.py`` first). Writes
``experiment/<name>/segnet/``: ``seg_net.pth`` (the state dict ``infer_seg.py`` loads),
``last.pth`` (``--resume``), ``log.txt``, ``train.log``, TensorBoard events. The recipe is
MCTformer's (ResNet-38 DeepLab-LargeFOV, crop 321, batch 4, lr 7e-4, 30 epochs) or, for
``--backbone deeplabv2_r101``, deeplab-pytorch's (lr 2.5e-4, momentum 0.9, weight decay
5e-4). Batch norm is frozen in every backbone (running statistics of the pretrained
weights), so several processes need no SyncBatchNorm.
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import refine_net_parent
from utils.args import launch_script, script_parser, training_state_parent
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = script_parser("Segmentation training on pseudo masks", data_parent(),
                      refine_net_parent("segmentation", trained=False),
                      training_state_parent("segnet"))
    g = p.add_argument_group("data")
    g.add_argument("--train_list", default=None,
                   help="training ids (default: the dataset's, train_aug.txt for VOC)")
    g.add_argument("--seg_pgt_path", default=None,
                   help="pseudo masks <id>.png (default experiment/<name>/rw)")
    g.add_argument("--crop_size", type=int, default=321)
    g.add_argument("--mask-fill", "--mask_fill", dest="mask_fill", type=int, default=0,
                   choices=(0, 255),
                   help="label of the crop's padding: 0 = background (the reference) or 255 "
                        "= ignored")
    g = p.add_argument_group("optimisation (SPEC_REFINE 15.2, 15.4)")
    g.add_argument("--num_epochs", "--epochs", dest="num_epochs", type=int, default=None,
                   help="epochs (default 30 for resnet38 as run_seg.sh; deeplabv2_r101: as "
                        "many as 20,000 iterations of batch 10 make)")
    g.add_argument("--batch_size", type=int, default=None, help="default 4 (resnet38), 10 (r101)")
    g.add_argument("--lr", type=float, default=None, help="default 7e-4 (resnet38), 2.5e-4 (r101)")
    g.add_argument("--wt_dec", type=float, default=None,
                   help="default 1e-5 (resnet38: the reference passes it as SGD's momentum and "
                        "applies no weight decay), 5e-4 (r101)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum (default: --wt_dec for resnet38 as the reference, 0.9 "
                        "for r101)")
    return p


def run(args, device, info) -> None:
    import os

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from datasets.layout import layout
    from datasets.segmentation_data import SegBatchSampler, SegTrainDataset
    from engine.common import prepare_model
    from engine.segment import train_steps
    from models.registry import (build_segmentation_net, resolve_init_weights, seg_optim,
                                 seg_recipe, trained_weights_path)
    from utils.args import check_training_length
    from utils.checkpoint import claim_run, save_training_state, start_training
    from utils.dist import shard
    from utils.errors import UserError, resolve_run_folder
    from utils.lists import read_id_list
    from utils.logger import RunLog
    from utils.optim import PolySGD
    from utils.runtime import autocast_context, seed_everything

    lay = layout(args.data_set, args.data_path)
    args.backbone = args.backbone or lay.dataset.backbone
    for key, value in seg_recipe(args.backbone, len(read_id_list(args.train_list or
                                                                 lay.train_list))).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    exp = os.path.join("experiment", args.name)
    final = trained_weights_path(exp, "segmentation", args.backbone)  # what infer_seg.py loads
    out_dir = os.path.dirname(final)
    mask_dir = resolve_run_folder(exp, args.seg_pgt_path, "rw", "--seg_pgt_path",
                                  "pseudo masks", f"`python infer_aff.py --name {args.name}` "
                                  f"for the training list")
    gt_dirs = {os.path.realpath(lay.gt_dir(i)) for i in ("train", "val")}
    gt_dirs |= {os.path.realpath(os.path.join(lay.root, d)) for d in lay.dataset.masks}
    if os.path.realpath(mask_dir) in gt_dirs:
        raise UserError(f"--seg_pgt_path {mask_dir} is the dataset's ground truth. Training "
                        f"on it is fully supervised, not weakly supervised, and its scores "
                        f"would be meaningless here. Train on the pseudo masks of infer_aff.py "
                        f"(experiment/<name>/rw).")
    autocast_context(device, args.amp)
    weights = resolve_init_weights(args.backbone, args.weights, "segmentation")
    train_list = args.train_list or lay.train_list
    ids = read_id_list(train_list)
    check_training_length("--num_epochs", args.num_epochs, args.batch_size, info.world_size,
                          len(ids), train_list)
    each = len(ids) // info.world_size     # every rank takes as many steps
    dataset = SegTrainDataset(lay, list(shard(ids, info))[:each], mask_dir, args.crop_size,
                              args.mask_fill)

    claim_run(os.path.join(out_dir, "last.pth"), out_dir, args.resume, args.overwrite, info)
    log = RunLog(out_dir, enabled=info.is_main, tensorboard=args.tensorboard)
    seed_everything(args.seed + info.rank)
    num_classes = lay.num_classes + 1
    net, info_w = build_segmentation_net(args.backbone, num_classes, weights=weights)
    model = prepare_model(net, device, info, args.compile)
    sampler = SegBatchSampler(len(dataset), args.batch_size, args.num_epochs)
    max_step = len(sampler)
    group_wd, momentum = seg_optim(args.backbone, args.wt_dec, args.momentum)
    optimizer = PolySGD(net.param_groups(args.lr, group_wd), max_step, momentum=momentum)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    last = os.path.join(out_dir, "last.pth")
    start_step = sampler.steps_per_epoch * start_training(
        last, log, args, f"{args.backbone} on {len(ids)} pseudo masks of {mask_dir}, "
        f"{num_classes} classes, {sampler.steps_per_epoch} steps per epoch x "
        f"{args.num_epochs}; weights {weights or 'none (from scratch)'}: "
        f"{len(info_w['fresh'])} fresh tensors, {len(info_w['dropped'])} file tensors unused",
        net, optimizer, scaler, info,
        resolved={"weights": weights or "none", "train_list": train_list,
                  "seg_pgt_path": mask_dir})
    # the batch order is drawn from numpy's stream seeded here; a resumed run redraws it
    # from the same seed and skips the batches already done
    np.random.seed(args.seed + info.rank)
    sampler.start_batch = start_step
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0)

    def end_of_epoch(epoch, stats):
        stats = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats}
        log.epoch(stats)
        save_training_state(last, epoch, net, optimizer, scaler, args, info, weights=final)

    train_steps(model, loader, optimizer, device, sampler.steps_per_epoch, start_step,
                args.amp, scaler, info, on_epoch_end=end_of_epoch, last_good=last)
    log.close()
    if info.is_main:
        print(f"saved {final}")


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
