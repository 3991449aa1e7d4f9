"""``utils.affinity``: the stable import path of ``wsss.affinity`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/affinity.py``."""
from wsss.affinity import (  # noqa: F401
    pair_offsets, pair_indices, pair_affinities, crop_window, block_mean,
    affinity_label_map, affinity_labels, affinity_loss, dense_affinity, sparse_affinity,
    rw_background, random_walk
)

__all__ = ['pair_offsets', 'pair_indices', 'pair_affinities', 'crop_window', 'block_mean',
           'affinity_label_map', 'affinity_labels', 'affinity_loss', 'dense_affinity',
           'sparse_affinity', 'rw_background', 'random_walk']
