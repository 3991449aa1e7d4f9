"""The whole pipeline as one command (``pipeline.py``): the stages in order as the project's
own command lines, the checks before any work, skipping and resuming, and the report.

- **Stages** (``stage_names``, ``build_plan``): each is one command line that the README
  prints (``python <script>.py ...``, or ``torchrun --nproc_per_node N`` on the scripts that
  run under it), with the pipeline's folders filled in and the user's extra flags appended
  (``route_flags``: a plain flag goes to every stage whose parser takes it; a flag that means
  different things in different scripts needs a stage, ``--train_aff.weights FILE``).
- **Preflight** (``preflight``): every stage's command line parses; the data layout; every
  weight file the stages start from (named, with where to get it); free disk against what
  the stages will write (the dataset's ``disk_per_image`` x list lengths); the device. One
  line per problem, and nothing is written.
- **Skipping and resuming** (``decide``): the run folder's ``pipeline.json`` records, per
  stage, a key (its command line and the keys of the stages it reads from) and the
  fingerprints of its outputs. A stage whose key and outputs are unchanged is skipped; one
  that was started and killed continues (a training stage with ``--resume``, an inference
  stage through its own skipping of the images already done); one whose inputs changed is
  redone with ``--overwrite`` (never mixed with the old outputs).
- **Report** (``write_report``): ``summary.json``, ``report.md`` (mIoU per stage beside the
  literature's figures, per-class IoU, time and disk per stage) and ``figure.png``.

The toy preset (``make demo``) and the reasons for its choices are the ``toy_*`` functions
(one section of this module).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from datasets.layout import TOY_SET, Layout, dataset, layout
from engine.run_folder import CRF_ALPHAS, RunFolder, alpha_name
from models.registry import BACKBONES
from utils.errors import UserError
from utils.lists import read_id_list
from utils.commands import ROOT

GB = 1e9

# ---------------------------------------------------------------------------- flags
# families a flag can be addressed to, besides a stage or a script name
SCOPES = {"seeds": ("train_PCSS", "train_PCSS_coco", "infer_PCSS"),
          "aff": ("train_aff", "infer_aff"), "seg": ("train_seg", "infer_seg")}
# set by the pipeline for each stage (folders, weights of the run, resuming)
RESERVED = ("--name", "--data-set", "--data_set", "--data-path", "--data_path", "--resume",
            "--overwrite", "--print-args", "--task", "--json", "--load_epo",
            "--load_pretrained", "--out", "--out_rw", "--dict_dir", "--cam_dir", "--split",
            "--la_crf_dir", "--ha_crf_dir", "--seg_pgt_path", "--dict", "--crf")
# one name, different meanings in different scripts: these need a stage
AMBIGUOUS = ("--weights", "--scales", "--epochs", "--batch_size", "--batch-size", "--lr",
             "--train_list", "--val_list", "--infer_list", "--list", "--crop_size",
             "--num_epochs", "--thresholds", "--threshold", "--num-images", "--num_images")
TORCHRUN_SCRIPTS = ("train_PCSS", "train_PCSS_coco", "infer_PCSS", "train_aff", "infer_aff",
                    "train_seg", "infer_seg")


@dataclass
class Stage:
    """One command of the plan. ``script`` is a file name (``train_PCSS.py``) or a module
    (``datasets.toy``, run with ``-m``)."""
    name: str
    script: str
    kind: str                          # "data", "train", "infer" or "eval"
    args: List[str] = field(default_factory=list)
    deps: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)   # relative to the repository root
    ckpt: Optional[str] = None         # training: the last.pth a killed run resumes from
    result: Optional[str] = None       # evaluation: its JSON
    prepare: Optional[Callable[[], None]] = None       # in-process work before the command
    finish: Optional[Callable[[], None]] = None        # ... and after it
    torchrun: bool = False
    disk: float = 0.0
    seconds: float = 0.0
    key: str = ""
    extra: List[str] = field(default_factory=list)     # --resume / --overwrite, decided late
    action: str = "run"
    ns: Optional[argparse.Namespace] = None             # its parsed command line
    parser: Optional[argparse.ArgumentParser] = None    # ... and the parser that read it

    @property
    def program(self) -> str:
        return self.script[:-3] if self.script.endswith(".py") else self.script

    def argv(self, nproc: int = 1) -> List[str]:
        """The command line, without the interpreter."""
        target = [self.script] if self.script.endswith(".py") else ["-m", self.script]
        if self.torchrun and nproc > 1:
            target = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] + target
        return target + self.args + self.extra

    def shown(self, nproc: int = 1) -> str:
        argv = self.argv(nproc)
        if argv[:2] == ["-m", "torch.distributed.run"]:
            return "torchrun " + " ".join(argv[2:])
        return "python " + " ".join(argv)


def stage_names(data_set: str, preset: str, test: bool = False) -> List[tuple]:
    """``(stage, script)`` of the plan in order."""
    if preset == "toy":
        return [("toy_data", "datasets.toy"), ("pretrain", "pretrain_toy.py"),
                ("seeds_train", "train_PCSS.py"), ("seeds", "infer_PCSS.py"),
                ("seeds_eval", "evaluation.py"), ("untrained", "infer_PCSS.py"),
                ("untrained_eval", "evaluation.py"), ("aff_train", "train_aff.py"),
                ("rw", "infer_aff.py"), ("masks_eval", "evaluation.py"),
                ("seg_train", "train_seg.py"), ("seg_val", "infer_seg.py"),
                ("seg_eval", "evaluation.py"), ("figure", "infer_seg.py")]
    seeds = dataset(data_set).seed_script
    lists = dataset(data_set).lists     # masks scored on a list of their own: walked first
    walk = ([("rw_train", "infer_aff.py"), ("masks_eval", "evaluation.py"), ("rw", "infer_aff.py")]
            if lists["eval"] != lists["train"]
            else [("rw", "infer_aff.py"), ("masks_eval", "evaluation.py")])
    return ([("seeds_train", seeds), ("seeds", "infer_PCSS.py"), ("seeds_eval", "evaluation.py"),
             ("aff_train", "train_aff.py")] + walk
            + [("seg_train", "train_seg.py"), ("seg_val", "infer_seg.py"),
               ("seg_eval", "evaluation.py"), ("figure", "infer_seg.py")]
            + ([("test", "infer_seg.py")] if test else []))


def program_name(script: str) -> str:
    """``train_aff`` for ``train_aff.py``, ``datasets.toy`` as it is."""
    return script[:-3] if script.endswith(".py") else script


def route_flags(extra: Sequence[str], stages: Sequence[tuple],
                parsers: Mapping[str, argparse.ArgumentParser]) -> Dict[str, List[str]]:
    """The user's extra flags by stage: ``--flag V`` goes to every stage whose script's
    parser takes ``--flag``; ``--SCOPE.flag V`` only to the stages of SCOPE (a stage name, a
    script name such as ``train_aff``, or a family: seeds, aff, seg). A ``UserError`` for a
    flag no stage takes, one the pipeline sets itself, or one that means different things in
    the stages that take it and has no scope."""
    routed: Dict[str, List[str]] = {name: [] for name, _ in stages}
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"unexpected argument {tok!r}: extra flags are --flag [values] "
                            f"(or --STAGE.flag), passed to the stages that take them")
        head, eq, value = tok.partition("=")
        scope, dot, bare = head[2:].partition(".")
        flag = "--" + (bare if dot else scope)
        targets = [(n, s) for n, s in stages
                   if not dot or scope in (n, program_name(s)) or program_name(s) in SCOPES.get(scope, ())]
        if dot and not targets:
            names = sorted({n for n, _ in stages} | {program_name(s) for _, s in stages} | set(SCOPES))
            raise UserError(f"{head}: no stage or script {scope!r} in this pipeline; choose one "
                            f"of {', '.join(names)}")
        if flag in RESERVED:
            raise UserError(f"{head}: the pipeline sets {flag} itself for each stage (use "
                            f"--from STAGE to redo stages, --name for another run)")
        takers = [(n, s) for n, s in targets if flag in parsers[s]._option_string_actions]
        if not takers:
            raise UserError(f"{head}: no stage of this pipeline takes {flag} "
                            f"({'stages ' + scope if dot else 'scripts'}: "
                            f"{', '.join(sorted({s for _, s in targets}))}). Check the spelling "
                            f"with python <script>.py --help")
        scripts = sorted({s for _, s in takers})
        if not dot and flag in AMBIGUOUS and len(scripts) > 1:
            raise UserError(f"{flag} means different things in {', '.join(scripts)}: name the "
                            f"stage, e.g. --{program_name(scripts[-1])}.{flag[2:]} "
                            f"(stages: {', '.join(n for n, _ in takers)})")
        action = parsers[takers[0][1]]._option_string_actions[flag]
        i += 1
        if eq:
            values = [value]
        else:
            n = action.nargs
            if n is None:
                n = 1
            if isinstance(n, int):
                values = list(extra[i:i + n])
                if len(values) < n:
                    raise UserError(f"{head} needs {n} value(s)")
            else:       # "?", "*", "+": up to the next flag
                values = []
                while i + len(values) < len(extra) and not extra[i + len(values)].startswith("--"):
                    values.append(extra[i + len(values)])
                    if n == "?":
                        break
            i += len(values)
        for n_, _ in takers:
            routed[n_] += [flag] + values
    return routed


def _parse(parser: argparse.ArgumentParser, script: str, args: List[str]) -> argparse.Namespace:
    """``args`` parsed by ``script``'s parser; a ``UserError`` naming the script instead of
    argparse's exit."""
    def error(message):
        raise UserError(f"{script}: {message}")
    parser.error = error
    return parser.parse_args(args)


