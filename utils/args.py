"""Argument definitions shared by the scripts (deit's ``get_args_parser(add_help=False)``
habit): each function returns a parent parser; scripts combine them with ``parents=[...]``
and differ only in defaults. Flag names follow the reference repository.
"""
from __future__ import annotations

import argparse

from datasets.layout import DATA_SETS


def common_parent(data_set: str = "VOC12", data_path: str = "data/VOC2012") -> argparse.ArgumentParser:
    """Run name, data, network and device options used by every script."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run and data")
    g.add_argument("--name", required=True,
                   help="experiment name: everything is written under experiment/<name>/")
    g.add_argument("--data-set", "--data_set", dest="data_set", default=data_set,
                   choices=DATA_SETS, help=f"dataset (default {data_set})")
    g.add_argument("--data-path", "--data_path", dest="data_path", default=data_path,
                   help=f"dataset root (default {data_path})")
    g.add_argument("--num_workers", "--num-workers", dest="num_workers", type=int, default=4,
                   help="DataLoader worker processes (0: load in the main process)")
    g = p.add_argument_group("network and device")
    g.add_argument("--arch", default="deit_small", choices=("deit_small", "deit_tiny", "toy"),
                   help="network width/depth: deit_small (the paper), deit_tiny, or toy (a "
                        "small CPU-friendly network for the synthetic set)")
    g.add_argument("--input-size", "--input_size", dest="input_size", type=int, default=224,
                   help="square training size S (multiple of 16)")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=0)
    return p
