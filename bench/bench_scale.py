"""What the stages cost at real scale: VOC (500 x 375) and COCO (640 x 480) geometry,
synthetic images (``datasets.synthetic``), the real backbones randomly initialised.

    python -m bench.bench_scale cpu   --out DIR    # every stage on this CPU (a few minutes)
    python -m bench.bench_scale pool  --out DIR    # seed stage: CRF pool throughput (a GPU box)
    python -m bench.bench_scale speed --out DIR    # infer_PCSS --crf, 1 vs 2 CRF workers

``cpu`` times, per geometry: DeiT-S CAMs (``cam_dict``) per image; PSA's CRF of the seeds
(alphas 1 and 12) per image; the seed stage with CRF as ``infer_PCSS.py --crf`` runs it
(network, then a ``WorkPool`` of 1 or 2 workers writing dict + crf/1 + crf/12) per image; the
bytes per image of ``dict/`` and ``crf/<alpha>/`` in both formats; AffinityNet (ResNet-38) and
DeepLabV2-R101 training steps (batch 1, crops 448 / 321) and inference (random walk; 5-scale
prediction); the segmentation CRF over all 21 / 81 labels and over the present ones (time,
pixel agreement). Each stage runs in a fresh process, whose peak resident memory is reported
(it includes torch itself, ~0.3-0.5 GB).

``pool`` runs the seed stage at VOC geometry on the default device (CUDA when there is one):
DeiT-S CAMs of a few dozen synthetic images, CRF dicts for alphas 1 and 12 (compact) in a
``WorkPool`` of 1, 4, 8, 16 workers (``--workers``), and reports images per second, and how
long the main process (the network) waited on a full queue; the network alone gives the rate
the CRF would have to keep up with. About 3 minutes on a 16-core GPU machine.

``speed`` runs ``infer_PCSS.py --crf --alphas 1 12`` as users do (a fresh process each time)
on ``--images`` synthetic VOC-size images with the toy network (cheap beside the CRF), with
``--crf_workers`` 1 and 2, and prints the wall times, the CPU seconds of the main process and
of its children per image, the start-up, whether both write the same bytes, and the wall
ratio measured and projected for 2 idle cores (``run_speed``). About 3 minutes for 48
images on 2 cores; ``--flags`` passes more options to the script (e.g. ``--num_workers 0``).

Each prints a table and writes ``bench_scale_<mode>.json`` to ``--out``.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import tempfile
import time

import numpy as np

from datasets.synthetic import CLASSES as SEED_CLASSES, GEOMETRY, synthetic_probs, synthetic_scene
from engine.run_folder import RunFolder


def _tensor(rgb):
    """The network input of an H x W x 3 uint8 image, as the inference scripts make it."""
    from PIL import Image

    from datasets.classification import build_transform
    return build_transform("infer")(Image.fromarray(rgb))


def _timed(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _label(C: int, classes=(3, 11)):
    import torch
    y = torch.zeros(C)
    y[list(classes)] = 1
    return y


def _seed_items(geo: str, n: int, folder: str):
    """n synthetic images as (image tensor, label, id) items, their PNGs in ``folder``."""
    from PIL import Image
    H, W = GEOMETRY[geo]
    items = []
    for i in range(n):
        rgb, _ = synthetic_scene(H, W, 2, seed=i)
        Image.fromarray(rgb).save(os.path.join(folder, f"img{i}.png"))
        items.append((_tensor(rgb), _label(SEED_CLASSES[geo]), f"img{i}"))
    return items


def _deit(geo: str, device):
    import torch
    from models import build_arch
    torch.manual_seed(0)
    return build_arch("deit_small", SEED_CLASSES[geo], drop_path_rate=0.0).to(device).eval()


def _image_path(folder: str, image_id: str) -> str:
    return os.path.join(folder, image_id + ".png")


def _seed_writer(out: str, geo: str, images: str):
    """``infer_PCSS.py --dict --crf --alphas 1 12``'s writer into ``out``."""
    from functools import partial

    from engine.run_folder import CRF_ALPHAS, alpha_name
    from engine.seeds import SeedWriter

    def folder(kind, alpha=None):
        return os.path.join(out, kind, *([] if alpha is None else [alpha_name(alpha)]))
    return SeedWriter.plan(folder, dict=True, crf_alphas=CRF_ALPHAS, threshold=0.45,
                           class_names=[str(k) for k in range(SEED_CLASSES[geo])],
                           image_path=partial(_image_path, images))