def _list_length(path: str) -> int:
    try:
        return len(read_id_list(path))
    except (OSError, UserError):
        return 0




# ---------------------------------------------------------------------------- the plan
def build_plan(name: str, data_set: str, data_path: str, preset: str,
               routed: Mapping[str, List[str]], parsers: Mapping[str, argparse.ArgumentParser],
               until: Optional[str] = None, test: bool = False, nproc: int = 1,
               baseline_images: int = 400) -> List[Stage]:
    """The stages of the run ``name`` (``RunFolder(name)``) in order, with their full command
    lines (every one parsed by its script's parser), outputs, dependencies and estimates."""
    run = RunFolder(name)       # paths as the commands, run from the repository, name them
    if preset == "toy":
        data_set, data_path = TOY_SET.name, run.toy_data
    lay = layout(data_set, data_path, check=False)    # paths as the commands name them
    rel = lambda p: p                                 # noqa: E731
    data = ["--data-set", data_set, "--data-path", data_path]
    names = [n for n, _ in stage_names(data_set, preset, test)]
    stop = names.index(until) + 1 if until else len(names)
    crf_needed = "aff_train" in names[:stop]
    disk = lay.dataset.disk_per_image
    rate = lay.dataset.seconds_per_image
    n_train = _list_length(os.path.join(ROOT, rel(lay.train_list))) or (
        int(1600 * 0.8) if preset == "toy" else 0)
    plan: List[Stage] = []
    spaces: Dict[str, argparse.Namespace] = {}

    def add(stage: Stage, derive: Optional[Callable[[argparse.Namespace], List[str]]] = None):
        parser = parsers[stage.script]
        user = list(routed.get(stage.name, []))
        ns = _parse(parser, stage.script, stage.args + user)
        if derive is not None:
            stage.args += derive(ns)
            ns = _parse(parser, stage.script, stage.args + user)
        stage.args += user
        stage.torchrun = program_name(stage.script) in TORCHRUN_SCRIPTS
        spaces[stage.name] = stage.ns = ns
        stage.parser = parser
        plan.append(stage)
        return ns

    toy = preset == "toy"
    default_net = lay.dataset.backbone     # of AffinityNet and the segmentation net
    # the toy preset (`make demo`): its choices, and why, are the toy_* functions below
    common = toy_common() if toy else []
    train_list = rel(lay.train_list)
    if toy:
        ns = add(Stage("toy_data", "datasets.toy", "data", ["--out", data_path] + toy_data(),
                       outputs=[rel(lay.label_file)]))
        n_train = int(ns.num_images * (1 - ns.val_fraction))
        plan[-1].seconds = ns.num_images * rate["toy_data"]
        plan[-1].disk = ns.num_images * 15e3
        weights = run.pretrained("toy")
        ns = add(Stage("pretrain", "pretrain_toy.py", "train",
                       ["--name", name, *toy_pretraining(), "--out", weights, *data,
                        *common],
                       deps=["toy_data"], outputs=[weights]))
        plan[-1].seconds = ns.epochs * n_train * rate["pretrain"]
        plan[-1].disk = disk["ckpt_epoch"]

    # ---- seeds
    seeds_script = [s for n, s in stage_names(data_set, preset, test) if n == "seeds_train"][0]
    base = ["--name", name, *data]
    if toy:
        base += toy_seed_training(weights) + common
    ns = add(Stage("seeds_train", seeds_script, "train", base,
                   deps=["toy_data", "pretrain"] if toy else [],
                   ckpt=run.last_checkpoint("seeds")),
             derive=lambda ns: toy_schedule(ns, routed.get("seeds_train", [])) if toy else [])
    last_epoch = ns.epochs - 1
    plan[-1].outputs = [run.epoch_checkpoint(last_epoch)]
    plan[-1].seconds = ns.epochs * n_train * rate["seeds_train"]
    plan[-1].disk = ns.epochs * disk["ckpt_epoch"] + disk["ckpt_last"]
    arch = ["--arch", ns.arch]
    alphas = ["0.5", "2"] if toy else [alpha_name(a) for a in CRF_ALPHAS]
    ns = add(Stage("seeds", "infer_PCSS.py", "infer",
                   ["--name", name, *arch, "--load_epo", str(last_epoch), "--dict"]
                   + (["--crf", "--alphas", *alphas] if crf_needed else [])
                   + (toy_crf_format() if toy and crf_needed else [])
                   + (["--val_list", train_list] if toy else []) + data + common,
                   deps=["seeds_train"]))
    alphas = ns.alphas
    n_infer = _list_length(os.path.join(ROOT, ns.infer_list or rel(lay.infer_list))) or n_train
    crf_dirs = [run.crf_dir(a) for a in alphas] if crf_needed else []
    plan[-1].outputs = [run.dict_dir] + crf_dirs
    plan[-1].seconds = n_infer * (rate["seeds"] + (rate["crf"] * len(alphas) / 2
                                                   if crf_needed else 0))
    plan[-1].disk = n_infer * (disk["dict"] + (disk["crf"] * len(alphas) if crf_needed else 0))
    seeds_list = train_list if toy else rel(lay.eval_list)
    thresholds = ["--thresholds", "0.30", "0.80", "0.01"] if toy else []
    seeds_json = run.eval_json("seeds")
    add(Stage("seeds_eval", "evaluation.py", "eval",
              ["--name", name, "--task", "cam", "--dict_dir", run.dict_dir, "--list",
               seeds_list, *data, *thresholds, "--json", seeds_json],
              deps=["seeds"], outputs=[seeds_json, run.eval_json("cam")], result=seeds_json))
    plan[-1].seconds = _list_length(os.path.join(ROOT, seeds_list)) * rate["eval"] * 5
    if toy:
        plan += toy_baseline(run, data, common, train_list, baseline_images, parsers,
                             routed, spaces)
    # ---- refinement
    la, ha = crf_dirs[:1] + crf_dirs[-1:] if crf_dirs else (None, None)
    ns = add(Stage("aff_train", "train_aff.py", "train",
                   ["--name", name, "--la_crf_dir", str(la), "--ha_crf_dir", str(ha)]
                   + (toy_affinity() if toy else []) + data + common, deps=["seeds"]))
    backbone = ns.backbone or default_net
    plan[-1].outputs = [run.trained_weights("affinity", backbone)]
    plan[-1].ckpt = run.last_checkpoint("affinity", backbone)
    plan[-1].seconds = (ns.epochs or 5) * n_infer * rate["aff_train"]
    plan[-1].disk = disk["aff"]
    masks_list = seeds_list
    if "rw_train" in names:
        add(Stage("rw_train", "infer_aff.py", "infer",
                  ["--name", name, "--infer_list", masks_list, "--out_rw", run.rw_train_dir,
                   *data, *common], deps=["aff_train", "seeds", "seeds_eval"],
                  outputs=[run.rw_train_dir]))
        n = _list_length(os.path.join(ROOT, masks_list))
        plan[-1].seconds, plan[-1].disk = n * rate["rw"], n * disk["png"]
    rw_args = ["--name", name] + (["--infer_list", train_list] if toy else []) + data + common
    rw_stage = Stage("rw", "infer_aff.py", "infer", rw_args,
                     deps=["aff_train", "seeds", "seeds_eval"], outputs=[run.rw_dir])
    rw_stage.seconds, rw_stage.disk = n_train * rate["rw"], n_train * disk["png"]
    masks_json = run.eval_json("masks")
    walked = "rw_train" if "rw_train" in names else "rw"
    masks = Stage("masks_eval", "evaluation.py", "eval",
                  ["--name", name, "--task", "png", "--dict_dir",
                   run.rw_train_dir if walked == "rw_train" else run.rw_dir, "--list",
                   masks_list, *data, "--json", masks_json],
                  deps=[walked], outputs=[masks_json], result=masks_json)
    masks.seconds = _list_length(os.path.join(ROOT, masks_list)) * rate["eval"]
    for stage in ([masks, rw_stage] if walked == "rw_train" else [rw_stage, masks]):
        add(stage)
    # ---- segmentation
    ns = add(Stage("seg_train", "train_seg.py", "train",
                   ["--name", name] + (toy_segmentation() if toy else []) + data + common,
                   deps=["rw"]))
    backbone = ns.backbone or default_net
    plan[-1].outputs = [run.trained_weights("segmentation", backbone)]
    plan[-1].ckpt = run.last_checkpoint("segmentation", backbone)
    plan[-1].seconds = (ns.epochs or 30) * n_train * rate["seg_train"]
    plan[-1].disk = disk["segnet"]
    val_list = rel(lay.seg_val_list)
    n_val = _list_length(os.path.join(ROOT, val_list)) or int(1600 * 0.2)
    ns = add(Stage("seg_val", "infer_seg.py", "infer",
                   ["--name", name] + (["--infer_list", val_list] if toy else ["--use_crf"])
                   + data + common, deps=["seg_train"]))
    backbone = ns.backbone or default_net          # other backbones predict beside the default
    seg_dir = run.seg_dir(backbone)
    plan[-1].outputs = [seg_dir]
    plan[-1].seconds, plan[-1].disk = n_val * rate["seg_val"], n_val * disk["png"]
    seg_json = run.eval_json("seg")
    add(Stage("seg_eval", "evaluation.py", "eval",
              ["--name", name, "--task", "png", "--dict_dir", seg_dir, "--list",
               val_list, *data, "--json", seg_json],
              deps=["seg_val"], outputs=[seg_json], result=seg_json))
    plan[-1].seconds = n_val * rate["eval"]
    figure_ids = run.figure_ids
    fig = Stage("figure", "infer_seg.py", "infer",
                ["--name", name, "--infer_list", figure_ids, "--out", run.figure_seg,
                 "--num_workers", "0", *data]
                + (["--device", "auto", "--seed", "0"] if toy else ["--use_crf"]),
                deps=["seg_train", "seeds", "seeds_eval", "rw"],
                outputs=[run.figure_seg, run.figure])
    fig.prepare = lambda: _write_ids(os.path.join(ROOT, figure_ids),
                                     read_id_list(os.path.join(ROOT, masks_list))[:6])
    fig.finish = lambda: draw_figure(RunFolder(name, ROOT), lay)
    fig.seconds = 6 * rate["seg_val"]
    add(fig)
    if test:
        add(Stage("test", "infer_seg.py", "infer", ["--name", name, "--use_crf", "--split",
                                                    "test", *data],
                  deps=["seg_train"],
                  outputs=[run.results_archive(backbone)]))
        plan[-1].seconds = 1456 * rate["seg_val"]
    plan = plan[:[s.name for s in plan].index(until) + 1] if until else plan
    for stage in plan:
        stage.seconds /= max(nproc, 1) if stage.torchrun else 1
    _keys(plan)
    return plan


