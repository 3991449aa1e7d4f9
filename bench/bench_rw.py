"""Speed of the random walk: the reference's dense squarings against the
project's sparse products, at VOC size, plus AffinityNet training throughput.

    python bench/bench_rw.py [--repeats N] [--size H W] [--channels C] [--train]

The walk: a 500 x 375 image (63 x 47 grid, N = 2,961), radius 5 (K = 34), beta 8, logt 6,
background + 2 classes (the VOC average), float32. The reference builds the dense N x N
matrix, powers it, normalises its columns and squares it 6 times (about 3e11 flops);
``random_walk(..., method="sparse")`` does 64 sparse products instead. Both are timed from
the K x P affinities to the maps (the sparse side includes building its sparse matrix), and
their maps compared (relative error, label agreement) before timing. ``--train`` times
AffinityNet training steps (toy and ResNet-38 backbones, batch 8) on random crops.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from wsss.affinity import (affinity_labels, affinity_loss, dense_affinity,  # noqa: E402
                            pair_offsets, random_walk, sparse_affinity)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def med(ts):
    return sorted(ts)[len(ts) // 2]


def bench_walk(H: int, W: int, channels: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    h, w, r = -(-H // 8), -(-W // 8), 5
    aff = torch.rand(len(pair_offsets(r)), (h - r + 1) * (w - 2 * r + 2), generator=g)
    scores = torch.rand(channels, H, W, generator=g)

    def squaring():
        return random_walk(scores, dense_affinity(aff, h, w, r), beta=8, logt=6,
                           method="squaring")

    def sparse():
        return random_walk(scores, sparse_affinity(aff, h, w, r), beta=8, logt=6,
                           method="sparse")

    a, b = squaring(), sparse()
    rel = float((a - b).norm() / a.norm())
    same = float((a.argmax(0) == b.argmax(0)).float().mean())
    print(f"walk {H}x{W} (N = {h * w}), {channels} channels: relative map error "
          f"{rel:.1e}, labels equal on {100 * same:.4f}% of pixels (both float32)")
    # which of the two float32 walks rounds the near-ties differently: both against the
    # float64 walk (where the two methods agree to ~1e-15 and their labels are identical)
    a64 = random_walk(scores.double(), dense_affinity(aff.double(), h, w, r), beta=8, logt=6,
                      method="squaring")
    b64 = random_walk(scores.double(), sparse_affinity(aff.double(), h, w, r), beta=8,
                      logt=6, method="sparse")
    truth = a64.argmax(0)
    print(f"  float64: relative map error {float((a64 - b64).norm() / a64.norm()):.1e}, "
          f"labels equal on {100 * float((truth == b64.argmax(0)).float().mean()):.4f}%; "
          f"float32 labels against them: squaring "
          f"{100 * float((truth == a.argmax(0)).float().mean()):.4f}%, sparse "
          f"{100 * float((truth == b.argmax(0)).float().mean()):.4f}%")
    ts = {"squaring": [], "sparse": []}
    for _ in range(repeats):
        for name, fn in (("squaring", squaring), ("sparse", sparse)):
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    sq, sp = med(ts["squaring"]), med(ts["sparse"])
    print(f"  reference squarings {sq:.3f} s, sparse products {sp * 1e3:.1f} ms: "
          f"{sq / sp:.0f}x (medians of {repeats})")


def bench_train(repeats: int) -> None:
    from models.backbones import ToyAff
    from models.resnet38 import build_resnet38_aff
    from utils.optim import PolySGD

    for name, make, S in (("toy", lambda: ToyAff(5), 96),
                          ("resnet38", lambda: build_resnet38_aff(5), 448)):
        torch.manual_seed(0)
        net = make()
        net.train()
        opt = PolySGD(net.param_groups(0.01, 5e-4), 1000, momentum=5e-4)
        x = torch.randn(8, 3, S, S)
        y = torch.randint(0, 3, (8, S // net.stride, S // net.stride))
        labels = affinity_labels(y, 5)
        ts = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            L = affinity_loss(net(x), *labels)
            opt.zero_grad()
            L["total"].backward()
            opt.step()
            if i:
                ts.append(time.perf_counter() - t0)
        print(f"AffinityNet {name}, batch 8 at {S}: {med(ts):.2f} s/step = "
              f"{8 / med(ts):.1f} img/s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also time AffinityNet training")
    args = ap.parse_args(argv)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    bench_walk(*args.size, args.channels, args.repeats)
    if args.train:
        bench_train(max(2, args.repeats // 2))


if __name__ == "__main__":
    main()
