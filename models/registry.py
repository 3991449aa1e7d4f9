"""The refinement and segmentation networks by name (``--backbone``), their initial weights,
and their training recipes. Every net has the methods of SPEC_REFINE section 16
(``features``, ``embed`` / ``forward``, ``param_groups``, ``train`` freezing), so one loop
serves all.

| backbone | AffinityNet | segmentation | initial weights (default file) |
|---|---|---|---|
| resnet38 | PSA's (reference) | MCTformer's DeepLab-LargeFOV | PSA's ``res38_cls.pth`` |
| resnet50 | torchvision trunk | - | torchvision ImageNet ``resnet50-0676ba61.pth`` |
| deeplabv2_r101 | - | DeepLabV2 + ASPP | torchvision ImageNet ``resnet101-63fe2227.pth`` |
| toy | small trunk | small LargeFOV | none (from scratch) |
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from models.backbones import ResNet50Aff, ToyAff, ToySeg
from models.weights import initial_weights, load_model_weights
from models.deeplab import DeepLabV2
from models.resnet38 import build_resnet38_aff, build_resnet38_seg, head_keys, load_resnet38_weights
from utils.choices import TORCHVISION_BACKBONES, WEIGHT_FILES
from utils.errors import UserError

Info = Dict[str, List[str]]

def default_backbone(data_set: str, stage: str) -> str:
    """The reference's ResNet-38, or the small network for the toy set."""
    return "toy" if data_set == "TOY" else "resnet38"


def resolve_init_weights(backbone: str, value: Optional[str], stage: str) -> Optional[str]:
    """The file (or ``"download"``) a ``stage`` ("affinity" / "segmentation") net of
    ``backbone`` starts from: ``value`` as given (``none``: from scratch), else the
    backbone's default file; a ``UserError`` saying where to get it when absent."""
    default, where = WEIGHT_FILES.get(backbone, (None, "weights of this backbone"))
    return initial_weights(
        value, default,
        lambda path: f"initial weights not found: {path}. The {stage} net ({backbone}) starts "
                     f"from {where}; put the file there or pass --weights PATH (or 'none' to "
                     f"train from scratch).",
        keep=("download",) if backbone in TORCHVISION_BACKBONES else ())


def _info_from_constructor(net: nn.Module, loaded: bool) -> Info:
    """What an ImageNet-initialised constructor left fresh (the head) or everything."""
    fresh = head_keys(net) if loaded else [k for k in net.state_dict()]
    return {"fresh": [k for k in fresh if not k.endswith("num_batches_tracked")],
            "dropped": ["fc.weight", "fc.bias"] if loaded else []}


def affinity_stride(backbone: str) -> int:
    """The output stride of ``backbone``'s AffinityNet (the walk's grid): 8, toy 4."""
    return {"resnet38": 8, "resnet50": 8, "toy": ToyAff.stride}[backbone]


def build_affinity_net(backbone: str, radius: int = 5, weights: Optional[str] = None
                       ) -> Tuple[nn.Module, Info]:
    """AffinityNet on ``backbone`` initialised from ``weights`` (see
    ``resolve_init_weights``); returns the net (training mode) and which keys were fresh /
    dropped."""
    makers = {"resnet38": lambda: build_resnet38_aff(radius),
              "resnet50": lambda: ResNet50Aff(radius, weights),
              "toy": lambda: ToyAff(radius)}
    return _build(makers, backbone, weights, "affinity")


def build_segmentation_net(backbone: str, num_classes: int, weights: Optional[str] = None
                           ) -> Tuple[nn.Module, Info]:
    """The segmentation net of ``backbone`` for ``num_classes`` (background included)."""
    makers = {"resnet38": lambda: build_resnet38_seg(num_classes),
              "deeplabv2_r101": lambda: DeepLabV2(num_classes, weights),
              "toy": lambda: ToySeg(num_classes)}
    return _build(makers, backbone, weights, "segmentation")