# ---------------------------------------------------------------------------- the toy preset
def toy_data() -> List[str]:
    """The synthetic set (``datasets/toy.py``): 1,600 images of 96 px in the VOC layout with
    4 classes (red, green, blue, yellow) recognisable from colour and stripe frequency,
    random blob shapes, quiet backgrounds; 80% train, 20% val. ``--toy_data.shortcut`` puts
    the stripes of a class in some backgrounds (the frequency shortcut of ``make
    ablation``)."""
    return ["--num-images", "1600", "--seed", "0"]


def toy_pretraining() -> List[str]:
    """``pretrain_toy.py``: 10 epochs of self-supervised pre-training, saved in DeiT format:
    the stand-in for the ImageNet DeiT-S weights of real runs (see ``toy_seed_training``)."""
    return ["--epochs", "10"]


def toy_common() -> List[str]:
    """Flags of every network stage on the toy set: one loading worker (the 2-core machine),
    the device, seed 0."""
    return ["--num_workers", "1", "--device", "auto", "--seed", "0"]


def toy_seed_training(weights: str) -> List[str]:
    """PCSS on the toy set, and why:

    - ``--finetune`` the self-supervised pre-training of ``pretrain_toy.py`` (10 epochs: 40%
      of patches zeroed, noise on the input, a linear decoder regresses each patch's 4x4
      average colours). It stands in for the ImageNet DeiT-S weights of real runs: trained
      from scratch, a small ViT learns the classes but its patch attention spreads class
      evidence over the whole image.
    - everything but the last block and the heads frozen (``--freeze``), a fixed schedule of
      8 epochs at batch 32 (AdamW at 5e-4: ``--lr`` is scaled by batch / 512 in the script,
      so the preset passes 5e-4 * 512 / batch), no warm-up, no stopping on a validation
      score (``--val_start_epo`` = the last epoch).
    - ``--W 0.5 0.5`` instead of VOC's 2 2: on 96 px images the FIM masks remove most of each
      image at weight 2 and classification stalls. ``--augment light``: the classes are
      colours, so no colour jitter.
    """
    return ["--arch", "toy", "--finetune", weights, "--freeze", "patch_embed.*",
            "blocks.[0-2].*", "--epochs", "8", "--batch_size", "32", "--warmup-epochs", "0",
            "--augment", "light", "--W", "0.5", "0.5", "--no-tensorboard"]


