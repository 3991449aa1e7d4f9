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

# refinement and segmentation networks (models.refine): PSA's ResNet-38 (the reference),
# torchvision ResNets (ImageNet weights from a file), and a small one for the toy set
AFF_BACKBONES = ("resnet38", "resnet50", "toy")
SEG_BACKBONES = ("resnet38", "deeplabv2_r101", "toy")
AFF_RECIPES = ("mct", "psa")     # AffinityNet lr / epochs: MCTformer's or PSA's (models.refine)