def _build(makers: Dict[str, Callable[[], nn.Module]], backbone: str, weights: Optional[str],
           stage: str) -> Tuple[nn.Module, Info]:
    """The net ``makers[backbone]()`` initialised from ``weights``: ResNet-38 through
    ``load_resnet38_weights`` (fresh / dropped keys reported), the torchvision trunks in
    their constructors (ImageNet files), the toy nets strictly; ``None``: all fresh."""
    if backbone not in makers:
        raise UserError(f"unknown {stage} backbone {backbone!r}")
    net = makers[backbone]()
    if backbone in TORCHVISION_BACKBONES:
        return net, _info_from_constructor(net, weights is not None)
    if weights is None:
        return net, {"fresh": list(net.state_dict()), "dropped": []}
    if backbone == "resnet38":
        return net, load_resnet38_weights(net, weights)
    load_model_weights(net, weights)
    return net, {"fresh": [], "dropped": []}


def _load_trained(net: nn.Module, path: str, device: torch.device, what: str) -> nn.Module:
    load_model_weights(net, path, hint=f"Pass the --backbone (and --data-set) the {what} was "
                                       f"trained with.")
    return net.to(device).eval()


def load_affinity_net(backbone: str, path: str, radius: int = 5,
                      device: torch.device = torch.device("cpu")) -> nn.Module:
    """A trained AffinityNet (``train_aff.py``'s ``aff_net.pth``, PSA's ``res38_aff.pth``),
    loaded strictly, in eval mode."""
    net = {"resnet38": lambda: build_resnet38_aff(radius),
           "resnet50": lambda: ResNet50Aff(radius),
           "toy": lambda: ToyAff(radius)}[backbone]()
    return _load_trained(net, path, device, "AffinityNet")


def load_segmentation_net(backbone: str, path: str, num_classes: int,
                          device: torch.device = torch.device("cpu")) -> nn.Module:
    """A trained segmentation net (``train_seg.py``'s ``seg_net.pth``), loaded strictly, in
    eval mode."""
    net = {"resnet38": lambda: build_resnet38_seg(num_classes),
           "deeplabv2_r101": lambda: DeepLabV2(num_classes),
           "toy": lambda: ToySeg(num_classes)}[backbone]()
    return _load_trained(net, path, device, "segmentation net")


def aff_recipe(name: str) -> Dict[str, float]:
    """Default ``lr`` and ``epochs`` of ``train_aff.py`` (13.3): MCTformer's ("mct":
    0.01, 5 epochs, the default) or PSA's ("psa": 0.1, 8 epochs)."""
    return {"mct": {"lr": 0.01, "epochs": 5}, "psa": {"lr": 0.1, "epochs": 8}}[name]


def seg_recipe(backbone: str, num_images: int) -> Dict[str, float]:
    """Default ``epochs``, ``batch_size``, ``lr``, ``weight_decay`` of ``train_seg.py``:
    MCTformer's ``run_seg.sh`` for resnet38 (30 epochs, batch 4, 7e-4, 1e-5),
    deeplab-pytorch's ``voc12.yaml`` for deeplabv2_r101 (20,000 iterations of batch 10 as
    epochs of ``num_images``, 2.5e-4, 5e-4), and a short CPU schedule for toy."""
    if backbone == "resnet38":
        return {"epochs": 30, "batch_size": 4, "lr": 7e-4, "weight_decay": 1e-5}
    if backbone == "deeplabv2_r101":
        return {"epochs": max(1, math.ceil(20000 / max(num_images // 10, 1))),
                "batch_size": 10, "lr": 2.5e-4, "weight_decay": 5e-4}
    return {"epochs": 3, "batch_size": 16, "lr": 0.005, "weight_decay": 5e-4}


def seg_optim(backbone: str, weight_decay: float, momentum: Optional[float]
              ) -> Tuple[float, float]:
    """``(weight decay of the groups, SGD momentum)``. resnet38 keeps the reference's
    quirk: its weight-decay argument becomes SGD's momentum and no decay is applied (unless
    ``momentum`` is given, which then comes with the decay as asked). The others: the
    decay as given and momentum 0.9."""
    if backbone == "resnet38":
        return (0.0, weight_decay) if momentum is None else (weight_decay, momentum)
    return weight_decay, 0.9 if momentum is None else momentum
