"""Train PCSS on PASCAL VOC 2012 (or the synthetic toy set); train_PCSS_coco.py is the same
program with COCO defaults. Scripts parse and wire; the loops live in engine.py.

    python train_PCSS.py --name pcss_voc --data-path data/VOC2012
    torchrun --nproc_per_node 4 train_PCSS.py --name pcss_voc --data-path data/VOC2012
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
from typing import Optional

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import datasets
from datasets.layout import layout
from engine.pcss import fim_round, train_one_epoch, validate
from models.pcss import PCSSConfig
from models import ARCHS, build_arch, init_from_deit
from utils.args import common_parent, default_input_size, train_parent
from utils.checkpoint import atomic_save, load_training_state, rng_state, set_rng_state
from utils.dist import all_reduce_sum, cleanup, init_distributed, local_device, shard
from utils.errors import UserError, run_main
from utils.evaluation import default_thresholds
from utils.frequency import FrequencyInfluence
from utils.lists import read_id_list
from utils.logger import RunLog
from utils.runtime import resolve_device, seed_everything
from utils.schedule import CosineSchedule, make_adamw, param_groups
from utils.vis import save_mask_grid

DEIT_WEIGHTS = {
    "deit_small": ("pretrained/deit_small_patch16_224-cd65a155.pth",
                   "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"),
    "deit_tiny": ("pretrained/deit_tiny_patch16_224-a1311bcf.pth",
                  "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth"),
}


def get_args_parser(data_set="VOC12", data_path="data/VOC2012", **pcss_defaults):
    parser = argparse.ArgumentParser(
        description="PCSS training (Phase Concentration and Shortcut Suppression, ECCV 2024)",
        parents=[common_parent(data_set, data_path), train_parent(**pcss_defaults)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return parser


def resolve_finetune(args) -> Optional[str]:
    """Path of the DeiT weights to start from, or None (from scratch); checked up front."""
    value = args.finetune
    if value is None:
        if args.arch not in DEIT_WEIGHTS:
            return None
        value = DEIT_WEIGHTS[args.arch][0]
    if value.lower() == "none":
        return None
    if not os.path.isfile(value):
        url = DEIT_WEIGHTS.get(args.arch, DEIT_WEIGHTS["deit_small"])[1]
        raise UserError(f"pretrained weights not found: {value}. Download the ImageNet DeiT "
                        f"weights ({url}) into pretrained/, pass --finetune PATH, or "
                        f"--finetune none to train from scratch.")
    return value


def freeze(model, patterns) -> int:
    """``requires_grad=False`` on parameters matching any pattern; returns the count."""
    n = 0
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            n += 1
    if patterns and n == 0:
        raise UserError(f"--freeze {' '.join(patterns)} matches no parameter name "
                        f"(names look like 'patch_embed.proj.weight', 'blocks.0.attn.qkv.weight')")
    return n


def make_loader(dataset, batch_size, num_workers, device, shuffle=False, sampler=None,
                drop_last=False, collate_fn=None, persistent=False):
    """A DataLoader whose shuffling follows ``loader.generator`` (reseeded per epoch with
    ``reseed``), so that an epoch's order depends on the seed and the epoch alone."""
    g = torch.Generator()
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, generator=g,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=persistent and num_workers > 0,
                      collate_fn=collate_fn)


