"""The networks by name, each registered once (timm's ``@register_model``): the backbones of
the refinement and segmentation stages (``--backbone``, ``BACKBONES``) and the seed stage's
widths (``--arch``, ``ARCHS``); the command-line options built from them; building a net and
loading its weights (one loader, ``models.weights.load_weights``, one fresh / dropped
report); the stages' training recipes.

| backbone | AffinityNet | segmentation | initial weights (default file) |
|---|---|---|---|
| resnet38 | PSA's (reference) | MCTformer's DeepLab-LargeFOV | PSA's ``res38_cls.pth`` |
| resnet50 | torchvision trunk | - | torchvision ImageNet ``resnet50-0676ba61.pth`` |
| deeplabv2_r101 | - | DeepLabV2 + ASPP | torchvision ImageNet ``resnet101-63fe2227.pth`` |
| toy | small trunk | small LargeFOV | none (from scratch) |

Every net has ``features``, ``embed`` / ``forward``, ``param_groups`` and a ``train`` that
freezes what the reference freezes, so one loop serves all. A new backbone is one
``register_backbone(Backbone(...))`` entry below (README, "Extending"). No torch import at
module level: the parsers read the names from here (``--help`` starts at once); an entry
names its builders by import path, imported when a net is built.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Mapping, Optional, Tuple, Union

from utils.errors import UserError
from utils.registry import Registry, import_object

if TYPE_CHECKING:                    # torch: only for the annotations
    from models.weights import WeightReport

# stage -> (its folder in experiment/<name>/, the trained net's file, the script that trains
# it, an example of a file from elsewhere that loads too)
TRAINED_FILES = {
    "affinity": ("aff", "aff_net.pth", "train_aff.py", " (e.g. PSA's res38_aff.pth)"),
    "segmentation": ("segnet", "seg_net.pth", "train_seg.py", ""),
}


@dataclass(frozen=True)
class Backbone:
    """A backbone of the refinement (``affinity``) and segmentation stages.

    ``nets``: stage -> ``(builder, help)``; the builder (an import path
    ``"package.module:name"`` or a callable) takes ``radius`` (AffinityNet) or
    ``num_classes`` (segmentation, background included) and returns the net in training
    mode. ``stride``: the AffinityNet's output stride (the random walk's grid).
    ``weights``: the file its nets start from (None: from scratch) and ``source``, where to
    get it. ``prefix``: where that file's tensors sit in the net (``backbone.`` for a
    torchvision trunk); a file's keys the net lacks (a classifier's ``fc``) are dropped and
    the net's new head (``head_modules``) stays fresh. ``download``: the torchvision
    weights that ``--weights download`` fetches. ``own_folder``: its trained nets and
    predictions live beside the default backbone's, in ``<folder>_<name>/``.
    ``seg_recipe``: train_seg.py's defaults (``iterations`` instead of ``num_epochs``: as
    many epochs as that many steps of ``batch_size`` make); ``decay_as_momentum``: MCTformer's
    quirk of passing the weight decay as SGD's momentum (no decay applied)."""
    name: str
    nets: Mapping[str, Tuple[Union[str, Callable], str]]
    stride: int = 8
    weights: Optional[str] = None
    source: str = "weights of this backbone"
    prefix: str = ""
    download: Optional[str] = None
    own_folder: bool = False
    seg_recipe: Mapping[str, float] = field(default_factory=lambda: {
        "num_epochs": 30, "batch_size": 4, "lr": 7e-4, "wt_dec": 1e-5})
    decay_as_momentum: bool = False

    def builder(self, stage: str) -> Callable:
        if stage not in self.nets:
            raise UserError(f"--backbone {self.name} has no {stage} net; choose one of "
                            f"{', '.join(backbone_names(stage))}")
        return import_object(self.nets[stage][0])


BACKBONES: Registry[Backbone] = Registry("backbone", "--backbone")


def register_backbone(entry: Backbone) -> Backbone:
    """Make ``entry`` known to every stage (``--backbone <entry.name>``)."""
    return BACKBONES.register(entry.name, entry)


