"""Train PCSS on PASCAL VOC 2012 (or the synthetic toy set); train_PCSS_coco.py is the same
program with COCO defaults. Scripts parse and wire; the loops live in engine/seeds.py.

    python train_PCSS.py --name pcss_voc --data-path data/VOC2012
    torchrun --nproc_per_node 4 train_PCSS.py --name pcss_voc --data-path data/VOC2012

Writes under ``experiment/<name>/``: ``ckpt/<EEE>net_trm.pth`` (the model after each epoch,
the reference's name), ``ckpt/last.pth`` (everything needed to ``--resume``), ``log.txt``
(one JSON line per epoch), ``train.log``, TensorBoard events, ``val_dict/`` (the seeds of
the latest in-training validation) and ``fim/`` (pictures of the FIM masks).
"""
from __future__ import annotations

import argparse

from datasets.layout import data_parent
from models.registry import network_parent
from utils.args import launch_script, script_parser, train_parent
from utils.errors import run_main


def get_args_parser(data_set: str = "VOC12", data_path: str = "data/VOC2012",
                    **pcss_defaults) -> argparse.ArgumentParser:
    return script_parser(
        "PCSS training (Phase Concentration and Shortcut Suppression, ECCV 2024)",
        data_parent(data_set, data_path), network_parent(), train_parent(**pcss_defaults))


