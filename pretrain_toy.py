"""Self-supervised pre-training on the toy set, saved in ImageNet DeiT format.

The demo's stand-in for the ImageNet DeiT weights that real runs start from (see
models/pretrain.py for why). The output loads with ``train_PCSS.py --finetune PATH``.

    python pretrain_toy.py --name demo --data-set TOY --data-path experiment/demo/toy
"""
from __future__ import annotations

import argparse

from datasets.layout import TOY_SET, data_parent
from models.registry import network_parent
from utils.args import device_parent, parse_args, run_parent
from utils.errors import run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        run_parent(), data_parent(TOY_SET.name, "experiment/demo/toy"), network_parent(),
        device_parent(amp=False)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(arch="toy", num_workers=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mask-ratio", type=float, default=0.4, help="share of patches zeroed")
    p.add_argument("--noise-std", type=float, default=1.0, help="input noise (normalised units)")
    p.add_argument("--train_list", default=None)
    p.add_argument("--out", default=None,
                   help="output file (default experiment/<name>/pretrain/deit_<arch>.pth)")
    return p


def main(args) -> str:
    from utils.runtime import resolve_device

    return run(args, resolve_device(args.device))


def run(args, device) -> str:
    import os

    import torch

    from datasets import build_dataset
    from datasets.layout import default_input_size, layout
    from datasets.loader import make_loader
    from engine.toy_pretrain import pretrain_one_epoch
    from models import build_arch
    from models.pretrain import ColourDenoiser
    from utils.checkpoint import atomic_save
    from utils.runtime import seed_everything

    lay = layout(args.data_set, args.data_path)
    size = default_input_size(args.data_set, args.input_size)
    ds = build_dataset(args.data_set, args.data_path, args.train_list or lay.train_list,
                       "train", size, augment="light")
    out = args.out or os.path.join("experiment", args.name, "pretrain", f"deit_{args.arch}.pth")
    seed_everything(args.seed)
    model = ColourDenoiser(build_arch(args.arch, 1, size, drop_path_rate=0.0)).to(device)
    if args.compile:
        from models import compile_network
        model.net = compile_network(model.net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    loader = make_loader(ds, args.batch_size, args.num_workers, device, shuffle=True,
                         drop_last=True, persistent=True)
    loader.generator.manual_seed(args.seed)      # one stream over all epochs
    for epoch in range(args.epochs):
        loss = pretrain_one_epoch(model, loader, optimizer, device, args.mask_ratio,
                                  args.noise_std, epoch)
        print(f"pretrain epoch {epoch}: loss {loss:.4f}", flush=True)
    atomic_save(model.deit_state_dict(), out)
    print(f"saved DeiT-format weights to {out}")
    return out


if __name__ == "__main__":
    run_main(lambda: main(parse_args(get_args_parser())))
