"""Argument definitions shared by the scripts (deit's ``get_args_parser(add_help=False)``
habit): each ``*_parent`` returns a parent parser that scripts combine with
``parents=[...]`` (``script_parser`` adds the run and device options every script
has); the VOC and COCO entry points differ only in defaults. Flag names follow the reference
repositories (PCSS, MCTformer, PSA); inside the code every quantity has one name, given here
with ``dest`` (``--mpc_idx`` -> ``mpc_block``, ...). Also the argument checks the training
scripts share (``check_training_length``), and ``launch_script``, what ``python
<script>.py`` does in every script that runs a network. No torch import: every script
answers ``--help`` and checks its flags at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Callable, Optional, Sequence

from utils.errors import UserError

AMP_MODES = ("none", "bf16", "fp16")     # mixed precision (utils.runtime.autocast_context)


def run_parent(workers: bool = True) -> argparse.ArgumentParser:
    """The run name (and the loading workers) of every script; the data options come from
    the dataset registry (``datasets.layout.data_parent``)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--name", required=True,
                   help="experiment name: everything is written under experiment/<name>/")
    if workers:
        g.add_argument("--num_workers", "--num-workers", dest="num_workers", type=int,
                       default=default_workers(),
                       help="worker processes for loading (0: the main process); default "
                            "min(4, the CPU cores this process may use)")
    return p


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:       # not on Linux
        return os.cpu_count() or 1


def default_workers(most: int = 4) -> int:
    """``min(most, usable CPU cores)``: as many loading workers as the machine (or the
    cores this process is bound to) has, so that PyTorch does not warn about too many."""
    return max(1, min(most, available_cores()))