def run(args, device, info) -> None:
    import os

    import torch
    from torch.utils.data.distributed import DistributedSampler

    from datasets import build_dataset
    from datasets.layout import default_input_size, layout
    from datasets.loader import image_loader, make_loader, reseed
    from engine.common import prepare_model
    from engine.seeds import fim_round, train_one_epoch, validate
    from models import ARCHS, build_arch, compile_network, init_from_deit
    from models.weights import deit_weights, freeze_parameters
    from models.pcss import PCSSConfig
    from utils.args import check_training_length
    from utils.checkpoint import atomic_save, claim_run, save_training_state, start_training
    from utils.dist import all_reduce_sum, shard
    from utils.errors import UserError
    from wsss.metrics import default_thresholds
    from wsss.frequency import FrequencyInfluence
    from utils.lists import read_id_list
    from utils.logger import RunLog
    from utils.manifest import file_fingerprint, producer
    from utils.runtime import autocast_context, seed_everything
    from utils.schedule import CosineSchedule, make_adamw, param_groups
    from utils.vis import save_mask_grid

    # ---- everything that can be wrong with the input is checked before any work
    lay = layout(args.data_set, args.data_path)
    train_list = args.train_list or lay.train_list
    val_list = args.val_list or lay.val_list
    finetune = deit_weights(args.arch, args.finetune)
    args.input_size = default_input_size(args.data_set, args.input_size)
    if args.input_size % 16:
        raise UserError(f"--input-size {args.input_size} is not a multiple of 16")
    autocast_context(device, args.amp)  # rejects --amp fp16 on CPU before any work
    out_dir = os.path.join("experiment", args.name)
    ckpt_dir = os.path.join(out_dir, "ckpt")
    depth = ARCHS[args.arch]["depth"]
    if args.mpc_block is None:
        args.mpc_block = min(round(7 * depth / 12), depth - 2)
    if not 0 <= args.mpc_block < depth:
        raise UserError(f"--mpc_idx {args.mpc_block} is outside 0..{depth - 1} for "
                        f"--arch {args.arch}")
    cfg = PCSSConfig(w_fss=args.W[0], w_mpc=args.W[1], mpc_block=args.mpc_block,
                     mpc_keep_ratio=args.mpc_keep_ratio, fim_start_epoch=args.fim_start_epoch,
                     fim_interval=args.fim_interval,
                     mpc_cam_start_epoch=args.mpc_cam_start_epoch,
                     reuse_prefix=args.reuse_prefix)
    validating = args.val_start_epoch < args.epochs
    train_ds = build_dataset(args.data_set, args.data_path, train_list, "train",
                             args.input_size, augment=args.augment)
    check_training_length("--epochs", args.epochs, args.batch_size, info.world_size,
                          len(train_ds), train_list)
    fim_ds = (build_dataset(args.data_set, args.data_path, train_list, "fim", args.input_size)
              if cfg.w_fss > 0 else None)
    val_ds = build_dataset(args.data_set, args.data_path, val_list, "infer") if validating else None

    claim_run(os.path.join(ckpt_dir, "last.pth"), out_dir, args.resume, args.overwrite, info)
    log = RunLog(out_dir, enabled=info.is_main, tensorboard=args.tensorboard)
    seed_everything(args.seed + info.rank)

    # ---- model, optimiser, schedule
    model = build_arch(args.arch, lay.num_classes, args.input_size, args.drop_path)
    if finetune:
        init_from_deit(model, finetune, report=log.text)
    model.norm.requires_grad_(False)  # the final norm is never applied (SPEC section 1)
    frozen = freeze_parameters(model, args.freeze)
    model_without_ddp = model.to(device)    # its state dict is what is saved
    # what the evaluation paths call (FIM, seeds), and what the training step calls
    net = compile_network(model_without_ddp) if args.compile else model_without_ddp
    model = prepare_model(net, device, info)
    lr = args.lr * args.batch_size * info.world_size / 512.0
    optimizer = make_adamw(
        param_groups(model_without_ddp, args.weight_decay, model_without_ddp.no_weight_decay()),
        lr=lr)
    schedule = CosineSchedule(optimizer, lr, args.epochs, args.warmup_epochs, args.warmup_lr,
                              args.min_lr)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    fim = FrequencyInfluence(lay.num_classes, args.input_size, 16, args.fim_images_per_class,
                             shard=(info.rank, info.world_size),
                             reduce=lambda t: all_reduce_sum(t, info))

    start_epoch = start_training(
        os.path.join(ckpt_dir, "last.pth"), log, args,
        f"{sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M parameters "
        f"({frozen} tensors frozen), lr {lr:.3g}, world size {info.world_size}, device "
        f"{device}, {'DeiT weights ' + finetune if finetune else 'from scratch'}",
        model_without_ddp, optimizer, scaler, info,
        resolved={"finetune": finetune or "none", "train_list": train_list,
                  "val_list": val_list if validating else "none (no validation)"},
        schedule=schedule, fim=fim)

    sampler = DistributedSampler(train_ds, info.world_size, info.rank, shuffle=True,
                                 seed=args.seed, drop_last=True) if info.distributed else None
    val_names = read_id_list(val_list) if validating else []
    thresholds = default_thresholds(*args.val_thresholds)
    loader = make_loader(train_ds, args.batch_size, args.num_workers, device, shuffle=True,
                         sampler=sampler, drop_last=True, persistent=True)
    vloader = (image_loader(val_ds, shard(range(len(val_ds)), info), args.num_workers, device)
               if validating else None)
    floader = (make_loader(fim_ds, args.fim_batch_size, args.num_workers, device, shuffle=True)
               if fim_ds is not None else None)
    for epoch in range(start_epoch, args.epochs):
        stats = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        masks = fim.masks if epoch > cfg.fim_start_epoch else None
        stats.update(train_one_epoch(model, reseed(loader, args.seed, epoch), optimizer,
                                     device, epoch, cfg, masks, args.amp, scaler, info,
                                     last_good=os.path.join(ckpt_dir, "last.pth")))
        epoch_file = os.path.join(ckpt_dir, f"{epoch:03d}net_trm.pth")
        if info.is_main:
            atomic_save(model_without_ddp.state_dict(), epoch_file)
        schedule.step(epoch + 1)
        if validating and epoch >= args.val_start_epoch:
            made_by = (producer(file_fingerprint(epoch_file), scales=[1.0], n_layers=12,
                                amp=args.amp) if info.is_main else None)
            result = validate(net, vloader, val_names, [lay.gt_path(n) for n in val_names],
                              os.path.join(out_dir, "val_dict"), device, thresholds,
                              lay.num_classes, args.amp, info, made_by=made_by)
            if result is not None:
                stats["miou"], stats["threshold"] = result[0], result[1]
        if cfg.fim_due(epoch):
            masks = fim_round(net, reseed(floader, args.seed, epoch), fim, device, args.amp,
                              progress=info.is_main)
            if info.is_main:
                save_mask_grid(masks.float().numpy(), lay.classes,
                               os.path.join(out_dir, "fim", f"masks_epoch{epoch:03d}.png"))
        log.epoch(stats)
        save_training_state(os.path.join(ckpt_dir, "last.pth"), epoch, model_without_ddp,
                            optimizer, scaler, args, info, schedule=schedule, fim=fim)
    log.close()


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
