"""Run logs (DINO's habit): the git revision and sorted arguments at the top of a text log,
one JSON line of metrics per epoch in ``log.txt``, TensorBoard scalars beside them.
Only the main process writes (``enabled=False`` elsewhere)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, Optional


def git_revision(cwd: Optional[str] = None) -> str:
    """``<sha>`` (+ ``-dirty`` with uncommitted changes), or ``unknown`` outside git."""
    cwd = cwd or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if sha and dirty else "")


class RunLog:
    def __init__(self, out_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.out_dir = out_dir
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except ImportError:
                self.text("tensorboard is not installed: no TensorBoard events "
                          "(pip install tensorboard)")

    def text(self, msg: str) -> None:
        """Print and append to ``train.log`` (main process only)."""
        if not self.enabled:
            return
        print(msg, flush=True)
        with open(os.path.join(self.out_dir, "train.log"), "a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}\n")

    def header(self, args: Dict) -> None:
        self.text(f"git revision: {git_revision()}")
        self.text("command: " + " ".join(sys.argv))
        self.text("arguments:\n" + "\n".join(f"  {k}: {args[k]}" for k in sorted(args)))

    def epoch(self, stats: Dict) -> None:
        """One JSON line in ``log.txt``, the same line (``epoch {...}``) in ``train.log`` and
        on screen, and TensorBoard scalars."""
        if not self.enabled:
            return
        self.text("epoch " + json.dumps(stats))
        with open(os.path.join(self.out_dir, "log.txt"), "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.tb is not None:
            for k, v in stats.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, stats["epoch"])
            self.tb.flush()

    def trim_epochs(self, first_epoch: int) -> None:
        """Drop the ``log.txt`` lines of epochs >= ``first_epoch`` (written after the
        checkpoint a run resumes from), so that a resumed log reads as one run."""
        path = os.path.join(self.out_dir, "log.txt")
        if not self.enabled or not os.path.isfile(path):
            return
        with open(path) as f:
            keep = [l for l in f if l.strip() and json.loads(l).get("epoch", -1) < first_epoch]
        with open(path, "w") as f:
            f.writelines(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
