"""Speed goals on this machine: ours vs a reference-style baseline, and the compiled
network against the eager one (``compile_*``, ``bf16``).

    python bench/bench_core.py {train,prefix,fim,infer,softmax,score,all,compile_fim,
                                 compile_infer,compile_train,bf16,compile} [--repeats N]

Real scale: DeiT-S (``build_model(num_classes=20)`` defaults: D 384, depth 12, 6 heads,
drop path 0.1), float32, torch's default thread count. Every goal first checks that ours
and the baseline (``bench/reference.py``) give the same numbers on identical inputs, then
times them interleaved (A, B, A, B, ...; one untimed warm-up round) and reports medians.
The machine may be shared, so only the medians and their ratio are meaningful.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models import build_model, compile_network, pcss_losses  # noqa: E402
from bench.reference import (all_cells, ref_cam_dict, ref_cam_miou, ref_fim_batch,  # noqa: E402
                       ref_losses)
from wsss.cam import cam_dict  # noqa: E402
from wsss.metrics import cam_miou, default_thresholds  # noqa: E402
from wsss.frequency import FrequencyInfluence  # noqa: E402
from utils.io import read_label_png
from wsss.scorefile import load_cam_dict, save_cam_dict  # noqa: E402
from utils.schedule import make_adamw, param_groups  # noqa: E402

GOALS = {"train_exact": 1.2, "train_reuse": 1.4, "fim": 1.3, "infer": 1.5, "score": 30.0,
         # the compiled network (models.compile_network) against the eager one
         "compile_fim": 1.5, "compile_infer": 1.3, "compile_train": 1.25}
# Not goals: the measured gains of two design choices, cited where they are made
# (models/prefix_sharing.py, the in-place softmax in models/mct_vit.py).
ROWS: List[tuple] = []   # (goal, variant, baseline text, ours text, ratio, paired ratio, target)


def add_row(goal: str, variant: str, tb: List[float], to: List[float], fmt: Callable,
            target, scale_b: float = 1.0) -> None:
    """A table row from the interleaved times: medians (and minima), the ratio of the
    medians, and the median of the per-round ratios (adjacent runs share the load)."""
    mb, mo = med(tb) * scale_b, med(to)
    paired = med([b * scale_b / o for b, o in zip(tb, to)])
    ROWS.append((goal, variant, f"{fmt(mb)} (min {fmt(min(tb) * scale_b)})",
                 f"{fmt(mo)} (min {fmt(min(to))})", mb / mo, paired, target))


# --------------------------------------------------------------------------- helpers
MALLOC_TUNED = False
QUIET = {"wait": 90.0, "waited": 0.0, "busy_runs": 0}


def _busy_fraction(dt: float = 0.3) -> float:
    """Fraction of the machine's CPU time used during ``dt`` s while this process sleeps
    (i.e. by other processes), from /proc/stat; 0 where unavailable."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]                      # total, idle + iowait
    try:
        t0, i0 = snap()
        time.sleep(dt)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(threshold: float = 0.25) -> None:
    """Other engineers share this machine: before each timed call wait (up to
    ``QUIET['wait']`` s) until the others use less than ``threshold`` of the CPUs, so that
    a timed call does not run against an oversubscribed OpenMP pool."""
    t0 = time.perf_counter()
    while _busy_fraction() > threshold:
        if time.perf_counter() - t0 > QUIET["wait"]:
            QUIET["busy_runs"] += 1
            break
        time.sleep(1.0)
    QUIET["waited"] += time.perf_counter() - t0


