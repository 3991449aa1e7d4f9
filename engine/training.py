"""What every training loop shares, written once: ``MetricMeter`` (the epoch means of named
loss terms over all ranks), ``train_epoch`` (batches -> a stage's step -> the stop on a
non-finite loss -> the optimiser step -> the meter) and ``Trainer``, the skeleton of every
training script: claim the run folder, open the log, seed; the script builds its network and
optimiser; resume or head the log; then the epochs, each logged and saved to ``last.pth``.

A stage contributes its step: a function from one batch of its loader to a dict of scalar
loss tensors that holds ``"total"`` (what is backpropagated) beside the terms it is made of
(``engine.seeds.pcss_step``, ``engine.refine.affinity_step``,
``engine.segment.segmentation_step``). The loop logs the terms the step returns, so a new
term needs no change here.
"""
from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from datasets.loader import make_loader, reseed
from engine.common import divergence_hint, optimizer_step, stop_if_not_finite
from utils.checkpoint import claim_run, save_training_state, start_training
from utils.dist import DistInfo, all_reduce_sum
from utils.logger import RunLog
from utils.runtime import seed_everything

Terms = Dict[str, torch.Tensor]
Step = Callable[[Any], Terms]


class MetricMeter:
    """Weighted sums of named scalar terms (float64, on the terms' device) and their
    weighted means over all ranks. The names and their order are those of the first
    ``update``; every later update must give the same names."""

    def __init__(self):
        self.names: Tuple[str, ...] = ()
        self.sums: Optional[torch.Tensor] = None

    def update(self, terms: Mapping[str, torch.Tensor], weight: float = 1) -> None:
        """Add ``weight`` x each term (detached) to its sum, and ``weight`` to the total
        weight."""
        if self.sums is not None and tuple(terms) != self.names:
            raise ValueError(f"terms {tuple(terms)} after {self.names}")
        values = torch.stack([v.detach().double() for v in terms.values()])
        if self.sums is None:
            self.names = tuple(terms)
            self.sums = torch.zeros(len(self.names) + 1, dtype=torch.float64,
                                    device=values.device)
        self.sums[:-1] += values * weight
        self.sums[-1] += weight

    def means(self, info: DistInfo = DistInfo()) -> Dict[str, float]:
        """Each term's weighted mean over all ranks of ``info`` (a collective call under
        torchrun: every rank must make it, after the same number of updates > 0); {}
        before any update."""
        if self.sums is None:
            return {}
        sums = all_reduce_sum(self.sums, info)
        n = max(float(sums[-1]), 1.0)
        return {k: float(sums[i]) / n for i, k in enumerate(self.names)}


def every_term(terms: Terms) -> Terms:
    """What a loop logs by default: every term of the step as ``loss_<term>``, the total
    included."""
    return {f"loss_{k}": v for k, v in terms.items()}


def terms_but_total(terms: Terms) -> Terms:
    """Every term of the step as ``loss_<term>``, without the total (their sum)."""
    return {f"loss_{k}": v for k, v in terms.items() if k != "total"}


def batch_size(batch) -> int:
    """The images in a batch ``(images, ...)``: the weight of a batch in an epoch mean over
    images."""
    return batch[0].shape[0]


def train_epoch(model: torch.nn.Module, batches: Iterable, step: Step, optimizer,
                scaler=None, *, epoch: int, info: DistInfo = DistInfo(), amp: str = "none",
                last_good: Optional[str] = None, what: str = "the loss",
                logged: Callable[[Terms], Terms] = every_term,
                weigh: Optional[Callable[[Any], float]] = None, desc: str = "epoch",
                total: Optional[int] = None, progress: bool = True, postfix_every: int = 5
                ) -> Dict[str, float]:
    """One epoch: for each batch, ``step(batch)`` (a dict of scalar tensors with
    ``"total"``), a ``NonFiniteLoss`` naming ``last_good`` when the total is not finite,
    ``optimizer_step`` (through the fp16 ``scaler`` when there is one), and the terms
    ``logged(terms)`` into a ``MetricMeter`` with the weight ``weigh(batch)`` (default 1).
    Returns their epoch means over all ranks. ``total`` is the number of batches when
    ``batches`` has no length (the progress bar's)."""
    model.train()
    meter = MetricMeter()
    bar = tqdm(batches, desc=f"{desc} {epoch}", unit="batch", dynamic_ncols=True, total=total,
               disable=not (progress and info.is_main))
    for i, batch in enumerate(bar):
        terms = step(batch)
        stop_if_not_finite(
            terms["total"], what, lambda: f"at epoch {epoch}, step {i} (" + ", ".join(
                f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) + ")",
            last_good, divergence_hint(amp))
        optimizer_step(terms["total"], optimizer, scaler)
        meter.update(logged(terms), 1 if weigh is None else weigh(batch))
        if not bar.disable and i % postfix_every == 0:
            bar.set_postfix({k.replace("loss_", ""): f"{v:.4f}"
                             for k, v in meter.means().items() if v != 0}, refresh=False)
    return meter.means(info)