def toy_schedule(ns: argparse.Namespace, user: Sequence[str]) -> List[str]:
    """What follows from the toy seed training's batch size and epochs (unless given):
    ``--lr`` 5e-4 * 512 / batch (AdamW at 5e-4 after the script's scaling) and no
    validation before the last epoch."""
    return ((["--lr", f"{5e-4 * 512 / ns.batch_size:g}"] if "--lr" not in user else [])
            + (["--val_start_epo", str(ns.epochs)] if "--val_start_epo" not in user else []))


def toy_crf_format() -> List[str]:
    """The toy set's CRF score dicts in PSA's float32 format, not the compact default: the
    toy objects have sharp edges, so many 4 x 4 blocks that affinity training pools lie
    half in one class and half in another, and their two means tie to within 1e-6. Which
    class wins such a block is float32 rounding, and no 16-bit fixed point keeps it (the
    finest, steps of 1.5e-5, still flips 0.007 % of the label cells; the default 1e-4 steps
    0.05 %), so with compact dicts the demo's figures would move. At 96 px the files are
    small either way."""
    return ["--crf_format", "psa"]


def toy_affinity() -> List[str]:
    """AffinityNet on the toy set: the small stride-4 trunk (the toy default), 96 px crops,
    batch 16, 2 epochs at lr 0.05 with momentum 0.9. Its CRF score dicts are at alphas 0.5
    and 2, not VOC's 1 and 12: the toy network's CAMs are hotter (best threshold near 0.6),
    and CRF label mIoU on the train list is 83% at 0.5, 81% at 1, 76% at 2, 38% at 12."""
    return ["--crop_size", "96", "--batch_size", "16", "--max_epoches", "2", "--lr", "0.05",
            "--momentum", "0.9", "--no-tensorboard"]