def script_parser(description: str, *parents: argparse.ArgumentParser
                  ) -> argparse.ArgumentParser:
    """The parser of a script that runs a network: the run options, the device options,
    then ``parents`` (the data options, ``datasets.layout.data_parent``, among them);
    --help shows defaults."""
    return argparse.ArgumentParser(description=description,
                                   parents=[run_parent(), device_parent(), *parents],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def device_parent(amp: bool = True) -> argparse.ArgumentParser:
    """Device, seed, mixed precision and compilation: every script that runs a network."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=0)
    if amp:
        g.add_argument("--amp", choices=AMP_MODES, default="none",
                       help="mixed precision (FFTs stay in float32); fp16 needs a GPU")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="run the network through torch.compile (same numbers to float32 "
                        "rounding; a warm-up of seconds to minutes at the start)")
    return p


def train_parent(W=(2.0, 2.0), fim_start_epoch: int = 2, mpc_cam_start_epoch: int = 0,
                 val_start_epoch: int = 9) -> argparse.ArgumentParser:
    """Seed-stage training options; VOC and COCO scripts differ only in these defaults."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data lists")
    g.add_argument("--train_list", default=None,
                   help="training ids (default: the dataset's, e.g. train_aug.txt for VOC)")
    g.add_argument("--val_list", default=None,
                   help="ids for seed validation (default: the dataset's, e.g. train.txt)")
    g = p.add_argument_group("optimisation (AdamW, cosine schedule)")
    g.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=64)
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--lr", type=float, default=5e-4,
                   help="base learning rate, scaled by batch_size * world_size / 512")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float,
                   default=0.05)
    g.add_argument("--warmup-epochs", "--warmup_epochs", dest="warmup_epochs", type=int,
                   default=5)
    g.add_argument("--warmup-lr", "--warmup_lr", dest="warmup_lr", type=float, default=1e-6)
    g.add_argument("--min-lr", "--min_lr", dest="min_lr", type=float, default=1e-5)
    g.add_argument("--drop-path", "--drop_path", dest="drop_path", type=float, default=0.1)
    g.add_argument("--augment", choices=("timm", "light"), default="timm",
                   help="timm: the reference RandAugment transform; light: resize + flip + "
                        "shift, no colour change (the toy set's classes are colours)")
    g.add_argument("--freeze", nargs="*", default=[], metavar="PATTERN",
                   help="parameter-name patterns (fnmatch) to keep frozen, e.g. "
                        "'patch_embed.*' 'blocks.[0-2].*'")
    g = p.add_argument_group("PCSS (shortcut suppression, phase concentration)")
    g.add_argument("--W", action=SetEach, targets=("w_fss", "w_mpc"), type=float, nargs=2,
                   default=argparse.SUPPRESS, metavar=("W_FSS", "W_MPC"),
                   help=f"loss weights of shortcut suppression and phase concentration "
                        f"(--w_fss, --w_mpc at once; 0 0 is the plain multi-class-token "
                        f"model; default {W[0]:g} {W[1]:g})")
    g.add_argument("--w_fss", type=float, default=W[0], help="shortcut suppression's weight")
    g.add_argument("--w_mpc", type=float, default=W[1], help="phase concentration's weight")
    g.add_argument("--fim_start_epo", dest="fim_start_epoch", type=int,
                   default=fim_start_epoch, help="first epoch after which a FIM round runs")
    g.add_argument("--fim_interval_epo", dest="fim_interval", type=int, default=3,
                   help="epochs between FIM rounds")
    g.add_argument("--fim_ipc", dest="fim_images_per_class", type=int, default=100,
                   help="FIM images per class per round")
    g.add_argument("--fim_batch_size", type=int, default=64)
    g.add_argument("--mpc_idx", dest="mpc_block", type=int, default=None,
                   help="block k after which magnitudes mix (default 7 for the 12-block "
                        "DeiTs; for other depths round(7 * depth / 12), 2 for toy)")
    g.add_argument("--mpc_org_ratio", dest="mpc_keep_ratio", type=float, default=0.3,
                   help="share of the image's own magnitude in the mix")
    g.add_argument("--mpc_cam_start_epo", dest="mpc_cam_start_epoch", type=int,
                   default=mpc_cam_start_epoch, help="first epoch with the MPC CAM loss")
    g.add_argument("--reuse-prefix", "--reuse_prefix", dest="reuse_prefix",
                   action="store_true",
                   help="the mixed pass takes the first pass's tokens after block mpc_idx "
                        "as they are, without fresh drop-path masks (faster; equals the "
                        "reference only with --drop-path 0). Off: blocks 0..mpc_idx are "
                        "shared too, but with fresh masks and exactly the reference's values")
    g = p.add_argument_group("weights, validation, runtime")
    g.add_argument("--finetune", default=None,
                   help="ImageNet DeiT weights (default pretrained/<arch weights>.pth for "
                        "deit_small / deit_tiny, none for toy); 'none' trains from scratch")
    g.add_argument("--val_start_epo", dest="val_start_epoch", type=int,
                   default=val_start_epoch, help="first epoch with seed validation")
    g.add_argument("--val-thresholds", "--val_thresholds", dest="val_thresholds", type=float,
                   nargs=3, default=[0.30, 0.60, 0.01], metavar=("START", "STOP", "STEP"))
    add_training_state(g, "ckpt")
    return p


class SetEach(argparse.Action):
    """A flag of several values that sets one destination each (``--W A B`` sets ``w_fss``
    to A and ``w_mpc`` to B): the reference's flag, the internal names."""

    def __init__(self, option_strings, dest, targets: Sequence[str] = (), **kwargs):
        self.targets = tuple(targets)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        for target, value in zip(self.targets, values):
            setattr(namespace, target, value)


def from_flags(build: Callable, names: Sequence[str], args: argparse.Namespace,
               parser: argparse.ArgumentParser):
    """``build(**{name: args.<name>})`` for the option ``names`` (each the ``dest`` of a
    flag of ``parser``): how a script makes an object from its flags without naming each
    one. A ``ValueError`` of ``build`` (an invalid option) becomes a ``UserError`` in which
    the options' names are replaced by their flags (``mpc_block`` -> ``--mpc_idx``)."""
    try:
        return build(**{name: getattr(args, name) for name in names})
    except ValueError as e:
        flags = {a.dest: a.option_strings[0] for a in parser._actions
                 if a.option_strings and a.dest in names}
        raise UserError(re.sub(r"\b\w+\b", lambda m: flags.get(m.group(0), m.group(0)),
                               str(e))) from None


