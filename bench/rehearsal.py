"""``make rehearsal``: the README's VOC commands, as printed, at VOC geometry on a CPU.

It builds a VOC2012-shaped synthetic folder at the default path ``data/VOC2012`` of a fresh
working folder (real VOC image sizes, 20 classes, ``Annotations/`` XML, palette masks with
255 borders, SBD's ``SegmentationClassAug/``, train / val / test lists:
``datasets.voc_like``), writes randomly initialised weight files in the layouts users
download into its ``pretrained/`` (DeiT-S ``{'model': ...}``, PSA's ``res38_cls.pth``,
torchvision's ResNet-50 / ResNet-101, the authors' released PCSS state dict), then runs
every ``python ...`` line of README.md's VOC blocks in the README's order, read from
README.md itself, so the two cannot drift apart. Only the training length is reduced
(epochs, batch size; ``--load_epo 59`` becomes the epoch trained here) and the lists are
short; each change is printed with the command. Multi-process (``torchrun``) and COCO lines
are left out. Every stage runs the real networks (DeiT-S, ResNet-38, ResNet-50,
DeepLabV2-ResNet-101) on the real image sizes, so shapes, file layouts, folder rules and
messages are those of a VOC run; the numbers it scores are meaningless (random weights).

Per command it prints the wall time per image or training step, the peak memory (resident
set of the process) and the bytes written per image, and a table at the end.

    python -m bench.rehearsal                      # ~10 minutes on 2 CPU cores
    python -m bench.rehearsal --quick              # the test's form: one image per split at
                                                   # half the VOC sizes, one net per stage
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

from engine.run_folder import RunFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC = "data/VOC2012"
SPLITS = {"train": 1, "aug": 2, "val": 1, "test": 1}
QUICK_SPLITS = {"train": 1, "aug": 1, "val": 1, "test": 1}
QUICK_SCALE = 0.5      # --quick: images at half the VOC sizes (250x188, 188x250, ...)
# the reductions: training length only (flag -> value), per script
REDUCE = {"train_PCSS.py": {"--epochs": "1", "--batch_size": "2"},
          "train_aff.py": {"--max_epoches": "1", "--batch_size": "1"},
          "train_seg.py": {"--num_epochs": "1", "--batch_size": "1"}}
# README lines of other datasets or several processes
SKIP = ("COCO", "torchrun", "pipeline.py")
# --quick: the lines of the second network of each stage are left out
QUICK_SKIP = ("deeplabv2_r101", "resnet50", "--recipe psa", "--resume")


def readme_voc_commands(readme: str) -> List[str]:
    """The ``python ...`` lines of README.md's bash blocks, in order, without the COCO and
    multi-process ones (comments stripped)."""
    with open(readme) as f:
        text = f.read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python ") and not any(s in line for s in SKIP):
                out.append(line)
    return out


def reduce_command(words: List[str], epochs: int) -> Tuple[List[str], List[str]]:
    """``words`` with the training length reduced: ``REDUCE``'s flags appended (a resumed
    ``train_PCSS.py`` one epoch longer), ``--load_epo 59`` -> the epoch trained here (0).
    Returns the new words and the changes, as text."""
    script = os.path.basename(words[1]) if len(words) > 1 else ""
    words, changes = list(words), []
    if "--load_epo" in words:
        i = words.index("--load_epo") + 1
        changes.append(f"--load_epo {words[i]} -> 0")
        words[i] = "0"
    for flag, value in REDUCE.get(script, {}).items():
        if flag == "--epochs" and "--resume" in words:
            value = str(epochs + 1)
        words += [flag, value]
        changes.append(f"{flag} {value}")
    return words, changes


def units(words: List[str], lists: Dict[str, int]) -> Tuple[int, str]:
    """(how many, "image" / "step") a command processes, from the list it reads and, for
    training, its epochs and batch size."""
    script = os.path.basename(words[1]) if words[1] != "-m" else words[2]
    value = lambda flag, default=None: (words[words.index(flag) + 1]    # noqa: E731
                                        if flag in words else default)
    def count(path, default):
        if path is None:
            return lists[default]
        name = os.path.splitext(os.path.basename(path))[0]
        return lists.get(name, lists[default])
    if script.startswith("train_"):
        n = lists["train_aug"]
        epochs = int(value("--epochs") or value("--max_epoches") or value("--num_epochs") or 1)
        batch = int(value("--batch_size", "1"))
        return max(1, n // batch) * epochs, "step"
    if script == "infer_seg.py":
        return (lists["test"] if value("--split") == "test" else lists["val"]), "image"
    if script == "infer_PCSS.py":
        return count(value("--val_list"), "train_aug"), "image"
    if script == "infer_aff.py":
        return count(value("--infer_list"), "train_aug"), "image"
    if script == "evaluation.py":
        return count(value("--list"), "train"), "image"
    return lists["train_aug"] + lists["val"], "image"


def snapshot(path: str) -> Dict[str, Tuple[int, int]]:
    """``{file: (size, mtime in ns)}`` under ``path``."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def bytes_written(before: Dict[str, Tuple[int, int]], after: Dict[str, Tuple[int, int]]) -> int:
    """The size of the files new or rewritten between two ``snapshot``s."""
    return sum(size for f, (size, t) in after.items() if before.get(f, (None, None))[1] != t)