def toy_segmentation() -> List[str]:
    """The small segmentation network on the toy set: 96 px crops, 4 epochs (with 2, one
    seed's network was still far from converged); 5-scale inference on the val list."""
    return ["--crop_size", "96", "--num_epochs", "4", "--no-tensorboard"]


def toy_baseline(run: RunFolder, data: List[str], common: List[str], train_list: str,
                 images: int, parsers, routed, spaces) -> List[Stage]:
    """The untrained baseline of the toy run: a randomly initialised network's seeds on the
    first ``images`` train ids (a random network scores about the same on any sizeable
    sample), scored like the trained one's."""
    base = run.untrained
    weights = base.random_init
    ids = run.baseline_ids
    seeds = spaces["seeds_train"]
    untrained = Stage("untrained", "infer_PCSS.py", "infer",
                      ["--name", base.name, "--arch", seeds.arch, "--load_pretrained",
                       weights, "--val_list", ids, *data, *common], deps=["toy_data"],
                      outputs=[base.dict_dir])

    def prepare():
        from models.weights import save_initial_weights

        lay = layout(TOY_SET.name, os.path.join(ROOT, seeds.data_path), check=False)
        save_initial_weights(os.path.join(ROOT, weights), seeds.arch, lay.num_classes,
                             seeds.input_size or TOY_SET.input_size, seeds.seed)
        _write_ids(os.path.join(ROOT, ids),
                   read_id_list(os.path.join(ROOT, train_list))[:images])
    untrained.prepare = prepare
    out = base.eval_json("seeds")
    scored = Stage("untrained_eval", "evaluation.py", "eval",
                   ["--name", base.name, "--task", "cam", "--dict_dir",
                    base.dict_dir, "--list", ids, *data, "--thresholds", "0.30",
                    "0.80", "0.01", "--json", out], deps=["untrained"], outputs=[out], result=out)
    for stage in (untrained, scored):
        user = list(routed.get(stage.name, []))
        stage.parser = parsers[stage.script]
        spaces[stage.name] = stage.ns = _parse(stage.parser, stage.script, stage.args + user)
        stage.args += user
        stage.torchrun = stage.script == "infer_PCSS.py"
    untrained.seconds = images * 0.006
    return [untrained, scored]


