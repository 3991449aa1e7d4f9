"""Self-supervised pre-training on the toy set, saved in ImageNet DeiT format.

The demo's stand-in for the ImageNet DeiT weights that real runs start from (see
models/pretrain.py for why). The output loads with ``train_PCSS.py --finetune PATH``.

    python pretrain_toy.py --name demo --data-set TOY --data-path experiment/demo/toy
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import DataLoader

import datasets
from datasets.layout import layout
from engine.pretrain import pretrain_one_epoch
from models import build_arch
from models.pretrain import ColourDenoiser
from utils.args import common_parent, default_input_size
from utils.checkpoint import atomic_save
from utils.errors import run_main
from utils.runtime import resolve_device, seed_everything


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[
        common_parent("TOY", "experiment/demo/toy")],
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
    device = resolve_device(args.device)
    lay = layout(args.data_set, args.data_path)
    size = default_input_size(args)
    ds = datasets.build_dataset(args.data_set, args.data_path, args.train_list or lay.train_list,
                                "train", size, augment="light")
    out = args.out or os.path.join("experiment", args.name, "pretrain", f"deit_{args.arch}.pth")
    seed_everything(args.seed)
    model = ColourDenoiser(build_arch(args.arch, 1, size, drop_path_rate=0.0)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    g = torch.Generator()
    g.manual_seed(args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, generator=g,
                        persistent_workers=args.num_workers > 0)
    for epoch in range(args.epochs):
        loss = pretrain_one_epoch(model, loader, optimizer, device, args.mask_ratio,
                                  args.noise_std, epoch)
        print(f"pretrain epoch {epoch}: loss {loss:.4f}", flush=True)
    atomic_save(model.deit_state_dict(), out)
    print(f"saved DeiT-format weights to {out}")
    return out


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
