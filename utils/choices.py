"""The names command lines choose from, in one torch-free place that the parsers
(``utils.args``), the data layer (``datasets.layout``) and the networks (``models``) read, so
that ``--help`` and ``evaluation.py`` start without importing torch. Tests check that every
name here has its builder and vice versa.
"""
from __future__ import annotations

# datasets (datasets.layout.layout)
DATA_SETS = ("VOC12", "COCO", "TOY")

# seed-stage networks (models.mct_vit.ARCHS): the paper's DeiT-S, DeiT-Ti, and a small
# CPU-friendly network for the synthetic toy set
ARCHS = ("deit_small", "deit_tiny", "toy")

# mixed precision (utils.runtime.autocast_context)
AMP_MODES = ("none", "bf16", "fp16")

# refinement and segmentation networks (models.registry) by stage: PSA's ResNet-38 (the
# reference, the default on VOC and COCO), torchvision ResNets (ImageNet weights from a
# file), and a small one for the toy set (its default there)
BACKBONES = {
    "affinity": {"resnet38": "PSA's ResNet-38 AffinityNet (the reference)",
                 "resnet50": "torchvision ResNet-50 trunk",
                 "toy": "small, for the toy set"},
    "segmentation": {"resnet38": "MCTformer's ResNet-38 DeepLab-LargeFOV (the reference)",
                     "deeplabv2_r101": "DeepLabV2 (torchvision ResNet-101 + ASPP)",
                     "toy": "small, for the toy set"},
}
AFF_BACKBONES = tuple(BACKBONES["affinity"])
SEG_BACKBONES = tuple(BACKBONES["segmentation"])
AFF_RECIPES = ("mct", "psa")     # AffinityNet lr / epochs: MCTformer's or PSA's (models.registry)

# torchvision trunks: ImageNet weights through their constructors, or --weights download
TORCHVISION_BACKBONES = ("resnet50", "deeplabv2_r101")

# the file each backbone starts from (none: the toy nets, from scratch), and where to get it
WEIGHT_FILES = {
    "resnet38": ("pretrained/res38_cls.pth",
                 "PSA's ImageNet + VOC classifier res38_cls.pth (github.com/jiwoon-ahn/psa, "
                 "linked from MCTformer's README)"),
    "resnet50": ("pretrained/resnet50-0676ba61.pth",
                 "torchvision's ImageNet weights "
                 "(https://download.pytorch.org/models/resnet50-0676ba61.pth, or --weights "
                 "download)"),
    "deeplabv2_r101": ("pretrained/resnet101-63fe2227.pth",
                       "torchvision's ImageNet weights "
                       "(https://download.pytorch.org/models/resnet101-63fe2227.pth, or "
                       "--weights download)"),
}

# stage -> (folder under experiment/<name>/, file, the script that trains it, an example of
# a file from elsewhere that loads too)
TRAINED_FILES = {
    "affinity": ("aff", "aff_net.pth", "train_aff.py", " (e.g. PSA's res38_aff.pth)"),
    "segmentation": ("segnet", "seg_net.pth", "train_seg.py", ""),
}

# backbones whose trained net lives beside the default one under the same --name, in
# <folder>_<backbone>/ (e.g. segnet_deeplabv2_r101/), its predictions too (seg_deeplabv2_r101/):
# engine.run_folder.backbone_folder
OWN_FOLDER_BACKBONES = ("resnet50", "deeplabv2_r101")