def backbone_names(stage: str) -> Tuple[str, ...]:
    """The backbones with a ``stage`` net, in registration order."""
    return tuple(n for n in BACKBONES if stage in BACKBONES[n].nets)


register_backbone(Backbone(
    "resnet38",
    nets={"affinity": ("models.resnet38:build_resnet38_aff",
                       "PSA's ResNet-38 AffinityNet (the reference)"),
          "segmentation": ("models.resnet38:build_resnet38_seg",
                           "MCTformer's ResNet-38 DeepLab-LargeFOV (the reference)")},
    weights="pretrained/res38_cls.pth",
    source="PSA's ImageNet + VOC classifier res38_cls.pth (github.com/jiwoon-ahn/psa, linked "
           "from MCTformer's README)",
    decay_as_momentum=True))
register_backbone(Backbone(
    "resnet50",
    nets={"affinity": ("models.backbones:ResNet50Aff", "torchvision ResNet-50 trunk")},
    weights="pretrained/resnet50-0676ba61.pth",
    source="torchvision's ImageNet weights "
           "(https://download.pytorch.org/models/resnet50-0676ba61.pth, or --weights download)",
    prefix="body.", download="ResNet50_Weights.IMAGENET1K_V1", own_folder=True))
register_backbone(Backbone(
    "deeplabv2_r101",
    nets={"segmentation": ("models.deeplab:DeepLabV2",
                           "DeepLabV2 (torchvision ResNet-101 + ASPP)")},
    weights="pretrained/resnet101-63fe2227.pth",
    source="torchvision's ImageNet weights "
           "(https://download.pytorch.org/models/resnet101-63fe2227.pth, or --weights download)",
    prefix="backbone.", download="ResNet101_Weights.IMAGENET1K_V1", own_folder=True,
    # deeplab-pytorch's voc12.yaml: 20,000 iterations of batch 10
    seg_recipe={"iterations": 20000, "batch_size": 10, "lr": 2.5e-4, "wt_dec": 5e-4}))
register_backbone(Backbone(
    "toy",
    nets={"affinity": ("models.backbones:ToyAff", "small, for the toy set"),
          "segmentation": ("models.backbones:ToySeg", "small, for the toy set")},
    stride=4,
    seg_recipe={"num_epochs": 3, "batch_size": 16, "lr": 0.005, "wt_dec": 5e-4}))

# --arch: the seed network's widths (models.mct_vit.build_arch): the paper's DeiT-S, DeiT-Ti,
# and a small CPU-friendly network for the synthetic toy set
ARCHS = {
    "deit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "deit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "toy": dict(embed_dim=128, depth=4, num_heads=4),
}


# ----------------------------------------------------------------------- command line
def network_parent() -> argparse.ArgumentParser:
    """The seed-stage network (train_PCSS.py, infer_PCSS.py)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("network")
    g.add_argument("--arch", default="deit_small", choices=tuple(ARCHS),
                   help="network width/depth: deit_small (the paper), deit_tiny, or toy (a "
                        "small CPU-friendly network for the synthetic set)")
    g.add_argument("--input-size", "--input_size", dest="input_size", type=int, default=None,
                   help="square training size S, a multiple of 16 (default: the dataset's, "
                        "224; 96 for the TOY set, whose images are 96 px)")
    return p


def refine_net_parent(stage: str, trained: bool) -> argparse.ArgumentParser:
    """``--backbone`` and ``--weights`` of the ``stage`` ("affinity" / "segmentation") net:
    its initial weights in the training script, the trained state dict (``trained``) in the
    inference script. Names and help come from ``BACKBONES``."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("network")
    names = backbone_names(stage)
    g.add_argument("--backbone", choices=names, default=None,
                   help="; ".join(f"{k}: {BACKBONES[k].nets[stage][1]}" for k in names)
                        + ". None given: the dataset's (resnet38, toy on the toy set)"
                        + (". Give the one the weights were trained with" if trained else ""))
    if trained:
        folder, file, script, example = TRAINED_FILES[stage]
        weights = (f"the trained state dict{example}. None given: "
                   f"experiment/<name>/{folder}/{file}, written by {script}")
    else:
        files = ", ".join(f"{k} {BACKBONES[k].weights or 'from scratch'}" for k in names)
        weights = ("initial weights; 'none': from scratch"
                   + ("; 'download': torchvision's ImageNet file"
                      if any(BACKBONES[k].download for k in names) else "")
                   + f". None given: {files}")
    g.add_argument("--weights", default=None, help=weights)
    return p


