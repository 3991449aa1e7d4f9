"""Training-step throughput on a GPU: the PCSS step of DeiT-S (20 classes, batch 64 at 224,
epoch 3 so FSS and MPC are both on, drop path 0.1, fused AdamW), eager and compiled
(``models.compile_network``), float32 and bf16 autocast (bench/README.md, the GPU table).

    python -m bench.bench_gpu                     # batch 64, 20 timed steps per variant
    python -m bench.bench_gpu --batch 32 --steps 10

Every variant starts from the same weights and data. The first step is timed apart as the
warm-up (compilation included), and its loss is checked against eager float32 at the same
seed, so the drop-path masks are the same. The timed steps run after a synchronize, and
the table gives the median of ``--rounds`` rounds of ``--steps`` steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from models import build_model, compile_network, pcss_losses
from utils.runtime import autocast_context, resolve_device
from utils.schedule import make_adamw, param_groups


def make_batch(B: int, C: int, S: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, S, S, generator=g)
    y = torch.zeros(B, C)
    for b in range(B):
        y[b, torch.randperm(C, generator=g)[:int(torch.randint(1, 4, (1,), generator=g))]] = 1
    masks = torch.rand(C, S, S, generator=g)
    perm = torch.randperm(B, generator=g)
    return [t.to(device) for t in (x, y, masks, perm)]


def variant(device, batch, compiled: bool, amp: str, steps: int, rounds: int):
    torch.manual_seed(0)
    net = build_model(num_classes=20).to(device).train()
    model = compile_network(net) if compiled else net
    opt = make_adamw(param_groups(net, 0.05, net.no_weight_decay()), lr=6.25e-5)
    x, y, masks, perm = batch

    def step(seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            L = pcss_losses(model, x, y, 3, masks, perm, 2.0, 2.0, 7, 0.3)
        L["total"].backward()
        opt.step()
        return L["total"].detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    first_loss = float(step(seed=123))
    sync()
    first = time.perf_counter() - t0
    for _ in range(2):                       # drop-path draws of other sizes, then steady
        step()
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return first_loss, first, statistics.median(times), mem


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False      # float32 means float32
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; DeiT-S, batch {args.batch} at "
          f"{args.size}, FSS + MPC, fused AdamW; median of {args.rounds} x {args.steps} steps")
    batch = make_batch(args.batch, 20, args.size, device)
    rows, base = [], {}
    for amp in ("none", "bf16"):
        for compiled in (False, True):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            loss, first, t, mem = variant(device, batch, compiled, amp, args.steps, args.rounds)
            base.setdefault(amp, (loss, t))
            ref_loss = base["none"][0]
            rows.append((("compiled" if compiled else "eager"), amp, first, t,
                         args.batch / t, base[amp][1] / t, abs(loss - ref_loss) / abs(ref_loss),
                         mem))
            print(f"  {rows[-1][0]:8s} {amp:4s}: {t * 1e3:.1f} ms/step, {args.batch / t:.0f} "
                  f"img/s, first step {first:.1f} s, loss {loss:.6f}", flush=True)
    print("\n| variant | autocast | step | img/s | vs eager, same precision | first step | "
          "loss vs eager fp32 (rel) | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for v, amp, first, t, ips, speed, rel, mem in rows:
        print(f"| {v} | {'fp32' if amp == 'none' else amp} | {t * 1e3:.1f} ms | {ips:.0f} | "
              f"{speed:.2f}x | {first:.1f} s | {rel:.1e} | {mem:.1f} GiB |")


if __name__ == "__main__":
    main()
