"""Train the segmentation network on the pseudo masks (MCTformer's
``seg/train_seg.py``): the third stage, masks -> a DeepLab. Flags -> the pseudo-mask
dataset and its batch stream (``datasets.segmentation_data``), the network
(``models.registry.build_segmentation_net``) and poly SGD -> ``engine.training.Trainer.fit``,
whose epochs run ``engine.segment.segmentation_step``.

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
    g = p.add_argument_group("optimisation (poly SGD)")
    g.add_argument("--num_epochs", "--epochs", dest="epochs", type=int, default=None,
                   help="epochs (default 30 for resnet38 as run_seg.sh; deeplabv2_r101: as "
                        "many as 20,000 iterations of batch 10 make)")
    g.add_argument("--batch_size", type=int, default=None, help="default 4 (resnet38), 10 (r101)")
    g.add_argument("--lr", type=float, default=None, help="default 7e-4 (resnet38), 2.5e-4 (r101)")
    g.add_argument("--wt_dec", dest="weight_decay", type=float, default=None,
                   help="default 1e-5 (resnet38: the reference passes it as SGD's momentum and "
                        "applies no weight decay), 5e-4 (r101)")
    g.add_argument("--momentum", type=float, default=None,
                   help="SGD momentum (default: --wt_dec for resnet38 as the reference, 0.9 "
                        "for r101)")
    return p


def run(args, device, info) -> None:
    import os

    import numpy as np
    from torch.utils.data import DataLoader

    from datasets.layout import layout
    from datasets.segmentation_data import SegBatchSampler, SegTrainDataset
    from engine.common import prepare_model
    from engine.run_folder import RunFolder
    from engine.segment import logged_loss, segmentation_step
    from engine.training import Trainer
    from models.registry import (build_segmentation_net, resolve_init_weights, seg_optim,
                                 seg_recipe)
    from models.weights import describe_weights
    from utils.args import check_training_length, run_options, with_defaults
    from utils.dist import shard
    from utils.errors import UserError
    from utils.lists import read_id_list
    from utils.optim import PolySGD
    from utils.runtime import autocast_context

    lay = layout(args.data_set, args.data_path)
    train_list = args.train_list or lay.train_list
    ids = read_id_list(train_list)
    # the values that depend on other flags; args stays as parsed (what last.pth stores)
    backbone = args.backbone or lay.dataset.backbone
    opt = with_defaults(args, backbone=backbone, **seg_recipe(backbone, len(ids)))
    run_dir = RunFolder(args.name)
    final = run_dir.trained_weights("segmentation", backbone)  # what infer_seg.py loads
    mask_dir = run_dir.resolve(args.seg_pgt_path, run_dir.rw_dir, "--seg_pgt_path",
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
    weights = resolve_init_weights(backbone, args.weights, "segmentation")
    check_training_length("--num_epochs", opt.epochs, opt.batch_size, info.world_size,
                          len(ids), train_list)
    each = len(ids) // info.world_size     # every rank takes as many steps
    dataset = SegTrainDataset(lay, list(shard(ids, info))[:each], mask_dir, args.crop_size,
                              args.mask_fill)

    trainer = Trainer(vars(args), device, info, run_dir.last_checkpoint("segmentation", backbone),
                      run_dir.stage_dir("segmentation", backbone), weights=final,
                      **run_options(args))
    num_classes = lay.num_classes + 1
    net, info_w = build_segmentation_net(backbone, num_classes, weights=weights)
    model = prepare_model(net, device, info, args.compile)
    sampler = SegBatchSampler(len(dataset), opt.batch_size, opt.epochs)
    group_wd, momentum = seg_optim(backbone, opt.weight_decay, args.momentum)
    optimizer = PolySGD(net.param_groups(opt.lr, group_wd), len(sampler), momentum=momentum)
    start_epoch = trainer.start(
        net, model, optimizer, f"{backbone} on {len(ids)} pseudo masks of {mask_dir}, "
        f"{num_classes} classes, {sampler.steps_per_epoch} steps per epoch x "
        f"{opt.epochs}; " + describe_weights(weights, info_w),
        resolved={"weights": weights or "none", "train_list": train_list,
                  "seg_pgt_path": mask_dir, "backbone": backbone, "epochs": opt.epochs,
                  "batch_size": opt.batch_size, "lr": opt.lr,
                  "weight_decay": opt.weight_decay})
    # one stream of batches over all epochs, in the reference's order: drawn from numpy's
    # stream seeded here; a resumed run redraws it from the same seed and skips the batches
    # already done
    np.random.seed(args.seed + info.rank)
    sampler.start_batch = sampler.steps_per_epoch * start_epoch
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda",
                        persistent_workers=args.num_workers > 0)
    # the log's lr is that of each epoch's last step (the reference's)
    trainer.fit(loader, opt.epochs, lambda epoch: segmentation_step(model, device, args.amp),
                steps_per_epoch=sampler.steps_per_epoch, lr_after_epoch=True,
                what="the segmentation loss", logged=logged_loss, desc="segmentation",
                postfix_every=10)


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