def _write_ids(path: str, ids: Sequence[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(ids) + "\n")


def _settings(ns: argparse.Namespace, parser: Optional[argparse.ArgumentParser]) -> list:
    """``ns``'s values that are not ``parser``'s defaults, sorted by name."""
    defaults = {a.dest: a.default for a in (parser._actions if parser else ())}
    return sorted((k, v) for k, v in vars(ns).items()
                  if k not in defaults or defaults[k] != v)


def _keys(plan: List[Stage]) -> None:
    """Each stage's key: its parsed command line, the values that differ from the script's
    defaults (so flags given twice, in another order or at their defaults change nothing,
    nor does a flag a script gains later), and the keys of the stages it reads from."""
    keys: Dict[str, str] = {}
    for stage in plan:
        settings = _settings(stage.ns, stage.parser) if stage.ns is not None else stage.args
        text = json.dumps([stage.script, settings, [keys.get(d, "") for d in stage.deps]])
        stage.key = keys[stage.name] = hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- preflight
def free_bytes(path: str) -> int:
    """Free bytes on the file system that holds ``path`` (its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path) or "."
    return shutil.disk_usage(path).free


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.0f} MB"


def preflight(plan: List[Stage], name: str,
              data_set: str, data_path: str, preset: str, nproc: int = 1) -> List[str]:
    """The problems that would stop the run, one line each (empty: good to go). Writes
    nothing."""
    problems: List[str] = []
    to_run = [s for s in plan if s.action != "skip"]
    names = {s.name for s in to_run}
    # ---- data
    if preset != "toy" or "toy_data" not in names:
        try:
            layout(data_set, os.path.join(ROOT, data_path))
        except UserError as e:
            problems.append(str(e))
        else:
            problems += check_data(layout(data_set, data_path, check=False), data_set,
                                   data_path, test="test" in names)
    # ---- weights
    for stage in to_run:
        ns = stage.ns
        if stage.name == "seeds_train" and ns.arch != "toy":
            from models.weights import DEIT_WEIGHTS
            default, url = DEIT_WEIGHTS.get(ns.arch, DEIT_WEIGHTS["deit_small"])
            path = ns.finetune or default
            if path.lower() != "none" and not os.path.isfile(os.path.join(ROOT, path)):
                problems.append(f"{stage.name}: ImageNet weights {path} not found: download "
                                f"{url} into pretrained/ (or pass --finetune PATH / none)")
        if stage.name in ("aff_train", "seg_train"):
            backbone = ns.backbone or dataset(data_set).backbone
            where = BACKBONES[backbone].source
            path = ns.weights or BACKBONES[backbone].weights
            if (path and path.lower() not in ("none", "download")
                    and not os.path.isfile(os.path.join(ROOT, path))):
                problems.append(f"{stage.name}: initial weights {path} not found ({backbone}): "
                                f"{where}; put it in pretrained/ (README, Weights)")
        if stage.kind == "train" and stage.ckpt and stage.action == "run-unknown":
            problems.append(f"{stage.name}: {stage.ckpt} holds a training run this pipeline did "
                            f"not start; pass --from {stage.name} to start it over, or remove it")
    # ---- disk
    need = sum(s.disk for s in to_run)
    free = free_bytes(RunFolder(name, ROOT).dir)
    if need > free:
        problems.append(f"not enough free disk: the stages to run write ~{_size(need)} under "
                        f"{RunFolder(name)}, and {_size(free)} are free there; free space or "
                        f"stop earlier with --until STAGE")
    # ---- device
    devices = {s.ns.device for s in to_run if hasattr(s.ns, "device")}
    problems += check_device(devices, nproc, data_set)
    return problems


def check_data(lay: Layout, data_set: str, data_path: str, test: bool = False) -> List[str]:
    """What is missing from the dataset folder, one line each."""
    problems = []
    prepare = lay.dataset.remake_hint(data_path)
    images = lay.dataset.images
    if not os.path.isdir(os.path.join(ROOT, lay.root, images)):
        problems.append(f"{os.path.join(data_path, images)} not found: the {data_set} images "
                        f"(README, Data)")
    if not os.path.isdir(os.path.join(ROOT, lay.gt_dir())):
        problems.append(f"{lay.gt_dir()} not found: the ground-truth "
                        f"masks (README, Data)")
    for what, path in (("image labels", lay.label_file), ("training list", lay.train_list),
                       ("evaluation list", lay.eval_list), ("validation list", lay.seg_val_list)):
        if not os.path.isfile(os.path.join(ROOT, path)):
            problems.append(f"{path} not found ({what}): {prepare}")
    if test and (lay.test_list is None or not os.path.isfile(os.path.join(ROOT, lay.test_list))):
        problems.append(f"--test: {lay.test_list or 'a test split'} not found: unpack "
                        f"VOC2012_test.tar (the evaluation server's) over {data_path}")
    return problems


def check_device(devices, nproc: int, data_set: str) -> List[str]:
    """A requested device that is not there, or more processes than GPUs."""
    wants_cuda = any(str(d).startswith("cuda") for d in devices)
    small = dataset(data_set).synthetic          # minutes on a CPU
    if not wants_cuda and nproc <= 1 and (small or "auto" not in devices):
        return []
    import torch
    cuda = torch.cuda.is_available()
    if wants_cuda and not cuda:
        return [f"--device {sorted(devices)[0]}: no CUDA device here (torch "
                f"{torch.__version__}); pass --device cpu, or run on a GPU machine"]
    if nproc > 1 and cuda and nproc > torch.cuda.device_count():
        return [f"--nproc_per_node {nproc}: only {torch.cuda.device_count()} GPU(s) here"]
    if not cuda and not small and "auto" in devices:
        print(f"warning: no GPU: the {data_set} stages run on the CPU (days to weeks)",
              file=sys.stderr)
    return []


# ---------------------------------------------------------------------------- state
def read_state(run: RunFolder) -> dict:
    """The pipeline's records of ``run`` (its ``pipeline.json``)."""
    try:
        with open(run.state_file) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"stages": {}}


def write_state(run: RunFolder, state: dict) -> None:
    os.makedirs(run.dir, exist_ok=True)
    tmp = run.state_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, run.state_file)


def fingerprint(path: str):
    """A file's size and modification time; a folder's number of entries and its
    manifest's modification time (None when absent)."""
    full = os.path.join(ROOT, path)
    if os.path.isdir(full):
        manifest = os.path.join(full, "manifest.json")
        return ["dir", len(os.listdir(full)),
                os.stat(manifest).st_mtime_ns if os.path.isfile(manifest) else 0]
    if os.path.isfile(full):
        st = os.stat(full)
        return ["file", st.st_size, st.st_mtime_ns]
    return None


def outputs_intact(stage: Stage, record: dict) -> bool:
    saved = record.get("outputs", {})
    for path in stage.outputs:
        now, then = fingerprint(path), saved.get(path)
        if now is None or then is None or now[0] != then[0]:
            return False
        if now[0] == "file" and now != then:
            return False
        if now[0] == "dir" and (now[2] != then[2] or now[1] < then[1]):
            return False
    return True


def decide(plan: List[Stage], state: dict, parsers, redo_from: Optional[str] = None,
           resume_training: bool = True, replace_unknown: bool = False) -> None:
    """Set each stage's ``action`` and the ``--resume`` / ``--overwrite`` it gets:
    ``skip`` (done, same key, outputs as recorded), ``resume`` / ``continue`` (started with
    the same key and killed: training from its last.pth, inference through its own skipping
    of the images done), ``redo`` (its inputs changed, a stage it reads from is redone, or
    ``redo_from`` onwards: its old outputs are replaced), ``run`` (never started), or
    ``run-unknown`` (a training stage whose checkpoint this pipeline did not write; with
    ``replace_unknown`` it is replaced, as are inference outputs the pipeline did not
    record)."""
    records = state.get("stages", {})
    redone = set()
    forced = False
    for stage in plan:
        forced = forced or stage.name == redo_from
        rec = records.get(stage.name)
        takes = parsers[stage.script]._option_string_actions
        ckpt = bool(stage.ckpt) and os.path.isfile(os.path.join(ROOT, stage.ckpt))
        same = bool(rec) and rec.get("key") == stage.key
        upstream = any(d in redone for d in stage.deps)
        stage.extra = []
        if forced or (rec and (upstream or not same)):
            stage.action = "redo"
            if "--overwrite" in takes and (stage.kind == "infer" or ckpt):
                stage.extra = ["--overwrite"]
        elif not rec:
            stage.action = "run-unknown" if stage.kind == "train" and ckpt else "run"
            if replace_unknown:
                stage.action = "run"
                if "--overwrite" in takes and (stage.kind == "infer" or ckpt):
                    stage.extra = ["--overwrite"]
        elif rec.get("state") == "done" and outputs_intact(stage, rec):
            stage.action = "skip"
        else:
            if stage.kind == "train" and ckpt and resume_training and "--resume" in takes:
                stage.action, stage.extra = "resume", ["--resume"]
            elif stage.kind == "train" and ckpt and "--overwrite" in takes:
                stage.action, stage.extra = "redo", ["--overwrite"]
            else:
                stage.action = "continue"
        if stage.action not in ("skip", "continue", "resume"):
            redone.add(stage.name)


