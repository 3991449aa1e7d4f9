"""DataLoaders whose order depends on the seed and the epoch alone (so that a resumed run
sees the batches an uninterrupted one would), and their per-epoch reseeding."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from datasets.classification import collate_single


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                shuffle: bool = False, sampler: Optional[Sampler] = None,
                drop_last: bool = False, collate_fn: Optional[Callable] = None,
                persistent: bool = False) -> DataLoader:
    """A DataLoader whose shuffling follows ``loader.generator`` (reseeded per epoch with
    ``reseed``); pinned memory on CUDA; persistent workers when asked."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=num_workers, generator=torch.Generator(),
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=persistent and num_workers > 0,
                      collate_fn=collate_fn)


def image_loader(dataset: Dataset, indices: Iterable[int], num_workers: int,
                 device: torch.device) -> DataLoader:
    """The items ``dataset[i]`` for ``i`` in ``indices``, in order, one at a time (native
    sizes differ: ``collate_single``), with no more workers than items: what inference and
    seed validation iterate over."""
    indices = list(indices)
    return make_loader(Subset(dataset, indices), 1, min(num_workers, len(indices)), device,
                       collate_fn=collate_single)


def reseed(loader: DataLoader, seed: int, epoch: int) -> DataLoader:
    """Set the loader's shuffling (and worker seeds) for ``epoch``; returns the loader."""
    loader.generator.manual_seed(seed * 1000 + epoch)
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    return loader