def run_command(words: List[str], cwd: str) -> Tuple[int, float, float, str]:
    """Run ``python <script> ...`` (a script of this repository) in ``cwd``; returns (exit
    code, seconds, peak resident memory in MB, the last lines of its output)."""
    prog = (["-m", words[2]] + words[3:] if words[1] == "-m"
            else [os.path.join(ROOT, words[1])] + words[2:])
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, *prog], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - t0, usage.ru_maxrss / 1024, out


def _calibrated(net, stem: Callable[[object], object]):
    """``net`` (random weights) with the running statistics of its frozen batch norms set by
    one forward pass of noise through ``stem`` and their affine parameters halved: what a
    pretrained file provides. Left at 0 / 1, a deep random trunk's activations overflow; at
    full scale it diverges within steps at the reference learning rates."""
    import torch

    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = None          # a plain average over the pass
        m.reset_running_stats()
    net.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        stem(torch.randn(1, 3, 160, 160))
        for m in bns:
            m.weight.mul_(0.5)
            m.bias.mul_(0.5)
    return net.eval()


def write_weights(pretrained: str) -> Dict[str, int]:
    """Randomly initialised weight files in the layouts users download (the networks'
    batch norms ``_calibrated``); returns their sizes."""
    import torch
    import torchvision

    from models import build_arch
    from models.resnet38 import build_resnet38_seg, head_keys

    os.makedirs(pretrained, exist_ok=True)
    torch.manual_seed(0)
    files = {}
    deit = {k: v for k, v in build_arch("deit_small", 1, 224).state_dict().items()
            if not k.startswith("head.")}
    head = torch.nn.Linear(384, 1000)
    deit.update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    files["deit_small_patch16_224-cd65a155.pth"] = {"model": deit}
    files["eccv24_pcss_wsss_69.5_pascal.pth"] = build_arch("deit_small", 20, 224).state_dict()
    net = build_resnet38_seg(21)
    _calibrated(net, net.features)
    skip = set(head_keys(net))
    cls = {k: v for k, v in net.state_dict().items()
           if k not in skip and not k.endswith("num_batches_tracked")}
    cls["fc8.weight"] = torch.randn(20, 4096, 1, 1) * 0.01
    files["res38_cls.pth"] = cls
    for name, build in (("resnet50-0676ba61.pth", torchvision.models.resnet50),
                        ("resnet101-63fe2227.pth", torchvision.models.resnet101)):
        trunk = build()
        files[name] = _calibrated(trunk, trunk).state_dict()
    sizes = {}
    for name, state in files.items():
        path = os.path.join(pretrained, name)
        torch.save(state, path)
        sizes[name] = os.path.getsize(path)
    return sizes


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Rehearse the README's VOC commands on a synthetic VOC folder",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", default=RunFolder("rehearsal", ROOT).dir,
                   help="working folder (emptied first): data/VOC2012, pretrained/, experiment/")
    p.add_argument("--quick", action="store_true",
                   help="the test's form: one image per split at half the VOC sizes, one "
                        "network per stage")
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--setup-only", action="store_true",
                   help="only write the folder and the weights into --work (what the "
                        "rehearsal runs first, in a process of its own, so that its own memory "
                        "does not count in the commands' peaks)")
    return p


