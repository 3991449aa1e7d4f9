"""The method's own functions, tensors and arrays in and out: what turns a classifier into
seeds and seeds into pseudo masks, and how they are scored.

- ``wsss.cam``: class activation maps of an image (``cam_dict``, ``max_norm``).
- ``wsss.frequency``: PCSS's frequency side - amplitude mixing, frequency suppression and
  the frequency influence maps (``FrequencyInfluence``).
- ``wsss.pseudo``: score dicts -> label maps (background threshold, argmax).
- ``wsss.crf``: the dense CRF with the reference presets (pydensecrf2).
- ``wsss.affinity``: PSA's affinity labels and loss, the transition matrix and random walk.
- ``wsss.segmentation``: multi-scale prediction and the loss of the segmentation network.
- ``wsss.metrics``: mIoU of CAMs over thresholds and of label maps (confusion matrices).
- ``wsss.scorefile``: score dicts on disk, in PSA's ``.npy`` or the compact ``.sdz`` format.

This package sits on the ground floor beside ``utils/`` and ``datasets/``: it imports
``utils`` only. ``utils.cam``, ``utils.frequency``, ``utils.affinity``,
``utils.segmentation``, ``utils.crf`` and ``utils.evaluation`` are the stable import paths
of the public functions and re-export them from here.
"""