# ---------------------------------------------------------------------------- running
def show_plan(plan: List[Stage], nproc: int = 1, out=print) -> None:
    """Every command with its action and estimates, then the totals."""
    for i, s in enumerate(plan, 1):
        out(f"{i:2d}. {s.name} [{s.action}] ~{_size(s.disk)}, ~{_duration(s.seconds)}\n"
            f"    {s.shown(nproc)}")
    todo = [s for s in plan if s.action != "skip"]
    out(f"to run: {len(todo)} of {len(plan)} stages, ~{_size(sum(s.disk for s in todo))} on "
        f"disk, ~{_duration(sum(s.seconds for s in todo))} (estimates; GPU figures for VOC "
        f"and COCO, 2-core CPU for the toy set)")


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def disk_used(paths: Sequence[str]) -> int:
    """Bytes under ``paths`` (files and folders, relative to the repository root)."""
    total = 0
    for path in paths:
        full = os.path.join(ROOT, path)
        if os.path.isfile(full):
            total += os.path.getsize(full)
        for root, _, files in os.walk(full):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _stage_folders(stage: Stage) -> List[str]:
    """What a stage's disk figure counts: its output folders, a training stage's whole run
    folder (checkpoints and logs)."""
    if stage.kind == "train":
        return [os.path.dirname(stage.ckpt or stage.outputs[0])]
    return stage.outputs


def run_plan(plan: List[Stage], run: RunFolder, state: dict, nproc: int = 1) -> dict:
    """Run the stages that are not skipped, in order, recording each in ``run``'s
    ``pipeline.json`` (``started`` before, ``done`` with its outputs' fingerprints,
    time and disk after). A failed stage ends the program with a message naming it."""
    records = state.setdefault("stages", {})
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for stage in plan:
        if stage.action == "skip":
            print(f"=== {stage.name}: done earlier, skipped", flush=True)
            continue
        if stage.prepare is not None:
            stage.prepare()
        records[stage.name] = {"key": stage.key, "state": "started",
                               "command": stage.shown(nproc)}
        write_state(run, state)
        print(f"\n=== {stage.name} ({stage.action}): {stage.shown(nproc)}", flush=True)
        t0 = time.time()
        res = subprocess.run([sys.executable] + stage.argv(nproc), cwd=ROOT, env=env)
        if res.returncode != 0:
            sys.exit(f"stage '{stage.name}' failed (exit {res.returncode}); see the output "
                     f"above. Run the same pipeline command again to continue from it.")
        if stage.finish is not None:
            stage.finish()
        records[stage.name] = {
            "key": stage.key, "state": "done", "command": stage.shown(nproc),
            "seconds": round(time.time() - t0, 1), "disk_bytes": disk_used(_stage_folders(stage)),
            "outputs": {p: fingerprint(p) for p in stage.outputs}}
        write_state(run, state)
    return state


# ---------------------------------------------------------------------------- report
def _load(path: Optional[str]) -> Optional[dict]:
    try:
        with open(os.path.join(ROOT, path)) as f:
            return json.load(f)
    except (OSError, ValueError, TypeError):
        return None


def summarize(plan: List[Stage], state: dict, data_set: str) -> dict:
    """The run's figures: mIoU and per-class IoU per stage (the toy demo's keys: ``miou``,
    ``threshold``, ``class_iou``, ``untrained_miou``, ``mask_miou``, ``seg_miou``, ...), time
    and disk per stage, and the literature's figures."""
    by = {s.name: s for s in plan}
    spaces = {s.name: s.ns for s in plan}
    res = {n: _load(by[n].result) for n in ("seeds_eval", "untrained_eval", "masks_eval",
                                            "seg_eval") if n in by}
    out: dict = {"data_set": data_set}
    if res.get("seeds_eval"):
        r = res["seeds_eval"]
        out.update(miou=r["best_miou"], threshold=r["best_threshold"], class_iou=r["class_iou"])
    if "seeds_train" in spaces:
        ns = spaces["seeds_train"]
        out.update(seed=ns.seed, W=[ns.w_fss, ns.w_mpc])
    if "toy_data" in spaces:
        out.update(shortcut=spaces["toy_data"].shortcut,
                   num_images=spaces["toy_data"].num_images)
    if res.get("untrained_eval"):
        r = res["untrained_eval"]
        out.update(untrained_miou=r["best_miou"], untrained_threshold=r["best_threshold"],
                   untrained_images=_list_length(os.path.join(ROOT,
                                                               spaces["untrained"].infer_list)))
    if res.get("masks_eval"):
        out.update(mask_miou=res["masks_eval"]["best_miou"],
                   mask_class_iou=res["masks_eval"]["class_iou"])
    if res.get("seg_eval"):
        out.update(seg_miou=res["seg_eval"]["best_miou"],
                   seg_class_iou=res["seg_eval"]["class_iou"])
    records = state.get("stages", {})
    out["timings_s"] = {s.name: records[s.name].get("seconds") for s in plan
                        if records.get(s.name, {}).get("state") == "done"}
    out["disk_bytes"] = {s.name: records[s.name].get("disk_bytes") for s in plan
                         if records.get(s.name, {}).get("state") == "done"}
    out["total_s"] = round(sum(v or 0 for v in out["timings_s"].values()), 1)
    out["literature"] = dict(dataset(data_set).literature)
    return out


