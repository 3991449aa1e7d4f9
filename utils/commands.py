"""Running the project's own command lines one after the other (``demo.py``), timed, each
in a fresh process as a user would run it. No torch import."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CommandRunner:
    """``runner(step, ["script.py", ...])`` runs ``python script.py ...`` from the
    repository root, prints the command, records its wall time in ``timings[step]`` and
    ends the program with a message naming the step when the command fails."""

    def __init__(self):
        self.timings: Dict[str, float] = {}

    def __call__(self, step: str, args: List[str]) -> None:
        print(f"\n=== {step}: python {' '.join(args)}", flush=True)
        t0 = time.time()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run([sys.executable] + args, cwd=ROOT, env=env)
        self.timings[step] = round(time.time() - t0, 1)
        if res.returncode != 0:
            sys.exit(f"step '{step}' failed (exit {res.returncode}); see the output above")