def add_training_state(group, folder: str) -> None:
    """``--resume`` (from ``experiment/<name>/<folder>/last.pth``), ``--overwrite`` (start
    over) and ``--no-tensorboard``: the flags every training script shares."""
    group.add_argument("--resume", action="store_true",
                       help=f"continue from experiment/<name>/{folder}/last.pth")
    group.add_argument("--overwrite", action="store_true",
                       help="start over in a folder that holds a training run, replacing its "
                            "checkpoints and logs (without it, a fresh run there is refused)")
    group.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")


def training_state_parent(folder: str) -> argparse.ArgumentParser:
    """``add_training_state`` as a parent parser (the refinement stages)."""
    p = argparse.ArgumentParser(add_help=False)
    add_training_state(p.add_argument_group("resuming and logging"), folder)
    return p


def overwrite_parent(what: str) -> argparse.ArgumentParser:
    """``--overwrite`` of the inference scripts, whose output folders belong to one set of
    weights (``utils.manifest``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument_group("outputs").add_argument(
        "--overwrite", action="store_true",
        help=f"replace {what} made earlier (by these or other weights)")
    return p


def launch_script(run: Callable, parser: argparse.ArgumentParser,
                  argv: Optional[Sequence[str]] = None):
    """What ``python <script>.py`` does in the scripts that run networks: ``parse_args``,
    then ``run(args, device, info)`` on ``--device``, in each torchrun process or in this
    one (``utils.dist.launch``). Returns what ``run`` returns."""
    args = parse_args(parser, argv)
    from utils.dist import launch     # torch: after --help / --print-args

    return launch(run, args, args.device)


def with_defaults(args: argparse.Namespace, **defaults) -> argparse.Namespace:
    """A copy of ``args`` in which each flag of ``defaults`` that was not given (``None``)
    takes its default there: the values that depend on other flags (a recipe, the
    backbone of the data set). ``args`` stays as parsed, which is what ``last.pth`` stores;
    the training log lists the resolved values beside it."""
    resolved = {k: v for k, v in defaults.items() if getattr(args, k) is None}
    return argparse.Namespace(**{**vars(args), **resolved})


def run_options(args: argparse.Namespace) -> dict:
    """The flags that decide how a training run runs (``engine.training.Trainer``'s
    keywords): ``--resume``, ``--overwrite``, TensorBoard, ``--seed``, ``--amp`` and the
    loader's ``--num_workers``."""
    return {k: getattr(args, k) for k in ("resume", "overwrite", "tensorboard", "seed", "amp",
                                          "num_workers")}


def positive_float(text: str) -> float:
    """argparse type of a number that must be > 0 (image scales)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def check_training_length(epochs_flag: str, epochs: int, batch_size: int, world_size: int,
                          images: int, list_path: str) -> None:
    """A ``UserError`` when a training run would take no step: fewer than one epoch, or a
    batch over all processes larger than the training list (the last partial batch is
    dropped, as the reference does)."""
    if epochs < 1:
        raise UserError(f"{epochs_flag} {epochs}: nothing to train; give at least 1")
    if images < batch_size * world_size:
        raise UserError(
            f"--batch_size {batch_size} x {world_size} process(es) is more than the {images} "
            f"images of {list_path}: with the last partial batch dropped (as the reference "
            f"does) an epoch would have no step. Use a smaller --batch_size.")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args(argv)``, plus ``--print-args``: print the parsed arguments as
    JSON and exit 0 (checks a command line without running it)."""
    parser.add_argument("--print-args", action="store_true",
                        help="print the parsed arguments as JSON and exit")
    args = parser.parse_args(argv)
    if args.print_args:
        print(json.dumps({k: v for k, v in sorted(vars(args).items()) if k != "print_args"}))
        sys.exit(0)
    del args.print_args
    return args


def crf_workers_parent() -> argparse.ArgumentParser:
    """``--crf_workers``: the processes that solve the dense CRF (and write the files)
    while the network runs on."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--crf_workers", type=non_negative_int, default=None, metavar="N",
                   help="worker processes for the dense CRF and file writing, beside the "
                        "network; outputs are the same for every N. 0: in the main process. "
                        "Default: this process's share of the cores less one for itself and "
                        "one per --num_workers (at least 1)")
    return p


def non_negative_int(text: str) -> int:
    """argparse type of a count that may be 0 (worker processes)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value