def interleave(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1
               ) -> Dict[str, List[float]]:
    """Run the callables round-robin (A, B, C, A, B, C, ...); the first ``warmup`` rounds
    are not recorded. Returns the wall times per name."""
    times = {k: [] for k in fns}
    for rnd in range(warmup + repeats):
        for k, fn in fns.items():
            if rnd >= warmup and QUIET["wait"] > 0:
                wait_quiet()
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if rnd >= warmup:
                times[k].append(dt)
        if rnd >= warmup:
            print(f"    round {rnd - warmup + 1}/{repeats}: "
                  + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    return times


def tune_malloc() -> bool:
    """glibc: keep freed memory in the heap instead of mmap/munmap for big blocks
    (what ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` does), so
    that large activations do not page-fault on every allocation."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def med(ts: List[float]) -> float:
    return statistics.median(ts)


def spread(ts: List[float]) -> str:
    return f"[{min(ts):.3f}..{max(ts):.3f}]"


def header(title: str) -> None:
    print(f"\n=== {title} (torch {torch.__version__}, {torch.get_num_threads()} threads"
          f"{', glibc malloc tuned' if MALLOC_TUNED else ''}) ===", flush=True)


def machine() -> str:
    """The CPU model and the matrix/vector extensions that decide these figures."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    ext = [e for e in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if e in flags]
    return f"{name}, {os.cpu_count()} CPUs, {' '.join(ext) or 'no AVX2'}"


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def make_labels(B: int, C: int, g: torch.Generator) -> torch.Tensor:
    """1-3 classes per image (every image labelled)."""
    y = torch.zeros(B, C)
    for b in range(B):
        n = int(torch.randint(1, 4, (1,), generator=g))
        y[b, torch.randperm(C, generator=g)[:n]] = 1.0
    return y


# ----------------------------------------------------------------------------- train
def make_optimizer(net, lr=6.25e-5):
    """AdamW with timm ``create_optimizer`` grouping (no decay on 1-D params and
    ``no_weight_decay`` names), eps 1e-8."""
    skip = net.no_weight_decay()
    decay, no_decay = [], []
    for n, p in net.named_parameters():
        (no_decay if p.ndim <= 1 or n.endswith(".bias") or n in skip else decay).append(p)
    return torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0},
                              {"params": decay, "weight_decay": 0.05}], lr=lr, eps=1e-8)