def setup(work: str, quick: bool) -> None:
    """The synthetic VOC folder and the weight files in ``work``."""
    from datasets.voc_like import make_voc_like

    ids = make_voc_like(os.path.join(work, VOC), QUICK_SPLITS if quick else SPLITS,
                        scale=QUICK_SCALE if quick else 1.0)
    sizes = write_weights(os.path.join(work, "pretrained"))
    print(f"{VOC}: " + ", ".join(f"{k} {len(v)}" for k, v in ids.items()) + " images at VOC "
          f"sizes; weights " + ", ".join(f"{k} ({v / 2**20:.0f} MB)" for k, v in sizes.items()))


def main(args) -> List[dict]:
    """Build the folder and the weights (in a process of their own), run the commands, print
    the table. Returns one record per command; exits naming the failing command."""
    t_start = time.time()
    if args.setup_only:
        return setup(args.work, args.quick)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    print(f"rehearsal in {args.work}", flush=True)
    code, seconds, _, out = run_command(
        ["python", "-m", "bench.rehearsal", "--setup-only", "--work", args.work]
        + (["--quick"] if args.quick else []), ROOT)
    print(out.strip().splitlines()[-1] if code == 0 else out, flush=True)
    if code != 0:
        sys.exit(f"rehearsal: the setup failed (exit {code})")
    splits = QUICK_SPLITS if args.quick else SPLITS
    lists = {"train": splits["train"], "train_aug": splits["train"] + splits["aug"],
             "val": splits["val"], "test": splits["test"]}
    commands = readme_voc_commands(args.readme)
    if args.quick:
        commands = [c for c in commands if not any(s in c for s in QUICK_SKIP)]
    records = []
    for line in commands:
        words, changes = reduce_command(shlex.split(line), int(REDUCE["train_PCSS.py"]["--epochs"]))
        shown = " ".join(shlex.quote(w) for w in words)
        print(f"\n$ {shown}" + (f"    # reduced: {', '.join(changes)}" if changes else ""),
              flush=True)
        before = snapshot(args.work)
        code, seconds, peak_mb, out = run_command(words, args.work)
        written = bytes_written(before, snapshot(args.work))
        n, unit = units(words, lists)
        tail = "\n".join(out.strip().splitlines()[-3:])
        print(tail, flush=True)
        rec = {"command": shown, "seconds": round(seconds, 1), "unit": unit, "count": n,
               "per_unit": round(seconds / n, 2), "peak_mb": round(peak_mb),
               "bytes_per_image": (written // n if unit == "image" else written)}
        records.append(rec)
        if code != 0:
            print(out[-4000:], file=sys.stderr)
            sys.exit(f"rehearsal: `{line}` failed (exit {code}); its output is above")
    print(f"\n{'s/unit':>8} {'unit':>5} {'peak MB':>8} {'written':>12}  command")
    for r in records:
        what = "B/image" if r["unit"] == "image" else "B total"
        print(f"{r['per_unit']:8.2f} {r['unit']:>5} {r['peak_mb']:8d} "
              f"{r['bytes_per_image']:>12,} {what}  {r['command'][:90]}")
    print(f"\n{len(records)} README commands ran as printed (training shortened) in "
          f"{time.time() - t_start:.0f} s on {os.cpu_count()} CPU cores")
    return records


if __name__ == "__main__":
    main(get_args_parser().parse_args())