# ----------------------------------------------------------------------------- CPU stages
def stage_seed_network(geo):
    import torch
    from wsss.cam import cam_dict
    net = _deit(geo, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as d, torch.no_grad():
        x, y, _ = _seed_items(geo, 1, d)[0]
        return {"s_per_image": _timed(lambda: cam_dict(net, x[None], y), 2)}


def stage_seed_crf_and_bytes(geo):
    from wsss.pseudo import crf_score_dict
    from wsss.scorefile import CAM_SCALE, CRF_SCALE, encode_score_dict
    H, W = GEOMETRY[geo]
    out = {"crf_s_per_image_2_alphas": 0.0, "bytes": {}}
    sizes = {k: [] for k in ("dict_psa", "dict_compact", "crf_psa", "crf_compact")}
    for seed in range(3):
        rgb, cams = synthetic_scene(H, W, 2, seed=seed)
        d = {3: cams[0], 11: cams[1]}
        buf = io.BytesIO()
        np.save(buf, d)
        sizes["dict_psa"].append(len(buf.getvalue()))
        sizes["dict_compact"].append(len(encode_score_dict(d, CAM_SCALE)))
        for alpha in (1.0, 12.0):
            t = time.perf_counter()
            q = crf_score_dict(rgb, d, alpha)
            out["crf_s_per_image_2_alphas"] += (time.perf_counter() - t) / 3
            buf = io.BytesIO()
            np.save(buf, q)
            sizes["crf_psa"].append(len(buf.getvalue()))
            sizes["crf_compact"].append(len(encode_score_dict(q, CRF_SCALE, dither=True)))
    out["bytes"] = {k: float(np.mean(v)) for k, v in sizes.items()}
    out["crf_ratio"] = out["bytes"]["crf_psa"] / out["bytes"]["crf_compact"]
    out["crf_ratio_worst"] = float(min(np.array(sizes["crf_psa"]) / np.array(sizes["crf_compact"])))
    return out


def _seed_stage(geo, device, workers, items, images, out, net):
    import torch
    from engine.seeds import generate_seeds
    from engine.pool import WorkPool
    writer = _seed_writer(out, geo, images)
    for d in writer.folders.values():
        os.makedirs(d, exist_ok=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    with WorkPool(workers) as pool:
        generate_seeds(net, [(x, y, i) for x, y, i in items], device, pool.submit_to(writer),
                       progress=False)
        blocked = pool.blocked_s
    sync()
    return time.perf_counter() - start, blocked


def stage_seed_pool(geo, workers):
    import torch
    from engine.pool import limit_torch_threads
    device = torch.device("cpu")
    limit_torch_threads(workers, "cpu")
    with tempfile.TemporaryDirectory() as d:
        items = _seed_items(geo, 3, d)
        net = _deit(geo, device)
        wall, blocked = _seed_stage(geo, device, workers, items, d, os.path.join(d, "out"),
                                    net)
    return {"workers": workers, "s_per_image": wall / len(items),
            "network_waited_s_per_image": blocked / len(items)}


def _train_step(geo, net, loss, what):
    """Seconds of one SGD step on ``loss()``, measured at the first geometry only (training
    crops are the same size whatever the images'); leaves ``net`` in eval mode."""
    import torch
    out = {}
    if geo == next(iter(GEOMETRY)):
        opt = torch.optim.SGD(net.parameters(), lr=1e-6)

        def step():
            opt.zero_grad()
            loss().backward()
            opt.step()
        out[f"train_s_per_step_{what}"] = _timed(step, 1, warmup=False)
    net.eval()
    return out


def stage_affinity(geo):
    import torch
    from engine.refine import random_walk_masks
    from models.registry import build_affinity_net
    from wsss.scorefile import save_cam_dict
    torch.manual_seed(0)
    net, _ = build_affinity_net("resnet38", 5, None)
    x = torch.randn(1, 3, 448, 448)
    out = _train_step(geo, net, lambda: net(x).float().mean(), "batch1_crop448")
    H, W = GEOMETRY[geo]
    rgb, cams = synthetic_scene(H, W, 2, seed=0)
    with tempfile.TemporaryDirectory() as d:
        save_cam_dict(os.path.join(d, "img0.npy"), {3: cams[0], 11: cams[1]})
        loader = [(_tensor(rgb), None, "img0")]
        out["walk_s_per_image"] = _timed(lambda: random_walk_masks(
            net, loader, d, lambda i, lab: None, torch.device("cpu"), progress=False), 1,
            warmup=False)
    return out


def stage_segmentation(geo):
    import torch
    from models.registry import build_segmentation_net
    from wsss.segmentation import seg_loss, seg_predict
    K = SEED_CLASSES[geo] + 1
    torch.manual_seed(0)
    net, _ = build_segmentation_net("deeplabv2_r101", K, None)
    x = torch.randn(1, 3, 321, 321)
    target = torch.randint(0, K, (1, 321, 321))
    out = _train_step(geo, net, lambda: seg_loss(net(x), target), "batch1_crop321")
    H, W = GEOMETRY[geo]
    rgb, _ = synthetic_scene(H, W, 2, seed=0)
    with torch.no_grad():
        out["predict_s_per_image_5_scales"] = _timed(
            lambda: seg_predict(net, _tensor(rgb)[None]), 1, warmup=False)
    return out


def stage_seg_crf(geo):
    from engine.segment import present_classes
    from wsss.crf import dense_crf
    H, W = GEOMETRY[geo]
    K = SEED_CLASSES[geo] + 1
    res = {"all_s": [], "present_s": [], "agreement": []}
    for seed in range(2):
        rgb, _ = synthetic_scene(H, W, 2, seed=seed)
        probs = synthetic_probs(H, W, K, seed=seed)
        t = time.perf_counter()
        full = np.argmax(dense_crf(rgb, probs, kind="seg"), 0)
        res["all_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        classes = present_classes(probs)
        part = classes[np.argmax(dense_crf(rgb, np.ascontiguousarray(probs[classes]),
                                           kind="seg"), 0)]
        res["present_s"].append(time.perf_counter() - t)
        res["agreement"].append(float((full == part).mean()))
    return {"labels": K, "all_s_per_image": float(np.mean(res["all_s"])),
            "present_s_per_image": float(np.mean(res["present_s"])),
            "present_pixel_agreement_min": min(res["agreement"])}


CPU_STAGES = {
    "seed_network": stage_seed_network,
    "seed_crf_bytes": stage_seed_crf_and_bytes,
    "seed_pool_1": lambda geo: stage_seed_pool(geo, 1),
    "seed_pool_2": lambda geo: stage_seed_pool(geo, 2),
    "affinity": stage_affinity,
    "segmentation": stage_segmentation,
    "seg_crf": stage_seg_crf,
}


def _child(name, geo, conn):
    result = CPU_STAGES[name](geo)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send(result)


def run_cpu(stages, geos):
    ctx = multiprocessing.get_context("spawn")     # a fresh process: its own peak memory
    results = {}
    for geo in geos:
        for name in stages:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(name, geo, child))
            start = time.perf_counter()
            p.start()
            r = parent.recv()
            p.join()
            r["stage_wall_s"] = time.perf_counter() - start
            results[f"{geo}/{name}"] = r
            print(f"{geo:4s} {name:15s} " + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in r.items() if k != "bytes")
                  + (f", bytes {r['bytes']}" if "bytes" in r else ""), flush=True)
    return results


# ----------------------------------------------------------------------------- GPU pool
def run_pool(workers, images_per_worker, device_name):
    import torch
    from wsss.cam import cam_dict
    from wsss.crf import crf_available
    from utils.runtime import resolve_device
    if not crf_available():
        raise SystemExit("pool mode needs pydensecrf2 (pip install pydensecrf2; where no wheel "
                         "fits, pip install --no-build-isolation its source with Cython and a "
                         "C++ compiler present)")
    device = resolve_device(device_name)
    geo = "VOC"
    n_max = max(4, images_per_worker * max(workers))
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        items = _seed_items(geo, n_max, d)
        net = _deit(geo, device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        with torch.no_grad():
            cam_dict(net, items[0][0][None].to(device), items[0][1])     # warm-up
            sync()
            start = time.perf_counter()
            for x, y, _ in items:
                cam_dict(net, x[None].to(device), y)
            sync()
        rows["network_only"] = {"images": len(items),
                                "img_per_s": len(items) / (time.perf_counter() - start)}
        print(f"network alone: {rows['network_only']['img_per_s']:.1f} img/s", flush=True)
        for n in workers:
            count = max(4, images_per_worker * n)
            wall, blocked = _seed_stage(geo, device, n, items[:count], d,
                                        os.path.join(d, f"w{n}"), net)
            rows[f"workers_{n}"] = {"workers": n, "images": count, "img_per_s": count / wall,
                                    "network_waited_s": blocked,
                                    "network_waited_fraction": blocked / wall}
            print(f"--crf_workers {n:2d}: {count / wall:.2f} img/s, network waited "
                  f"{blocked:.1f} of {wall:.1f} s", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nseed stage at VOC size, DeiT-S on {name}, {os.cpu_count()} cores; CRF dicts for "
          f"alphas 1 and 12 (compact). Network alone: "
          f"{rows['network_only']['img_per_s']:.1f} img/s\n\n"
          "| --crf_workers | images | img/s | network waited on the full queue |\n|---|---|---|---|")
    for r in rows.values():
        if "workers" in r:
            print(f"| {r['workers']} | {r['images']} | {r['img_per_s']:.2f} | "
                  f"{r['network_waited_s']:.1f} s ({100 * r['network_waited_fraction']:.0f}%) |")
    return {"device": name, "cores": os.cpu_count(), **rows}


# ----------------------------------------------------------------------------- CRF workers
_RUSAGE = ("import atexit, json, resource, runpy, sys\n"
           "def _cpu(who):\n"
           "    r = resource.getrusage(who)\n"
           "    return r.ru_utime + r.ru_stime\n"
           "atexit.register(lambda: sys.stderr.write('BENCH_CPU ' + json.dumps(["
           "_cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)]) + '\\n'))\n"
           "sys.argv = [{script!r}] + {args!r}\n"
           "sys.path.insert(0, {root!r})\n"
           "runpy.run_path({script!r}, run_name='__main__')\n")


def _speed_data(folder: str, n: int, geo: str = "VOC") -> None:
    """A TOY-layout set of n synthetic images at ``geo`` size (2 of the 4 toy classes each)
    and randomly initialised toy-network weights ``folder/w.pth``."""
    import torch
    from PIL import Image

    from datasets.labels import save_label_dict, write_id_list
    from datasets.layout import TOY_CLASSES, layout
    from models import build_arch
    H, W = GEOMETRY[geo]
    os.makedirs(os.path.join(folder, "data", "JPEGImages"))
    lay = layout("TOY", os.path.join(folder, "data"))
    ids, labels = [f"img{i:03d}" for i in range(n)], {}
    for i, image_id in enumerate(ids):
        rgb, _ = synthetic_scene(H, W, 2, seed=i)
        Image.fromarray(rgb).save(lay.image_path(image_id), quality=90)
        y = np.zeros(len(TOY_CLASSES), np.float32)
        y[[i % 4, (i + 1) % 4]] = 1
        labels[image_id] = y
    write_id_list(lay.train_list, ids)
    write_id_list(lay.val_list, ids)         # the TOY inference list
    save_label_dict(lay.label_file, labels)
    torch.manual_seed(0)
    torch.save(build_arch("toy", len(TOY_CLASSES), img_size=96, drop_path_rate=0.0)
               .state_dict(), os.path.join(folder, "w.pth"))


def _infer_run(folder: str, name: str, flags) -> dict:
    """``infer_PCSS.py`` in ``folder`` (a fresh process): wall seconds, CPU seconds
    (user + sys) of the main process and of its children (loader and CRF workers)."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "infer_PCSS.py")
    args = ["--name", name, "--data-set", "TOY", "--data-path", "data", "--arch", "toy",
            "--device", "cpu", "--load_pretrained", "w.pth", *flags]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUSAGE.format(script=script, args=args, root=root)],
                          cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"infer_PCSS.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stderr.splitlines() if x.startswith("BENCH_CPU "))
    main_cpu, children_cpu = json.loads(line[len("BENCH_CPU "):])
    return {"wall_s": wall, "main_cpu_s": main_cpu, "children_cpu_s": children_cpu}


def _tree(folder: str) -> dict:
    root = os.path.join(folder)
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "manifest.json":
                path = os.path.join(dirpath, f)
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, root)] = fh.read()
    return out


def run_speed(images: int, rounds: int, flags) -> dict:
    """``infer_PCSS.py --crf --alphas 1 12`` on ``images`` synthetic VOC-size images with
    the toy network, ``--crf_workers`` 1 and 2 alternately (``rounds`` times each, plus one
    run of each over a single image): wall seconds, CPU seconds (user + sys) of the main
    process and of its children (loader and CRF workers), whether both worker counts write
    the same bytes, and the wall ratio 1 / 2 workers, measured and projected for 2 idle
    cores from the CPU seconds alone (what a shared machine can still measure):

    - per image, main ``m`` and children ``c``: the difference of the full and the
      single-image runs over ``images - 1``; the start-up ``S`` (imports, network, pool):
      the single-image run's main CPU less ``m``;
    - with 1 worker the CRF worker is the bottleneck (the network is cheap beside it),
      ``S + n max(c, m)``; with 2, both cores are busy, ``S + n max(m, (m + c) / 2)``.
    """
    from wsss.crf import crf_available
    if not crf_available():
        raise SystemExit("speed mode needs pydensecrf2")
    rows = {1: [], 2: []}
    crf = ["--crf", "--alphas", "1", "12"]
    with tempfile.TemporaryDirectory() as d:
        _speed_data(d, images)
        with open(os.path.join(d, "one.txt"), "w") as f:
            f.write("img000\n")
        single = {n: _infer_run(d, f"single{n}", crf + ["--crf_workers", str(n),
                                                        "--val_list", "one.txt", *flags])
                  for n in (1, 2)}
        trees = {}
        for r in range(rounds):
            for n in (1, 2):
                name = f"w{n}_{r}"
                res = _infer_run(d, name, crf + ["--crf_workers", str(n), *flags])
                rows[n].append(res)
                trees[n] = _tree(RunFolder(name, d).dir)
                print(f"--crf_workers {n}: wall {res['wall_s']:.2f} s, CPU main "
                      f"{res['main_cpu_s']:.2f} s + children {res['children_cpu_s']:.2f} s",
                      flush=True)
        same = trees[1] == trees[2] and len(trees[1]) == 2 * images
    med = {n: {k: float(np.median([x[k] for x in v])) for k in v[0]} for n, v in rows.items()}
    per, projected = {}, {}
    for n in (1, 2):
        m = (med[n]["main_cpu_s"] - single[n]["main_cpu_s"]) / (images - 1)
        c = (med[n]["children_cpu_s"] - single[n]["children_cpu_s"]) / (images - 1)
        S = single[n]["main_cpu_s"] - m
        per[n] = {"wall_s": med[n]["wall_s"] / images, "main_cpu_s": m, "children_cpu_s": c,
                  "startup_cpu_s": S}
        projected[n] = S + images * (max(c, m) if n == 1 else max(m, (m + c) / 2))
    out = {"images": images, "rounds": rounds, "flags": list(flags), "same_outputs": same,
           "runs": {f"workers_{n}": v for n, v in med.items()},
           "per_image": {f"workers_{n}": v for n, v in per.items()},
           "wall_ratio": med[1]["wall_s"] / med[2]["wall_s"],
           "projected_wall_s": {f"workers_{n}": v for n, v in projected.items()},
           "projected_2core_ratio": projected[1] / projected[2]}
    print(f"\n{images} VOC-size images, --arch toy, --crf --alphas 1 12 "
          f"{' '.join(flags)}; medians of {rounds} runs:\n\n"
          "| --crf_workers | wall s | CPU s per image: main | children (loader + CRF) | "
          "start-up CPU s | projected wall s, 2 idle cores |\n|---|---|---|---|---|---|")
    for n, v in per.items():
        print(f"| {n} | {med[n]['wall_s']:.1f} | {v['main_cpu_s']:.3f} | "
              f"{v['children_cpu_s']:.3f} | {v['startup_cpu_s']:.2f} | {projected[n]:.1f} |")
    print(f"\nwall ratio 1 / 2 workers: {out['wall_ratio']:.2f}x measured, "
          f"{out['projected_2core_ratio']:.2f}x projected; same outputs: {same}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("cpu", "pool", "speed"))
    ap.add_argument("--out", required=True, help="folder for bench_scale_<mode>.json")
    ap.add_argument("--geos", nargs="+", choices=tuple(GEOMETRY), default=list(GEOMETRY))
    ap.add_argument("--stages", nargs="+", choices=tuple(CPU_STAGES), default=list(CPU_STAGES))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--images_per_worker", type=int, default=8,
                    help="pool mode: images timed per worker (at least 4 in all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=24, help="speed mode: images per run")
    ap.add_argument("--rounds", type=int, default=2,
                    help="speed mode: runs per worker count (alternating; medians)")
    ap.add_argument("--flags", nargs=argparse.REMAINDER, default=[],
                    help="speed mode: further infer_PCSS.py flags (last on the line)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "cpu":
        res = run_cpu(args.stages, args.geos)
    elif args.mode == "pool":
        res = run_pool(args.workers, args.images_per_worker, args.device)
    else:
        res = run_speed(args.images, args.rounds, args.flags)
    path = os.path.join(args.out, f"bench_scale_{args.mode}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