class Trainer:
    """The skeleton of a training run, in the order every training script follows.

    ``Trainer(settings, device, info, last, out_dir, resume=..., overwrite=..., ...)``
    claims the run folder (``utils.checkpoint.claim_run``: ``resume`` / ``overwrite``), opens
    the log (``utils.logger.RunLog``, TensorBoard events with ``tensorboard``) and seeds every
    RNG with ``seed + rank``; the script then builds its network and optimiser (which draw
    from those RNGs); ``start`` resumes from ``last`` or heads the log; ``loader`` makes the
    shuffled training loader (``num_workers`` loader processes); ``fit`` runs the epochs
    (``train_epoch`` under mixed precision ``amp``), logs each one and saves ``last`` after it
    (and the bare state dict to ``weights``, when given). ``settings`` (a mapping: the run's
    options as given on the command line) heads the log and is stored in ``last.pth``;
    ``utils.args.run_options(args)`` gives the keywords from a script's parsed flags.
    """

    def __init__(self, settings: Mapping[str, Any], device: torch.device, info: DistInfo,
                 last: str, out_dir: str, weights: Optional[str] = None, *,
                 resume: bool = False, overwrite: bool = False, tensorboard: bool = True,
                 seed: int = 0, amp: str = "none", num_workers: int = 0):
        self.settings, self.device, self.info = dict(settings), device, info
        self.last, self.weights = last, weights
        self.resume, self.seed, self.amp, self.num_workers = resume, seed, amp, num_workers
        claim_run(last, out_dir, resume, overwrite, info)
        self.log = RunLog(out_dir, enabled=info.is_main, tensorboard=tensorboard)
        seed_everything(seed + info.rank)

    def start(self, net: torch.nn.Module, model: torch.nn.Module, optimizer, summary: str,
              resolved: Optional[Dict[str, Any]] = None, **others) -> int:
        """Train ``model`` (``net`` made ready: compiled, DDP) with ``optimizer``; ``net``
        (whose state dict is saved), the optimizer, the fp16 gradient scaler (made here
        under ``--amp fp16``) and each ``others[key]`` (a schedule, the FIM) are what
        ``last.pth`` holds. Resumes from it with ``resume``; else heads the log with the
        settings (``resolved`` replacing some by what they resolved to) and ``summary``.
        Returns the first epoch to run."""
        self.net, self.model, self.optimizer, self.others = net, model, optimizer, others
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.amp == "fp16"
                       else None)
        self.start_epoch = start_training(self.last, self.log, self.settings, summary, net,
                                          optimizer, self.scaler, self.info,
                                          resolved=resolved, resume=self.resume, **others)
        return self.start_epoch

    def loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """The training loader of ``dataset``: shuffled by seed and epoch (``fit`` reseeds
        it), the last partial batch dropped, each rank its share under torchrun."""
        info = self.info
        sampler = (DistributedSampler(dataset, info.world_size, info.rank, shuffle=True,
                                      seed=self.seed, drop_last=True)
                   if info.distributed else None)
        return make_loader(dataset, batch_size, self.num_workers, self.device,
                           shuffle=True, sampler=sampler, drop_last=True, persistent=True)

    def fit(self, loader: DataLoader, epochs: int, step: Callable[[int], Step], *,
            steps_per_epoch: Optional[int] = None,
            after_epoch: Optional[Callable[[int, Dict[str, Any]], None]] = None,
            lr_after_epoch: bool = False, **loop) -> None:
        """Epochs ``start``'s first .. ``epochs - 1`` of ``train_epoch`` with the step
        ``step(epoch)`` (``loop``: its other keywords). Each epoch takes ``loader`` reseeded
        for it (``datasets.loader.reseed``) or, with ``steps_per_epoch``, the next that many
        batches of one pass over ``loader`` (a stream over all epochs, such as
        ``SegBatchSampler``'s). Its log line is ``epoch``, ``lr`` (at the epoch's start, or
        of its last step with ``lr_after_epoch``), the means of the terms; then
        ``after_epoch(epoch, stats)`` may add to it (validation) before it is logged and
        ``last.pth`` is saved."""
        stream = iter(loader) if steps_per_epoch else None
        for epoch in range(self.start_epoch, epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            batches = (islice(stream, steps_per_epoch) if stream is not None
                       else reseed(loader, self.seed, epoch))
            means = train_epoch(self.model, batches, step(epoch), self.optimizer, self.scaler,
                                epoch=epoch, info=self.info, amp=self.amp,
                                last_good=self.last, total=steps_per_epoch, **loop)
            if lr_after_epoch:
                lr = self.optimizer.param_groups[0]["lr"]
            stats = {"epoch": epoch, "lr": lr, **means}
            if after_epoch is not None:
                after_epoch(epoch, stats)
            self.log.epoch(stats)
            save_training_state(self.last, epoch, self.net, self.optimizer, self.scaler,
                                self.settings, self.info, weights=self.weights, **self.others)
        self.log.close()
        if self.weights and self.info.is_main:
            print(f"saved {self.weights}")