def reseed(loader, seed: int, epoch: int):
    """Set the loader's shuffling (and worker seeds) for ``epoch``; returns the loader."""
    loader.generator.manual_seed(seed * 1000 + epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    return loader


def trim_log(path: str, first_epoch: int) -> None:
    """Drop JSON lines of epochs >= first_epoch (written after the checkpoint resumed)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [l for l in f if l.strip() and json.loads(l).get("epoch", -1) < first_epoch]
    with open(path, "w") as f:
        f.writelines(keep)


def main(args) -> None:
    device = resolve_device(args.device)
    info = init_distributed(device.type)
    device = local_device(info, device)
    try:
        run(args, device, info)
    finally:
        cleanup(info)


def run(args, device, info) -> None:
    # ---- everything that can be wrong with the input is checked before any work
    lay = layout(args.data_set, args.data_path)
    train_list = args.train_list or lay.train_list
    val_list = args.val_list or lay.val_list
    finetune = resolve_finetune(args)
    args.input_size = default_input_size(args)
    if args.input_size % 16:
        raise UserError(f"--input-size {args.input_size} is not a multiple of 16")
    out_dir = os.path.join("experiment", args.name)
    ckpt_dir = os.path.join(out_dir, "ckpt")
    if args.resume and not os.path.isfile(os.path.join(ckpt_dir, "last.pth")):
        raise UserError(f"--resume: no checkpoint at {ckpt_dir}/last.pth")
    depth = ARCHS[args.arch]["depth"]
    if args.mpc_idx is None:
        args.mpc_idx = min(round(7 * depth / 12), depth - 2)
    if not 0 <= args.mpc_idx < depth:
        raise UserError(f"--mpc_idx {args.mpc_idx} is outside 0..{depth - 1} for --arch {args.arch}")
    cfg = PCSSConfig(w_fss=args.W[0], w_mpc=args.W[1], mpc_block=args.mpc_idx,
                     mpc_keep_ratio=args.mpc_org_ratio, fim_start_epoch=args.fim_start_epo,
                     fim_interval=args.fim_interval_epo,
                     mpc_cam_start_epoch=args.mpc_cam_start_epo, reuse_prefix=args.reuse_prefix)
    validating = args.val_start_epo < args.epochs
    train_ds = datasets.build_dataset(args.data_set, args.data_path, train_list, "train",
                                      args.input_size, augment=args.augment)
    fim_ds = (datasets.build_dataset(args.data_set, args.data_path, train_list, "fim",
                                     args.input_size) if cfg.w_fss > 0 else None)
    val_ds = (datasets.build_dataset(args.data_set, args.data_path, val_list, "infer")
              if validating else None)

    log = RunLog(out_dir, enabled=info.is_main, tensorboard=args.tensorboard)
    seed_everything(args.seed + info.rank)

    # ---- model, optimiser, schedule
    model = build_arch(args.arch, lay.num_classes, args.input_size, args.drop_path)
    if finetune:
        init_from_deit(model, finetune)
    model.norm.requires_grad_(False)  # the final norm is never applied (SPEC section 1)
    frozen = freeze(model, args.freeze)
    model.to(device)
    model_without_ddp = model
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    lr = args.lr * args.batch_size * info.world_size / 512.0
    optimizer = make_adamw(
        param_groups(model_without_ddp, args.weight_decay, model_without_ddp.no_weight_decay()),
        lr=lr)
    schedule = CosineSchedule(optimizer, lr, args.epochs, args.warmup_epochs, args.warmup_lr,
                              args.min_lr)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    fim = FrequencyInfluence(lay.num_classes, args.input_size, 16, args.fim_ipc,
                             shard=(info.rank, info.world_size),
                             reduce=lambda t: all_reduce_sum(t, info))

    start_epoch = 0
    if args.resume:
        state = load_training_state(os.path.join(ckpt_dir, "last.pth"))
        model_without_ddp.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        fim.load_state_dict(state["fim"])
        set_rng_state(state["rng"][min(info.rank, len(state["rng"]) - 1)])
        start_epoch = int(state["epoch"]) + 1
        if info.is_main:
            trim_log(os.path.join(out_dir, "log.txt"), start_epoch)
        log.text(f"resumed from {ckpt_dir}/last.pth at epoch {start_epoch}")
    else:
        log.header(vars(args))
        log.text(f"{sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M "
                 f"parameters ({frozen} tensors frozen), lr {lr:.3g}, world size "
                 f"{info.world_size}, device {device}, "
                 f"{'DeiT weights ' + finetune if finetune else 'from scratch'}")

    sampler = DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True,
                                 seed=args.seed, drop_last=True) if info.distributed else None
    val_names = read_id_list(val_list) if validating else []
    val_share = (torch.utils.data.Subset(val_ds, list(shard(range(len(val_ds)), info)))
                 if validating else None)
    thresholds = default_thresholds(*args.val_thresholds)

    loader = make_loader(train_ds, args.batch_size, args.num_workers, device, shuffle=True,
                         sampler=sampler, drop_last=True, persistent=True)
    vloader = (make_loader(val_share, 1, args.num_workers, device, collate_fn=datasets.collate_single)
               if validating else None)
    floader = (make_loader(fim_ds, args.fim_batch_size, args.num_workers, device, shuffle=True)
               if fim_ds is not None else None)
    for epoch in range(start_epoch, args.epochs):
        stats = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        masks = fim.masks if epoch > cfg.fim_start_epoch else None
        stats.update(train_one_epoch(model, reseed(loader, args.seed, epoch), optimizer,
                                     device, epoch, cfg, masks, args.amp, scaler, info))
        if info.is_main:
            atomic_save(model_without_ddp.state_dict(),
                        os.path.join(ckpt_dir, f"{epoch:03d}net_trm.pth"))
        schedule.step(epoch + 1)
        if validating and epoch >= args.val_start_epo:
            result = validate(model_without_ddp, vloader, val_names,
                              [lay.gt_path(n) for n in val_names], os.path.join(out_dir, "dict"),
                              device, thresholds, lay.num_classes, args.amp, info)
            if result is not None:
                stats["miou"], stats["threshold"] = result[0], result[1]
        if cfg.fim_due(epoch):
            masks = fim_round(model_without_ddp, reseed(floader, args.seed, epoch), fim,
                              device, args.amp, progress=info.is_main)
            if info.is_main:
                save_mask_grid(masks.float().numpy(), lay.classes,
                                 os.path.join(out_dir, "fim", f"masks_epoch{epoch:03d}.png"))
        log.epoch(stats)
        log.text("epoch " + json.dumps(stats))
        if info.is_main:
            atomic_save({"model": model_without_ddp.state_dict(),
                         "optimizer": optimizer.state_dict(),
                         "schedule": schedule.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else None,
                         "fim": fim.state_dict(), "epoch": epoch,
                         "rng": gather_rng(info), "args": vars(args)},
                        os.path.join(ckpt_dir, "last.pth"))
        else:
            gather_rng(info)
    log.close()


def gather_rng(info):
    """Every rank's RNG state (list indexed by rank), collected on all ranks."""
    mine = rng_state()
    if not info.distributed:
        return [mine]
    out = [None] * info.world_size
    torch.distributed.all_gather_object(out, mine)
    return out


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
