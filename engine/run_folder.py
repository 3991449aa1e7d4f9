"""Where a run keeps its files: ``RunFolder(name)`` gives every path the stages read or
write under ``experiment/<name>/``, as ``datasets.layout`` does for a dataset, so that no
script, loop or test spells out a folder of a run itself. No torch import (``evaluation.py``
and every ``--help`` start at once).

    experiment/<name>/
      ckpt/<EEE>net_trm.pth, ckpt/last.pth     seeds: train_PCSS.py (the reference's names)
      log.txt, train.log, tb/, fim/, val_dict/ seeds: its logs, FIM masks, validation seeds
      dict/, png/, vis/, crf/<alpha>/, crf_png/<alpha>/       infer_PCSS.py
      eval_<task>.json, miou_vs_threshold.png                 evaluation.py
      aff/ (aff_net.pth, last.pth, logs)                      train_aff.py
      rw/                                                     infer_aff.py
      segnet/ (seg_net.pth, last.pth, logs)                   train_seg.py
      seg/, results/..., results.tar.gz                       infer_seg.py (val, test server)
      pipeline.json, summary.json, report.md, figure.png, toy/, pretrain/, untrained/
                                                              pipeline.py, demo.py

A second backbone of a stage lives beside the default one under the same name, in
``<folder>_<backbone>/`` (``aff_resnet50/``, ``segnet_deeplabv2_r101/``, its predictions in
``seg_deeplabv2_r101/``): ``backbone_folder``.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Sequence

from models.registry import BACKBONES, TRAINED_FILES
from utils.errors import UserError, require_folder

EXPERIMENTS = "experiment"     # the folder of all runs, under the working directory
# background powers of the CRF score dicts: what infer_PCSS.py --crf writes by default and
# where train_aff.py looks by default (MCTformer's 1 and 12; PSA used 4 and 32)
CRF_ALPHAS = (1.0, 12.0)
PREDICTION_TASKS = {"cam": "dict", "png": "png"}     # evaluation.py's default folders
SEED_CHECKPOINTS = "ckpt"
TEST_SERVER = "results/VOC2012/Segmentation/comp6_test_cls"     # the evaluation server's


def alpha_name(alpha: float) -> str:
    """The folder name of a CRF alpha: ``1`` for 1.0, ``0.5``."""
    return f"{float(alpha):g}"


def backbone_folder(folder: str, backbone: Optional[str] = None,
                    own_folder: Optional[bool] = None) -> str:
    """``folder`` of a run (``segnet``, ``seg``, ...) for ``backbone``: ``<folder>_<backbone>``
    when the backbone has a folder of its own beside the default one (``own_folder``; when
    not given, the registry's ``Backbone.own_folder``), else ``folder``."""
    if own_folder is None:
        own_folder = backbone in BACKBONES and BACKBONES[backbone].own_folder
    return f"{folder}_{backbone}" if own_folder and backbone else folder


class RunFolder:
    """The files of the run ``name``: ``RunFolder("voc_pcss")`` is ``experiment/voc_pcss``
    relative to the working directory (how the scripts and their messages name it);
    ``RunFolder(name, root)`` the same under ``root``. Stages with several backbones take
    ``backbone`` (and ``own_folder``, see ``backbone_folder``)."""

    def __init__(self, name: str, root: str = "."):
        root = os.fspath(root)
        self.name = name
        self.root = root
        self.dir = (os.path.join(EXPERIMENTS, name) if root in ("", ".")
                    else os.path.join(root, EXPERIMENTS, name))

    def __fspath__(self) -> str:
        return self.dir

    def __str__(self) -> str:
        return self.dir

    def __repr__(self) -> str:
        return f"RunFolder({self.name!r}, root={self.root!r})"

    def path(self, *parts: str) -> str:
        """``experiment/<name>/<parts...>``."""
        return os.path.join(self.dir, *parts)

    def sub(self, name: str) -> "RunFolder":
        """A run nested in this one (``<name>/untrained`` of the toy pipeline)."""
        return RunFolder(f"{self.name}/{name}", self.root)

    # ------------------------------------------------------------------ seeds (stage 1)
    @property
    def ckpt_dir(self) -> str:
        return self.path(SEED_CHECKPOINTS)

    def epoch_checkpoint(self, epoch: int) -> str:
        """``ckpt/<EEE>net_trm.pth``: the seed network after ``epoch`` (the reference's
        name)."""
        return self.path(SEED_CHECKPOINTS, f"{epoch:03d}net_trm.pth")

    def saved_epochs(self) -> List[str]:
        """The ``EEE`` of the epoch checkpoints saved, sorted."""
        return sorted(os.path.basename(f)[:3]
                      for f in glob.glob(self.path(SEED_CHECKPOINTS, "*net_trm.pth")))

    def find_epoch_checkpoint(self, epoch: int) -> str:
        """``epoch_checkpoint(epoch)``; a ``UserError`` listing the epochs the run did save
        when it is absent."""
        path = self.epoch_checkpoint(epoch)
        if not os.path.isfile(path):
            saved = self.saved_epochs()
            have = f"saved epochs: {', '.join(saved)}" if saved else "no epoch checkpoints saved"
            raise UserError(f"checkpoint not found: {path} ({have}). Check --name / --load_epo, "
                            f"or pass a state dict with --load_pretrained.")
        return path

    @property
    def fim_dir(self) -> str:
        """Pictures of the FIM masks, one per round."""
        return self.path("fim")

    def fim_masks(self, epoch: int) -> str:
        """The picture of the FIM masks of the round after ``epoch``."""
        return os.path.join(self.fim_dir, f"masks_epoch{epoch:03d}.png")

    @property
    def val_dict(self) -> str:
        """The seeds of the latest in-training validation."""
        return self.path("val_dict")

    @property
    def dict_dir(self) -> str:
        """CAM dicts ``<id>.npy`` (or ``.sdz``) of infer_PCSS.py --dict: the seeds."""
        return self.path("dict")

    def seed_folder(self, kind: str, alpha: Optional[float] = None) -> str:
        """An output folder of infer_PCSS.py: ``dict``, ``png``, ``vis``, or per CRF
        ``alpha`` ``crf/<alpha>`` and ``crf_png/<alpha>``."""
        return self.path(kind) if alpha is None else self.path(kind, alpha_name(alpha))

    def crf_dir(self, alpha: float) -> str:
        """PSA's CRF score dicts at ``alpha`` (the input of train_aff.py)."""
        return self.seed_folder("crf", alpha)

    # ------------------------------------------------------------------ evaluation
    def eval_json(self, task: str) -> str:
        """``eval_<task>.json`` of evaluation.py (``eval_cam.json``: the seed threshold the
        later stages take); the pipeline's own records (``eval_seeds``, ...) too."""
        return self.path(f"eval_{task}.json")

    @property
    def miou_plot(self) -> str:
        return self.path("miou_vs_threshold.png")

    def predictions(self, task: str, value: Optional[str]) -> str:
        """The folder evaluation.py scores: ``--dict_dir`` ``value`` (``resolve``) or the
        run's folder for ``task`` (``dict`` for cam, ``png`` for png; crf needs a value)."""
        if value is None and task not in PREDICTION_TASKS:
            raise UserError(f"--task {task} needs --dict_dir, e.g. crf/1 (the run's "
                            f"{self.crf_dir(1)})")
        return self.resolve(value, self.path(PREDICTION_TASKS.get(task, "")), "--dict_dir",
                            "predictions",
                            "infer_PCSS.py, infer_aff.py or infer_seg.py for this run")

    # ------------------------------------------------------------------ refinement, segmentation
    def stage_dir(self, stage: str, backbone: Optional[str] = None,
                  own_folder: Optional[bool] = None) -> str:
        """The folder of the trained ``stage`` net ("affinity": ``aff/``, "segmentation":
        ``segnet/``), with its ``last.pth`` and logs."""
        return self.path(backbone_folder(TRAINED_FILES[stage][0], backbone, own_folder))

    def trained_weights(self, stage: str, backbone: Optional[str] = None,
                        own_folder: Optional[bool] = None) -> str:
        """The state dict the training script of ``stage`` writes and the inference script
        loads: ``aff/aff_net.pth``, ``segnet/seg_net.pth``."""
        return os.path.join(self.stage_dir(stage, backbone, own_folder), TRAINED_FILES[stage][1])

    def last_checkpoint(self, stage: str, backbone: Optional[str] = None,
                        own_folder: Optional[bool] = None) -> str:
        """Everything ``--resume`` needs: ``ckpt/last.pth`` for the seeds ("seeds"), else in
        the ``stage_dir``."""
        if stage == "seeds":
            return self.path(SEED_CHECKPOINTS, "last.pth")
        return os.path.join(self.stage_dir(stage, backbone, own_folder), "last.pth")

    def find_trained_weights(self, value: Optional[str], stage: str,
                             backbone: Optional[str] = None,
                             own_folder: Optional[bool] = None) -> str:
        """The trained ``stage`` net to load: ``value`` (``--weights``) or the file of
        ``trained_weights``; a ``UserError`` saying how to make it when absent."""
        path = value or self.trained_weights(stage, backbone, own_folder)
        if not os.path.isfile(path):
            _, _, script, example = TRAINED_FILES[stage]
            flag = f" --backbone {backbone}" if backbone_folder("", backbone, own_folder) else ""
            raise UserError(f"{stage} weights not found: {path}. Train them with `python "
                            f"{script} --name {self.name}{flag}`, or pass --weights{example}.")
        return path

    @property
    def rw_dir(self) -> str:
        """The pseudo masks of infer_aff.py (the random walk)."""
        return self.path("rw")

    def seg_dir(self, backbone: Optional[str] = None, own_folder: Optional[bool] = None) -> str:
        """The predictions of infer_seg.py on the val split."""
        return self.path(backbone_folder("seg", backbone, own_folder))

    def test_dir(self, backbone: Optional[str] = None, own_folder: Optional[bool] = None) -> str:
        """The predictions of the VOC test split, at the evaluation server's path
        (``results/VOC2012/Segmentation/comp6_test_cls/``)."""
        first, rest = TEST_SERVER.split("/", 1)
        return self.path(backbone_folder(first, backbone, own_folder), *rest.split("/"))

    def results_archive(self, backbone: Optional[str] = None,
                        own_folder: Optional[bool] = None) -> str:
        """``results.tar.gz``: the test predictions, ready to upload; ``archive_name`` is
        their path inside it."""
        return self.path(backbone_folder("results", backbone, own_folder) + ".tar.gz")

    @staticmethod
    def archive_name(image_id: str) -> str:
        return f"{TEST_SERVER}/{image_id}.png"

    # ------------------------------------------------------------------ pipeline, demo
    @property
    def toy_data(self) -> str:
        """The pipeline's toy data set (``--preset toy``)."""
        return self.path("toy")

    def pretrained(self, arch: str) -> str:
        """The toy pre-training of ``arch`` (pretrain_toy.py), in DeiT format."""
        return self.path("pretrain", f"deit_{arch}.pth")

    @property
    def state_file(self) -> str:
        return self.path("pipeline.json")

    @property
    def summary(self) -> str:
        return self.path("summary.json")

    @property
    def report(self) -> str:
        return self.path("report.md")

    @property
    def figure(self) -> str:
        """``figure.png``: images through every stage."""
        return self.path("figure.png")

    @property
    def figure_ids(self) -> str:
        """The ids of ``figure.png``'s rows, and ``figure_seg`` their predictions."""
        return self.path("figure_ids.txt")

    @property
    def figure_seg(self) -> str:
        return self.path("figure_seg")

    @property
    def rw_train_dir(self) -> str:
        """The pseudo masks of the list the pipeline scores them on (VOC: train.txt)."""
        return self.path("rw_train")

    @property
    def untrained(self) -> "RunFolder":
        """The toy pipeline's baseline: a randomly initialised network's seeds."""
        return self.sub("untrained")

    @property
    def random_init(self) -> str:
        """The randomly initialised weights of a baseline run."""
        return self.path("random_init.pth")

    @property
    def baseline_ids(self) -> str:
        """The ids the baseline's seeds are scored on."""
        return self.path("baseline_ids.txt")

    # ------------------------------------------------------------------ folder flags
    def resolve(self, value: Optional[str], default: str, flag: str, what: str, how: str,
                must_exist: bool = True) -> str:
        """A folder flag that names one of the run's outputs (``--dict_dir``, ``--cam_dir``,
        ``--out_rw``, ...), resolved the authors' way: ``None`` is ``default`` (one of this
        run's folders, e.g. ``self.rw_dir``); a value is ``experiment/<name>/<value>`` when that
        folder exists (``--dict_dir dict``, ``crf/1``), else the path as given. An input
        (``must_exist``) found in neither place is a ``UserError`` naming both (and ``how``
        to write it); an output found in neither is the path as given (created by the
        caller)."""
        if value is None:
            if must_exist:
                require_folder(default, what, how, flag)
            return default
        inside = self.path(value)
        if os.path.isdir(inside):
            return inside
        if os.path.isdir(value) or not must_exist:
            return value
        raise UserError(f"{what} not found: {flag} {value} is neither {inside} (in the run's "
                        f"folder) nor {value} (as given). Write them with {how}, or fix {flag}.")

    def crf_dirs(self, low: Optional[str], high: Optional[str],
                 alphas: Sequence[float] = CRF_ALPHAS) -> List[str]:
        """The low- and high-alpha CRF score dicts train_aff.py reads: ``--la_crf_dir`` /
        ``--ha_crf_dir`` (``resolve``) or ``crf/<alpha>`` of the first and last ``alphas``
        (those infer_PCSS.py --crf writes by default)."""
        how = (f"`python infer_PCSS.py --name {self.name} --load_epo E --crf --alphas "
               f"{' '.join(alpha_name(a) for a in alphas)}` (for the training list)")
        return [self.resolve(value, self.crf_dir(alpha), flag, "CRF score dicts", how)
                for value, alpha, flag in ((low, alphas[0], "--la_crf_dir"),
                                           (high, alphas[-1], "--ha_crf_dir"))]