# ----------------------------------------------------------------------------- weights
def resolve_init_weights(backbone: str, value: Optional[str], stage: str) -> Optional[str]:
    """The file (or ``"download"``) a ``stage`` ("affinity" / "segmentation") net of
    ``backbone`` starts from: ``value`` as given (``none``: from scratch), else the
    backbone's default file; a ``UserError`` saying where to get it when absent."""
    from models.weights import initial_weights

    entry = BACKBONES[backbone]
    return initial_weights(
        value, entry.weights,
        lambda path: f"initial weights not found: {path}. The {stage} net ({backbone}) starts "
                     f"from {entry.source}; put the file there or pass --weights PATH (or "
                     f"'none' to train from scratch).",
        keep=("download",) if entry.download else ())


def load_initial_weights(net, backbone: str, weights: Optional[str]) -> WeightReport:
    """Initialise ``net`` (a net of ``backbone``) from ``weights`` (a file, ``"download"``
    for the torchvision backbones, or None: nothing loaded, everything fresh) through the
    one loader, as the backbone's entry says; returns which keys were fresh / dropped."""
    from models.resnet38 import head_keys
    from models.weights import load_weights

    if weights is None:
        return {"fresh": [k for k in net.state_dict() if not k.endswith("num_batches_tracked")],
                "dropped": []}
    entry = BACKBONES[backbone]
    source = weights
    if weights == "download" and entry.download:    # the only network access, when asked
        from torchvision.models import get_weight
        source = get_weight(entry.download).get_state_dict(progress=True)
    return load_weights(net, source, fresh_ok=head_keys(net), drop_ok=True,
                        prefix=entry.prefix,
                        hint=f"The {backbone} nets start from {entry.source}.")


# -------------------------------------------------------------------------------- nets
def affinity_stride(backbone: str) -> int:
    """The output stride of ``backbone``'s AffinityNet (the walk's grid)."""
    return BACKBONES[backbone].stride


def build_affinity_net(backbone: str, radius: int = 5, weights: Optional[str] = None):
    """AffinityNet on ``backbone`` initialised from ``weights`` (see
    ``resolve_init_weights``); returns the net (training mode) and which keys were fresh /
    dropped."""
    net = BACKBONES[backbone].builder("affinity")(radius)
    return net, load_initial_weights(net, backbone, weights)


def build_segmentation_net(backbone: str, num_classes: int, weights: Optional[str] = None):
    """The segmentation net of ``backbone`` for ``num_classes`` (background included)."""
    net = BACKBONES[backbone].builder("segmentation")(num_classes)
    return net, load_initial_weights(net, backbone, weights)


def backbone_folder(folder: str, backbone: Optional[str] = None) -> str:
    """``folder`` of a run (``segnet``, ``seg``, ...) for ``backbone``: ``<folder>_<backbone>``
    for the backbones that live beside the default one (``Backbone.own_folder``)."""
    own = backbone in BACKBONES and BACKBONES[backbone].own_folder
    return f"{folder}_{backbone}" if own else folder


def trained_weights_path(exp_dir: str, stage: str, backbone: Optional[str] = None) -> str:
    """Where the training script of ``stage`` ("affinity" / "segmentation") writes the
    net's state dict in the experiment folder ``exp_dir``: ``<folder>/<file>``, in a folder
    of its own for the backbones that live beside the default one (``backbone_folder``)."""
    folder, file, _, _ = TRAINED_FILES[stage]
    return os.path.join(exp_dir, backbone_folder(folder, backbone), file)