def write_report(run: RunFolder, summary: dict, plan: List[Stage]) -> None:
    """``summary.json`` and ``report.md`` of ``run``."""
    with open(run.summary, "w") as f:
        json.dump(summary, f, indent=2)
    lit = summary.get("literature", {})
    fmt = lambda v: "—" if v is None else f"{v:.2f}"      # noqa: E731
    lines = [f"# Pipeline report: {os.path.basename(run.name)} ({summary['data_set']})", "",
             "| stage | mIoU here | PCSS in the literature |", "|---|---|---|"]
    for label, key, ref in (("seeds (train list)", "miou", "seeds"),
                            ("untrained network's seeds", "untrained_miou", None),
                            ("pseudo masks (train list)", "mask_miou", "masks"),
                            ("segmentation (val list)", "seg_miou", "seg")):
        if key in summary or (ref and ref in lit):
            lines.append(f"| {label} | {fmt(summary.get(key))} | {fmt(lit.get(ref))} |")
    if "seg_test" in lit:
        lines.append(f"| segmentation (VOC test, server) | upload results.tar.gz | "
                     f"{lit['seg_test']:.1f} |")
    if "threshold" in summary:
        lines += ["", f"Best seed threshold: {summary['threshold']:.2f}."]
    for title, key in (("seeds", "class_iou"), ("pseudo masks", "mask_class_iou"),
                       ("segmentation", "seg_class_iou")):
        if summary.get(key):
            lines += ["", f"Per-class IoU, {title}:", "", "| class | IoU |", "|---|---|"]
            lines += [f"| {c} | {v:.2f} |" for c, v in summary[key].items()]
    lines += ["", "| stage | time | disk | command |", "|---|---|---|---|"]
    records_t, records_d = summary.get("timings_s", {}), summary.get("disk_bytes", {})
    for s in plan:
        t = records_t.get(s.name)
        d = records_d.get(s.name)
        lines.append(f"| {s.name} | {'—' if t is None else _duration(t)} | "
                     f"{'—' if d is None else _size(d)} | `{s.shown()}` |")
    lines += ["", f"Total stage time: {_duration(summary.get('total_s', 0))}.", ""]
    with open(run.report, "w") as f:
        f.write("\n".join(lines))


def draw_figure(run: RunFolder, lay: Layout) -> None:
    """``figure.png``: six training images through every stage (image | ground truth | CAM |
    seed | pseudo mask | segmentation)."""
    import numpy as np

    from datasets.classification import load_image
    from utils.io import read_label_png
    from wsss.scorefile import load_cam_dict
    from wsss.pseudo import pseudo_label
    from utils.report import best_threshold
    from wsss.scorefile import score_file
    from utils.vis import cam_overlay, save_panel_grid

    lay = layout(lay.data_set, os.path.join(ROOT, lay.root), check=False)
    threshold = best_threshold(run.eval_json("cam"))
    rows = []
    for i in read_id_list(run.figure_ids):
        rgb = np.asarray(load_image(lay.image_path(i)))
        cams = load_cam_dict(score_file(run.dict_dir, i))
        cam = np.max(np.stack(list(cams.values())), 0) if cams else np.zeros(rgb.shape[:2])
        rw = os.path.join(run.rw_dir, i + ".png")
        rows.append([(rgb, "image"), (read_label_png(lay.gt_path(i)), "ground truth"),
                     (cam_overlay(rgb, cam), "CAM"),
                     (pseudo_label(cams, threshold, rgb.shape[:2]), f"seed @ {threshold:.2f}"),
                     (read_label_png(rw) if os.path.isfile(rw) else np.zeros(rgb.shape[:2],
                                                                             np.uint8),
                      "pseudo mask"),
                     (read_label_png(os.path.join(run.figure_seg, i + ".png")),
                      "segmentation")])
    save_panel_grid(rows, run.figure)


def run_pipeline(name: str, data_set: str, data_path: str, preset: str, extra: Sequence[str],
                 parsers: Mapping[str, argparse.ArgumentParser], dry_run: bool = False,
                 redo_from: Optional[str] = None, until: Optional[str] = None,
                 test: bool = False, nproc: int = 1, resume_training: Optional[bool] = None,
                 baseline_images: int = 400) -> Optional[dict]:
    """Plan, check, run and report the run ``name`` (see the module's docstring).
    Returns the summary (None for a dry run). A ``UserError`` with one line per problem
    when the preflight fails; nothing is written then."""
    stages = stage_names(data_set, preset, test)
    known = [n for n, _ in stages]
    for flag, stage in (("--from", redo_from), ("--until", until)):
        if stage is not None and stage not in known:
            raise UserError(f"{flag} {stage}: no such stage; the stages are {', '.join(known)}")
    if redo_from and until and known.index(redo_from) > known.index(until):
        raise UserError(f"--from {redo_from} comes after --until {until}")
    full = os.path.abspath(data_path)
    inside = os.path.relpath(full, ROOT)
    data_path = full if inside.startswith("..") else inside      # the commands run in ROOT
    routed = route_flags(extra, stages, parsers)
    plan = build_plan(name, data_set, data_path, preset, routed, parsers, until=until,
                      test=test, nproc=nproc, baseline_images=baseline_images)
    run = RunFolder(name, ROOT)
    state = read_state(run)
    if resume_training is None:
        resume_training = preset != "toy"
    # the toy run is minutes of CPU: what an earlier demo left there (without a record) is
    # replaced; a real run's training folder the pipeline did not write is refused instead
    decide(plan, state, parsers, redo_from, resume_training, replace_unknown=preset == "toy")
    if preset == "toy":
        data_set, data_path = TOY_SET.name, RunFolder(name).toy_data
    problems = preflight(plan, name, data_set, data_path, preset, nproc)
    if dry_run:
        show_plan(plan, nproc)
        for p in problems:
            print(f"problem: {p}")
        return None
    if problems:
        raise UserError("\nerror: ".join(problems))
    show_plan(plan, nproc)
    run_plan(plan, run, state, nproc)
    summary = summarize(plan, state, data_set)
    write_report(run, summary, plan)
    return summary
