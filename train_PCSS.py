"""Train PCSS on PASCAL VOC 2012 (or the synthetic toy set); train_PCSS_coco.py is the same
program with COCO defaults. Flags -> the objective (``models.pcss.PCSSObjective``, built from
its flags by name), the network, the optimiser -> ``engine.training.Trainer.fit``, whose
epochs run the seed stage's step (``engine.seeds.pcss_step``).

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
    import dataclasses
    from functools import partial

    from datasets import build_dataset
    from datasets.layout import default_input_size, layout
    from datasets.loader import image_loader, make_loader, reseed
    from engine.common import prepare_model
    from engine.run_folder import RunFolder
    from engine.seeds import fim_round, pcss_step, validate
    from engine.training import Trainer, batch_size, terms_but_total
    from models import ARCHS, build_arch, compile_network, init_from_deit
    from models.pcss import PCSSObjective
    from models.weights import deit_weights, freeze_parameters
    from utils.args import check_training_length, from_flags, run_options
    from utils.checkpoint import atomic_save
    from utils.dist import all_reduce_sum, shard
    from utils.errors import UserError
    from utils.lists import read_id_list
    from utils.manifest import file_fingerprint, producer
    from utils.runtime import autocast_context
    from utils.schedule import CosineSchedule, make_adamw, param_groups
    from utils.vis import save_mask_grid
    from wsss.frequency import FrequencyInfluence
    from wsss.metrics import default_thresholds

    # ---- everything that can be wrong with the input is checked before any work
    lay = layout(args.data_set, args.data_path)
    train_list = args.train_list or lay.train_list
    val_list = args.val_list or lay.val_list
    finetune = deit_weights(args.arch, args.finetune)
    input_size = default_input_size(args.data_set, args.input_size)
    if input_size % 16:
        raise UserError(f"--input-size {input_size} is not a multiple of 16")
    autocast_context(device, args.amp)  # rejects --amp fp16 on CPU before any work
    run_dir = RunFolder(args.name)
    last = run_dir.last_checkpoint("seeds")
    # the objective from its flags (each flag's dest is an option's name)
    objective = from_flags(partial(PCSSObjective.for_network, ARCHS[args.arch]["depth"]),
                           PCSSObjective.option_names(), args, get_args_parser())
    validating = args.val_start_epoch < args.epochs
    train_ds = build_dataset(args.data_set, args.data_path, train_list, "train",
                             input_size, augment=args.augment)
    check_training_length("--epochs", args.epochs, args.batch_size, info.world_size,
                          len(train_ds), train_list)
    fim_ds = (build_dataset(args.data_set, args.data_path, train_list, "fim", input_size)
              if objective.w_fss > 0 else None)
    val_ds = build_dataset(args.data_set, args.data_path, val_list, "infer") if validating else None

    trainer = Trainer(vars(args), device, info, last, run_dir.dir, **run_options(args))

    # ---- model, optimiser, schedule
    model = build_arch(args.arch, lay.num_classes, input_size, args.drop_path)
    if finetune:
        init_from_deit(model, finetune, report=trainer.log.text)
    objective.prepare(model)
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
    fim = FrequencyInfluence(lay.num_classes, input_size, 16, args.fim_images_per_class,
                             shard=(info.rank, info.world_size),
                             reduce=lambda t: all_reduce_sum(t, info))
    trainer.start(
        model_without_ddp, model, optimizer,
        f"{sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M parameters "
        f"({frozen} tensors frozen), lr {lr:.3g}, world size {info.world_size}, device "
        f"{device}, {'DeiT weights ' + finetune if finetune else 'from scratch'}",
        resolved={"finetune": finetune or "none", "train_list": train_list,
                  "input_size": input_size, **dataclasses.asdict(objective),
                  "val_list": val_list if validating else "none (no validation)"},
        schedule=schedule, fim=fim)

    loader = trainer.loader(train_ds, args.batch_size)
    val_names = read_id_list(val_list) if validating else []
    thresholds = default_thresholds(*args.val_thresholds)
    vloader = (image_loader(val_ds, shard(range(len(val_ds)), info), args.num_workers, device)
               if validating else None)
    floader = (make_loader(fim_ds, args.fim_batch_size, args.num_workers, device, shuffle=True)
               if fim_ds is not None else None)

    def step(epoch):
        masks = fim.masks if objective.uses_fss(epoch) else None
        return pcss_step(model, objective, epoch, masks, device, args.amp)

    def after_epoch(epoch, stats):
        """The epoch's weights, the schedule, seed validation and the FIM round."""
        epoch_file = run_dir.epoch_checkpoint(epoch)
        if info.is_main:
            atomic_save(model_without_ddp.state_dict(), epoch_file)
        schedule.step(epoch + 1)
        if validating and epoch >= args.val_start_epoch:
            made_by = (producer(file_fingerprint(epoch_file), scales=[1.0], n_layers=12,
                                amp=args.amp) if info.is_main else None)
            result = validate(net, vloader, val_names, [lay.gt_path(n) for n in val_names],
                              run_dir.val_dict, device, thresholds,
                              lay.num_classes, args.amp, info, made_by=made_by)
            if result is not None:
                stats["miou"], stats["threshold"] = result[0], result[1]
        if objective.fim_due(epoch):
            masks = fim_round(net, reseed(floader, args.seed, epoch), fim, device, args.amp,
                              progress=info.is_main)
            if info.is_main:
                save_mask_grid(masks.float().numpy(), lay.classes, run_dir.fim_masks(epoch))

    # the log holds every term of the objective (their sum, the total, aside), per image
    trainer.fit(loader, args.epochs, step, after_epoch=after_epoch, logged=terms_but_total,
                weigh=batch_size)


if __name__ == "__main__":
    run_main(lambda: launch_script(run, get_args_parser()))