def find_trained_weights(value: Optional[str], exp_dir: str, stage: str,
                         backbone: Optional[str] = None) -> str:
    """The trained ``stage`` net to load: ``value`` (``--weights``) or the file of
    ``trained_weights_path``; a ``UserError`` saying how to make it when absent."""
    path = value or trained_weights_path(exp_dir, stage, backbone)
    if not os.path.isfile(path):
        _, _, script, example = TRAINED_FILES[stage]
        flag = f" --backbone {backbone}" if backbone_folder("", backbone) else ""
        raise UserError(f"{stage} weights not found: {path}. Train them with `python {script} "
                        f"--name {os.path.basename(exp_dir)}{flag}`, or pass --weights{example}.")
    return path


def _load_trained(net, path: str, device, what: str):
    from models.weights import load_model_weights

    load_model_weights(net, path, hint=f"Pass the --backbone (and --data-set) the {what} was "
                                       f"trained with.")
    return net.to(device or "cpu").eval()


def load_affinity_net(backbone: str, path: str, radius: int = 5, device=None):
    """A trained AffinityNet (``train_aff.py``'s ``aff_net.pth``, PSA's ``res38_aff.pth``),
    loaded strictly, in eval mode, on ``device`` (None: the CPU)."""
    net = BACKBONES[backbone].builder("affinity")(radius)
    return _load_trained(net, path, device, "AffinityNet")


def load_segmentation_net(backbone: str, path: str, num_classes: int, device=None):
    """A trained segmentation net (``train_seg.py``'s ``seg_net.pth``), loaded strictly, in
    eval mode, on ``device`` (None: the CPU)."""
    net = BACKBONES[backbone].builder("segmentation")(num_classes)
    return _load_trained(net, path, device, "segmentation net")


# ----------------------------------------------------------------------------- recipes
AFF_RECIPES = {     # train_aff.py --recipe: MCTformer's (the default) or PSA's lr and epochs
    "mct": {"lr": 0.01, "max_epoches": 5},
    "psa": {"lr": 0.1, "max_epoches": 8},
}


def aff_recipe(name: str) -> Dict[str, float]:
    """Default ``lr`` and ``max_epoches`` of ``train_aff.py`` (docs/method.md, Affinity
    loss): MCTformer's ("mct": 0.01, 5 epochs, the default) or PSA's ("psa": 0.1, 8
    epochs)."""
    return dict(AFF_RECIPES[name])


def seg_recipe(backbone: str, num_images: int) -> Dict[str, float]:
    """Default ``num_epochs``, ``batch_size``, ``lr``, ``wt_dec`` of ``train_seg.py``, the
    backbone's ``seg_recipe``: MCTformer's ``run_seg.sh`` for resnet38 (30 epochs, batch 4,
    7e-4, 1e-5), deeplab-pytorch's ``voc12.yaml`` for deeplabv2_r101 (20,000 iterations of
    batch 10 as epochs of ``num_images``, 2.5e-4, 5e-4), and a short CPU schedule for toy."""
    recipe = dict(BACKBONES[backbone].seg_recipe)
    if "iterations" in recipe:
        steps = max(num_images // recipe["batch_size"], 1)
        recipe = {"num_epochs": max(1, math.ceil(recipe.pop("iterations") / steps)), **recipe}
    return recipe


def seg_optim(backbone: str, wt_dec: float, momentum: Optional[float]
              ) -> Tuple[float, float]:
    """``(weight decay of the groups, SGD momentum)``. resnet38 keeps the reference's
    quirk (``decay_as_momentum``): its weight-decay argument becomes SGD's momentum and no
    decay is applied (unless ``momentum`` is given, which then comes with the decay as
    asked). The others: the decay as given and momentum 0.9."""
    if BACKBONES[backbone].decay_as_momentum:
        return (0.0, wt_dec) if momentum is None else (wt_dec, momentum)
    return wt_dec, 0.9 if momentum is None else momentum