def bench_train(repeats: int) -> None:
    header("1. training step: batch 8, 224x224, C 20, epoch 3, FSS+MPC, drop path 0.1")
    B, C, S, k, r = 8, 20, 224, 7, 0.3
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build_model(num_classes=C).train()
    x = torch.randn(B, 3, S, S, generator=g)
    y = make_labels(B, C, g)
    masks = torch.rand(C, S, S, generator=g)          # float32, as a training loop holds them
    perm = torch.randperm(B, generator=g)
    kw = dict(w_fss=2.0, w_mpc=2.0, mpc_block=k, mpc_keep_ratio=r, fim_start_epoch=2,
              mpc_cam_start_epoch=0)

    def grads_of(fn):
        net.zero_grad(set_to_none=True)
        L = fn()
        L["total"].backward()
        return ({n: v.detach() for n, v in L.items()},
                {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})

    def ours(reuse):
        return lambda: pcss_losses(net, x, y, 3, masks, perm, reuse_prefix=reuse, **kw)

    def base():
        return ref_losses(net, x, y, masks, perm, 2.0, 2.0, k, r)

    def compare(tag, a, b):
        (La, Ga), (Lb, Gb) = a, b
        lrel = max(abs(float(La[n]) - float(Lb[n])) / max(abs(float(Lb[n])), 1e-12) for n in Lb)
        grel = max(max_rel(Ga[n], Gb[n]) for n in Gb)
        same = set(Ga) == set(Gb)
        ok = lrel < 1e-4 and grel < 1e-3 and same
        print(f"  check {tag}: losses max rel diff {lrel:.1e}, grads max rel diff "
              f"(per tensor, vs its max) {grel:.1e} -> {'OK' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit(f"train {tag}: ours and the baseline disagree")

    # exact semantics with drop path on: same RNG stream -> same stochastic-depth masks
    torch.manual_seed(123)
    a = grads_of(ours(False))
    torch.manual_seed(123)
    b = grads_of(base)
    compare("reuse_prefix=False vs baseline (drop path 0.1, same seed)", a, b)
    # reuse is exact only without drop path (documented): check it with p = 0
    saved = [blk.drop_path.p for blk in net.blocks]
    for blk in net.blocks:
        blk.drop_path.p = 0.0
    compare("reuse_prefix=True vs baseline (drop path 0 for the check)",
            grads_of(ours(True)), grads_of(base))
    for blk, p in zip(net.blocks, saved):
        blk.drop_path.p = p
    net.zero_grad(set_to_none=True)

    ref_opt = make_optimizer(net)       # the reference: plain AdamW
    our_opt = make_adamw(param_groups(net, 0.05, net.no_weight_decay()), lr=6.25e-5)

    def step(fn, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            fn()["total"].backward()
            opt.step()
        return run

    variants = {"baseline": step(base, ref_opt), "ours_exact": step(ours(False), our_opt),
                "ours_reuse": step(ours(True), our_opt)}
    t = interleave(variants, repeats)
    ips = lambda s: f"{s:.3f} s = {B / s:.2f} img/s"  # noqa: E731
    add_row("train step", "ours, reuse_prefix=False (exact)", t["baseline"], t["ours_exact"],
            ips, GOALS["train_exact"])
    add_row("train step", "ours, reuse_prefix=True", t["baseline"], t["ours_reuse"], ips,
            GOALS["train_reuse"])
    for k_, v in t.items():
        print(f"  spread {k_}: {spread(v)}")


class _FullRecompute(torch.nn.Module):
    """``net`` with the prefix sharing switched off: the mixed pass recomputes blocks
    0..k (what the reference does)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, prefix=None, **kw):
        return self.net(x, **kw)


def bench_prefix(repeats: int) -> None:
    header("1b. exact prefix sharing (models/prefix_sharing.py): train step, batch 8, 224, "
           "FSS+MPC, drop path 0.1")
    B, C, S = 8, 20, 224
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build_model(num_classes=C).train()
    x, y = torch.randn(B, 3, S, S, generator=g), make_labels(B, C, g)
    masks, perm = torch.rand(C, S, S, generator=g), torch.randperm(B, generator=g)
    opt = make_adamw(param_groups(net, 0.05, net.no_weight_decay()), lr=6.25e-5)

    def step(model, reuse=False):
        def run():
            opt.zero_grad(set_to_none=True)
            pcss_losses(model, x, y, 3, masks, perm, 2.0, 2.0, 7, 0.3,
                        reuse_prefix=reuse)["total"].backward()
            opt.step()
        return run

    t = interleave({"recompute": step(_FullRecompute(net)), "shared": step(net),
                    "reuse": step(net, True)}, repeats)
    sec = lambda s: f"{s:.3f} s"  # noqa: E731
    add_row("prefix sharing", "exact sharing vs recomputing blocks 0..k", t["recompute"],
            t["shared"], sec, None)
    add_row("prefix sharing", "reuse_prefix vs recomputing", t["recompute"], t["reuse"], sec,
            None)


def bench_softmax(repeats: int) -> None:
    """The in-place no-grad softmax of ``Attention`` on CPU against the public out-of-place
    one, in ``cam_dict`` (N = 733 tokens per view). The kernels cost the same; the gain is
    in not touching a fresh 13 MB buffer (page faults) per block."""
    import models.mct_vit as mct

    header("3b. in-place attention softmax (CPU, no grad): cam_dict on 375x500 with flip")
    torch.manual_seed(2)
    net = build_model(num_classes=20).eval()
    x = torch.randn(1, 3, 375, 500)
    label = torch.zeros(20)
    label[[4, 14]] = 1.0
    ours = mct.Attention.forward

    def public_softmax(self, x, need_weights=False):
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, D)), attn.mean(1)

    def with_forward(fwd):
        def run():
            mct.Attention.forward = fwd
            try:
                cam_dict(net, x, label)
            finally:
                mct.Attention.forward = ours
        return run

    t = interleave({"public": with_forward(public_softmax), "inplace": with_forward(ours)},
                   repeats)
    add_row("in-place softmax", "cam_dict, 375x500 with flip", t["public"], t["inplace"],
            lambda s: f"{s:.3f} s", None)


# ------------------------------------------------------------------------------- FIM
def bench_fim(repeats: int, cpfs=(1, 4, 8, 16), subset_world: int = 14, full: bool = False) -> None:
    B, C, S = 8, 20, 224
    G = S // 16
    cells = all_cells(G)
    header(f"2. FIM work: batch {B} (all needed), 224, C 20, eval, no_grad; "
           f"cells {len(cells)} -> timing every {subset_world}th cell")
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    net = build_model(num_classes=C).eval()
    x = torch.randn(B, 3, S, S, generator=g)
    y = make_labels(B, C, g)
    budget = [100] * C
    sub = cells[0::subset_world]                       # same cells as shard (0, world)
    nsub = len(sub)
    scale = len(cells) / nsub

    def ours(cpf, shard=(0, subset_world)):
        def run():
            fi = FrequencyInfluence(C, S, images_per_class=100, cells_per_forward=cpf,
                                    shard=shard)
            fi.start_round()
            fi.accumulate(net, x, y)
            return fi
        return run

    # check: the subset's cells, at the matrix positions those cells own last
    fi = ours(8)()
    want = ref_fim_batch(net, x, y, budget, sub)
    writer = fi.writer.reshape(G, G)
    owned = torch.zeros(G, G, dtype=torch.bool)
    idx = {cell: i for i, cell in enumerate(cells)}
    for cell in sub:
        owned |= writer == idx[cell]
    got_v, want_v = fi.loss_matrix[:, owned], want[:, owned]
    rel = max_rel(got_v, want_v)
    ok = rel < 1e-4 and int(owned.sum()) >= nsub
    print(f"  check: {int(owned.sum())} matrix positions x {C} classes, max rel diff {rel:.1e}"
          f" -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("fim: ours and the baseline disagree")
    for cpf in cpfs:
        if cpf != 8:
            other = ours(cpf)().loss_matrix
            d = max_rel(other[:, owned], want_v)
            if d > 1e-4:
                raise SystemExit(f"fim: cells_per_forward={cpf} disagrees ({d:.1e})")

    fns = {"baseline": lambda: ref_fim_batch(net, x, y, budget, sub)}
    for cpf in cpfs:
        fns[f"cpf={cpf}"] = ours(cpf)
    t = interleave(fns, repeats)
    per = lambda s: f"{s:.3f} s"  # noqa: E731  (values already per image)
    f = scale / B
    pb = [v * f for v in t["baseline"]]
    best = min(cpfs, key=lambda c: med(t[f"cpf={c}"]))
    for cpf in cpfs:
        tag = f"ours, cells_per_forward={cpf}" + (" (default for 8 images on CPU)" if cpf == 1 else "") + \
              (" <- fastest" if cpf == best else "")
        add_row("FIM per image", tag, pb, [v * f for v in t[f"cpf={cpf}"]], per, GOALS["fim"])
    print(f"  ({nsub} of {len(cells)} cells timed; per-image figures scaled by "
          f"{len(cells)}/{nsub} and divided by {B})")
    for k, v in t.items():
        print(f"  spread {k}: {spread(v)}")
    if full:
        print("  full round (all 112 cells), ours default cells_per_forward ...", flush=True)
        t0 = time.perf_counter()
        ours(None, shard=(0, 1))()
        dt = time.perf_counter() - t0
        print(f"  full: {dt:.2f} s for {B} images = {dt / B:.3f} s/image "
              f"(subset estimate {med(t['cpf=1']) * f:.3f})")


# ------------------------------------------------------------------------- inference
def bench_infer(repeats: int) -> None:
    header("3. CAM inference: 1x3x375x500, flip, 2 label classes, eval")
    C = 20
    torch.manual_seed(2)
    net = build_model(num_classes=C).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 375, 500, generator=g)
    label = torch.zeros(C)
    label[[4, 14]] = 1.0
    # float64 proves the same computation (~1e-13); float32 differs by rounding only
    # (the attention formulation differs; max_norm amplifies the rounding to ~1e-4).
    for dt, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        n, xx = net.to(dt), x.to(dt)
        a, b = cam_dict(n, xx, label), ref_cam_dict(n, xx, label)
        ok = sorted(a) == sorted(b) and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape for k in b)
        diff = max(float(np.abs(a[k] - b[k]).max()) for k in b) if ok else float("nan")
        ok = ok and diff < tol
        print(f"  check {str(dt)[6:]}: keys {sorted(a)} vs {sorted(b)}, max abs diff "
              f"{diff:.1e} (maps in [0, 1], tol {tol:g}) -> {'OK' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit("infer: ours and the baseline disagree")
    net.float()
    variants = {"baseline": lambda: ref_cam_dict(net, x, label),
                "ours": lambda: cam_dict(net, x, label)}
    t = interleave(variants, repeats)
    sec = lambda s: f"{s:.3f} s"  # noqa: E731
    add_row("CAM inference per image", "ours (cam_dict)", t["baseline"], t["ours"], sec,
            GOALS["infer"])
    for k_, v in t.items():
        print(f"  spread {k_}: {spread(v)}")


# ------------------------------------------------------------------ compiled network
# ``compile_network(net)`` against the eager ``net`` (the same parameters), in
# one process, interleaved. Each section first reports the warm-up (the first calls, which
# compile; ``--cold-cache`` points inductor at an empty cache directory so that they
# include the C++ compilation) and checks that the numbers agree.

def first_calls(fn: Callable[[], object], steady: float, n: int = 1) -> float:
    """Seconds that the first ``n`` calls of ``fn`` take beyond ``n`` steady-state calls."""
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t - n * steady


def graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return int(sum(counters["graph_break"].values()))


WARMUP: Dict[str, str] = {}     # goal -> warm-up text for the summary


def net_pair(seed: int, train: bool = False):
    """A DeiT-S PCSS network (20 classes) from ``seed`` and its compiled twin (shared
    parameters)."""
    torch.manual_seed(seed)
    net = build_model(num_classes=20)
    net = net.train() if train else net.eval()
    return net, compile_network(net)


def two_classes(C: int = 20) -> torch.Tensor:
    """The image-level label of the inference benchmarks: classes 4 and 14."""
    label = torch.zeros(C)
    label[[4, 14]] = 1.0
    return label


def compiled_row(goal: str, what: str, t: Dict[str, List[float]], fmt, target) -> None:
    """The eager / compiled row of ``goal`` in the summary table, and the spreads."""
    add_row(goal, what, t["eager"], t["compiled"], fmt, target)
    for k, v in t.items():
        print(f"  spread {k}: {spread(v)}")


def bench_compile_fim(repeats: int) -> None:
    header("5. compiled: FIM forward, net.logits on 8 images at 224, eval, no_grad")
    B, C, S = 8, 20, 224
    g = torch.Generator().manual_seed(1)
    net, cnet = net_pair(1)
    x = torch.randn(B, 3, S, S, generator=g)
    y = make_labels(B, C, g)
    with torch.no_grad():
        t0 = time.perf_counter()
        got = cnet.logits(x)
        first = time.perf_counter() - t0
        want = net.logits(x)
        t0 = time.perf_counter()
        net.logits(x)
        steady = time.perf_counter() - t0
        rel = max(max_rel(a, b) for a, b in zip(got, want))
        absd = max(float((a - b).abs().max()) for a, b in zip(got, want))
        # the FIM's own use: a subset of cells of one batch, loss matrices compared
        fims = []
        for n in (net, cnet):
            fi = FrequencyInfluence(C, S, images_per_class=100, shard=(0, 28))
            fi.start_round()
            fi.accumulate(n, x, y)
            fims.append(fi.loss_matrix)
        frel = max_rel(fims[1], fims[0])
    ok = rel < 1e-4 and frel < 1e-4
    WARMUP["compile_fim"] = f"{first - steady:.1f} s"
    print(f"  warm-up: first compiled call {first:.1f} s (eager call {steady:.3f} s)")
    print(f"  check: logits max abs diff {absd:.1e} (max rel {rel:.1e}); FIM loss matrix "
          f"(4 cells) max rel {frel:.1e} -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("compile_fim: compiled and eager disagree")
    with torch.no_grad():
        t = interleave({"eager": lambda: net.logits(x), "compiled": lambda: cnet.logits(x)},
                       repeats)
    compiled_row("compiled FIM forward", "net.logits, 8 images at 224 (s per call)", t,
                 lambda s: f"{s:.3f} s", GOALS["compile_fim"])


def bench_compile_infer(repeats: int) -> None:
    header("6. compiled: CAM inference, cam_dict on 1x3x375x500 with flip, 2 classes, eval")
    net, cnet = net_pair(2)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 375, 500, generator=g)
    label = two_classes()
    t0 = time.perf_counter()
    got = cam_dict(cnet, x, label)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    want = cam_dict(net, x, label)
    steady = time.perf_counter() - t0
    diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    ok = sorted(got) == sorted(want) and diff < 1e-3
    # other native sizes: no new graph after the first image
    before, t0 = graphs(), time.perf_counter()
    sizes = [(333, 500), (500, 375), (281, 500), (375, 499), (442, 301)]
    for hw in sizes:
        cam_dict(cnet, torch.randn(1, 3, *hw, generator=g), label)
    new = graphs() - before
    WARMUP["compile_infer"] = f"{first - steady:.1f} s"
    print(f"  warm-up: first compiled image {first:.1f} s (eager {steady:.3f} s); "
          f"{len(sizes)} more sizes {sizes}: {new} new graphs, "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"  check: keys {sorted(got)}, max abs diff {diff:.1e} (maps in [0, 1], tol 1e-3) "
          f"-> {'OK' if ok and new == 0 else 'MISMATCH'}")
    if not ok or new:
        raise SystemExit("compile_infer: compiled and eager disagree, or sizes recompiled")
    t = interleave({"eager": lambda: cam_dict(net, x, label),
                    "compiled": lambda: cam_dict(cnet, x, label)}, repeats)
    compiled_row("compiled CAM inference", "cam_dict, 375x500 with flip", t,
                 lambda s: f"{s:.3f} s", GOALS["compile_infer"])


def bench_compile_train(repeats: int) -> None:
    header("7. compiled: training step, batch 8 at 224, C 20, epoch 3, FSS+MPC, drop path "
           "0.1, fused AdamW")
    B, C, S = 8, 20, 224
    g = torch.Generator().manual_seed(0)
    net, cnet = net_pair(0, train=True)
    x, y = torch.randn(B, 3, S, S, generator=g), make_labels(B, C, g)
    masks, perm = torch.rand(C, S, S, generator=g), torch.randperm(B, generator=g)
    opt = make_adamw(param_groups(net, 0.05, net.no_weight_decay()), lr=6.25e-5)

    def losses(model, seed):
        torch.manual_seed(seed)
        net.zero_grad(set_to_none=True)
        L = pcss_losses(model, x, y, 3, masks, perm, 2.0, 2.0, 7, 0.3)
        L["total"].backward()
        return ({k: float(v.detach()) for k, v in L.items()},
                {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})

    breaks = graph_breaks()
    t0 = time.perf_counter()
    Lc, Gc = losses(cnet, 123)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    Le, Ge = losses(net, 123)
    steady = time.perf_counter() - t0
    lrel = max(abs(Lc[k] - Le[k]) / max(abs(Le[k]), 1e-12) for k in Le)
    grel = max(max_rel(Gc[n], Ge[n]) for n in Ge)
    # other drop-path draws: the row subsets of the shared prefix change size
    extra = first_calls(lambda: losses(cnet, 7), steady, 3)
    breaks = graph_breaks() - breaks
    # the goal is the loss (1e-4 relative); float32 gradients of a 12-block network through
    # FFTs differ by rounding up to ~1e-3 of their largest entry (float64: 1e-8, tests)
    ok = lrel < 1e-4 and grel < 1e-2 and set(Gc) == set(Ge) and breaks == 0
    WARMUP["compile_train"] = f"{first - steady:.1f} s + {max(extra, 0):.1f} s"
    print(f"  warm-up: first compiled step {first:.1f} s (eager {steady:.2f} s), the next 3 "
          f"steps {max(extra, 0):.1f} s more than eager; graph breaks {breaks}")
    print(f"  check (same seed, so the same drop-path masks): losses max rel diff "
          f"{lrel:.1e}, total {Lc['total']:.6f} vs {Le['total']:.6f}; grads max rel diff "
          f"{grel:.1e} -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("compile_train: compiled and eager disagree (or graph breaks)")
    net.zero_grad(set_to_none=True)

    def step(model):
        def run():
            opt.zero_grad(set_to_none=True)
            pcss_losses(model, x, y, 3, masks, perm, 2.0, 2.0, 7, 0.3)["total"].backward()
            opt.step()
        return run

    t = interleave({"eager": step(net), "compiled": step(cnet)}, repeats)
    ips = lambda s: f"{s:.3f} s = {B / s:.2f} img/s"  # noqa: E731
    compiled_row("compiled train step", "pcss_losses + backward + AdamW, exact prefix sharing",
                 t, ips, GOALS["compile_train"])


def bench_bf16(repeats: int) -> None:
    """bf16 autocast (opt-in, ``--amp bf16``): speed and how far it moves the outputs."""
    header("8. bf16 autocast: net.logits on 8 images at 224 and cam_dict 375x500, eval")
    net, cnet = net_pair(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 224, 224, generator=g)
    xi = torch.randn(1, 3, 375, 500, generator=g)
    label = two_classes()
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def logits(model, amp):
        with torch.no_grad(), (bf16() if amp else contextlib.nullcontext()):
            return model.logits(x)

    def cams(model, amp):
        with bf16() if amp else contextlib.nullcontext():
            return cam_dict(model, xi, label)

    with torch.no_grad():
        ref = net.logits(x)
    scale = max(float(r.abs().max()) for r in ref)
    for model, tag in ((net, "eager"), (cnet, "compiled")):
        got = logits(model, True)
        d = max(float((a.float() - b).abs().max()) for a, b in zip(got, ref))
        print(f"  {tag} bf16 logits: max abs change {d:.2e} (logits up to {scale:.2f}: "
              f"{d / scale:.1%} of the largest)")
        c, r = cams(model, True), cam_dict(net, xi, label)
        d = max(float(np.abs(c[k] - r[k]).max()) for k in r)
        print(f"  {tag} bf16 cam_dict: max abs change {d:.2e} (maps in [0, 1])")
    t = interleave({"fp32 eager": lambda: logits(net, False),
                    "bf16 eager": lambda: logits(net, True),
                    "fp32 compiled": lambda: logits(cnet, False),
                    "bf16 compiled": lambda: logits(cnet, True)}, repeats)
    sec = lambda s: f"{s:.3f} s"  # noqa: E731
    for k in ("bf16 eager", "fp32 compiled", "bf16 compiled"):
        add_row("bf16 logits (8 at 224)", f"{k} vs fp32 eager", t["fp32 eager"], t[k], sec,
                None)
    t = interleave({"fp32 eager": lambda: cams(net, False),
                    "bf16 eager": lambda: cams(net, True),
                    "bf16 compiled": lambda: cams(cnet, True)}, max(3, repeats // 2))
    for k in ("bf16 eager", "bf16 compiled"):
        add_row("bf16 cam_dict (375x500)", f"{k} vs fp32 eager", t["fp32 eager"], t[k], sec,
                None)


# --------------------------------------------------------------------------- scoring
def make_eval_set(root: str, n: int = 100, H: int = 375, W: int = 500, seed: int = 0):
    """Synthetic VOC-size seeds and GT: smooth float32 maps for 1-3 classes, blocky GT
    (background + those classes) with 255 borders and some random 255 pixels."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        keys = sorted(rng.choice(20, size=int(rng.integers(1, 4)), replace=False).tolist())
        d = {}
        for k in keys:
            low = Image.fromarray(rng.random((12, 16)).astype(np.float32), mode="F")
            d[k] = np.clip(np.asarray(low.resize((W, H), Image.BILINEAR)), 0, 1).astype(np.float32)
        choices = np.array([0] + [k + 1 for k in keys], np.uint8)
        gt_low = choices[rng.integers(0, len(choices), (12, 16))]
        gt = np.asarray(Image.fromarray(gt_low).resize((W, H), Image.NEAREST)).copy()
        edge = np.zeros_like(gt, bool)
        edge[1:] |= gt[1:] != gt[:-1]
        edge[:, 1:] |= gt[:, 1:] != gt[:, :-1]
        gt[edge] = 255
        gt[rng.random((H, W)) < 0.01] = 255
        name = f"img{i:04d}"
        save_cam_dict(os.path.join(root, name + ".npy"), d)
        Image.fromarray(gt).save(os.path.join(root, name + ".png"))
        names.append(name)
    return names


def bench_score(repeats: int, n_images: int = 100, base_every: int = 10) -> None:
    th = default_thresholds()
    sub = th[::base_every]
    header(f"4. scoring {len(th)} thresholds on {n_images} synthetic 375x500 images; "
           f"baseline timed on {len(sub)} thresholds {[float(v) for v in sub]} and scaled x{len(th) / len(sub):g}")
    root = tempfile.mkdtemp(prefix="pcss_bench_score_")
    try:
        names = make_eval_set(root, n_images)
        miou, ciou = cam_miou(root, root, names)
        bm, bc = ref_cam_miou(root, root, names, sub)
        pos = [int(np.where(np.isclose(th, t))[0][0]) for t in sub]
        d = float(np.abs(ciou[pos] - bc).max())
        ok = d < 1e-9
        print(f"  check: per-class IoU at {len(sub)} thresholds, max abs diff {d:.1e} "
              f"(mIoU {miou[pos].round(3).tolist()}) -> {'OK' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit("score: ours and the baseline disagree")
        paths = [(os.path.join(root, n + ".npy"), os.path.join(root, n + ".png")) for n in names]

        def floor():
            for p, q in paths:
                load_cam_dict(p)
                read_label_png(q)

        t = interleave({"baseline": lambda: ref_cam_miou(root, root, names, sub),
                        "ours_w1": lambda: cam_miou(root, root, names, workers=1),
                        "ours_default": lambda: cam_miou(root, root, names),
                        "read_floor": floor}, repeats)
        sc = len(th) / len(sub)
        sec = lambda s: f"{s:.3f} s"  # noqa: E731
        for k, tag in (("ours_w1", "ours, workers=1"), ("ours_default", "ours, workers=default")):
            add_row("scoring 30 thresholds", tag, t["baseline"], t[k], sec, GOALS["score"], sc)
        add_row("scoring 30 thresholds", "floor: read every file once (1 thread)",
                t["baseline"], t["read_floor"], sec, None, sc)
        for k, v in t.items():
            print(f"  spread {k}: {spread(v)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- main
def print_table() -> None:
    print("\n| goal | variant | baseline median | ours median | ratio of medians "
          "| median paired ratio | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for goal, var, tb, to, ratio, paired, target in ROWS:
        tgt = "-" if target is None else f">= {target:g}x"
        met = "-" if target is None else ("yes" if min(ratio, paired) >= target else
                                          ("borderline" if max(ratio, paired) >= target else "NO"))
        print(f"| {goal} | {var} | {tb} | {to} | {ratio:.2f}x | {paired:.2f}x | {tgt} | {met} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["train", "prefix", "fim", "infer", "softmax", "score",
                                     "compile_fim", "compile_infer", "compile_train", "bf16",
                                     "compile", "all"])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed rounds per variant (default: train 5, fim 3, infer 9, score 3)")
    ap.add_argument("--fim-cells", type=int, nargs="+", default=[1, 4, 8, 16],
                    help="cells_per_forward values to try")
    ap.add_argument("--fim-full", action="store_true",
                    help="also time one full 112-cell round of ours (about 30-60 s)")
    ap.add_argument("--score-images", type=int, default=100)
    ap.add_argument("--quiet-wait", type=float, default=90.0,
                    help="before each timed call, wait up to this many seconds for other "
                         "processes to leave the CPUs (0: never wait)")
    ap.add_argument("--cold-cache", action="store_true",
                    help="compile into an empty inductor cache (warm-up with C++ builds)")
    ap.add_argument("--mallopt", action="store_true",
                    help="tune glibc malloc first (no mmap/munmap of big blocks; see README)")
    args = ap.parse_args(argv)
    QUIET["wait"] = args.quiet_wait
    if args.mallopt:
        global MALLOC_TUNED
        MALLOC_TUNED = tune_malloc()
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="pcss_inductor_")
    todo = {"all": ["train", "fim", "infer", "score"],
            "compile": ["compile_fim", "compile_infer", "compile_train", "bf16"]
            }.get(args.what, [args.what])
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads", flush=True)
    rep = lambda d: args.repeats or d  # noqa: E731
    t0 = time.perf_counter()
    runs = {  # goal -> its benchmark with the default number of timed rounds
        "train": lambda: bench_train(rep(5)),
        "prefix": lambda: bench_prefix(rep(5)),
        "softmax": lambda: bench_softmax(rep(7)),
        "fim": lambda: bench_fim(rep(3), tuple(args.fim_cells), full=args.fim_full),
        "infer": lambda: bench_infer(rep(9)),
        "score": lambda: bench_score(rep(3), args.score_images),
        "compile_fim": lambda: bench_compile_fim(rep(7)),
        "compile_infer": lambda: bench_compile_infer(rep(9)),
        "compile_train": lambda: bench_compile_train(rep(5)),
        "bf16": lambda: bench_bf16(rep(5)),
    }
    for w in todo:
        t1 = time.perf_counter()
        runs[w]()
        print(f"  [{w}: {time.perf_counter() - t1:.0f} s]", flush=True)
    print_table()
    if WARMUP:
        print("\nwarm-up (first calls beyond steady state): "
              + ", ".join(f"{k} {v}" for k, v in WARMUP.items()))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s (of which {QUIET['waited']:.0f} s waiting "
          f"for other processes; {QUIET['busy_runs']} timed calls ran while the machine was "
          f"busy); load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
