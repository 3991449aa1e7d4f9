"""What several test files share, written once (import as ``from helpers import ...``;
tests/conftest.py puts ``tests/`` on ``sys.path``): the repository's paths, the one launcher
of the scripts as users run them, the checks of their exits, the shared reference fixtures
and the conformance tool, and the toy networks the command-line tests load."""
import os
import subprocess
import sys

import pytest

from wsss.crf import crf_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}      # for subprocesses that run beside each other
needs_crf = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")


def python(*argv, cwd=ROOT, env=None, timeout=300):
    """``python ARGV`` in ``cwd`` with the repository importable (``PYTHONPATH``), ``env``
    added to the environment; output captured as text."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_script(script, *args, cwd=ROOT, nproc=0, prelude="", env=None, timeout=300):
    """A root script (``"train_PCSS.py"``) or a module (``"-m datasets.prepare"``) run as
    users run it, in ``cwd``. ``nproc``: under ``torchrun --standalone`` with that many
    processes. ``prelude``: Python run first in the same process (e.g. a patch), then the
    script as ``__main__``."""
    if script.startswith("-m "):
        target = ["-m", script[3:]]
    else:
        target = [os.path.join(ROOT, script)]
    if prelude:
        assert not nproc and target[0] != "-m"
        target = ["-c", prelude + f"\nimport runpy, sys\nsys.argv = {[target[0], *args]!r}\n"
                  f"runpy.run_path({target[0]!r}, run_name='__main__')"]
        args = ()
    if nproc:
        target = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                  str(nproc), *target]
    return python(*target, *args, cwd=cwd, env=env, timeout=timeout)


def assert_ok(proc):
    """The process exited 0; otherwise the end of its output."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def assert_clean_error(proc, message, code=2):
    """A user error: exit ``code``, ``message`` on stderr and no traceback."""
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def shared_fixture(name):
    """Path of ``../shared/<name>`` (``fixtures/s1.npz``, ``tools/conform.py``), or skip the
    test saying it is absent."""
    path = os.path.join(SHARED, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} not present (../shared beside the checkout)")
    return path


def conform(fixture, timeout=600):
    """../shared/tools/conform.py on ``../shared/fixtures/<fixture>`` from the repository
    root: every check passes."""
    tool, path = shared_fixture("tools/conform.py"), shared_fixture("fixtures/" + fixture)
    res = python(tool, path, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "FAIL" not in res.stdout


def toy_net(seed=0, num_classes=None):
    """A randomly initialised toy network (seeded), in eval mode, at the toy set's size."""
    import torch

    from datasets.layout import TOY_CLASSES
    from models import build_arch

    torch.manual_seed(seed)
    return build_arch("toy", num_classes or len(TOY_CLASSES), img_size=96,
                      drop_path_rate=0.0).eval()


def toy_work(path, num_images, seed=0, data="data", weights=("w.pth",), **toy_args):
    """``path`` as a working directory: the toy set in ``data/`` (``make_toy`` with
    ``toy_args``) and, for the i-th name of ``weights``, the state dict of ``toy_net(i)``."""
    import torch

    from datasets.toy import make_toy

    make_toy(str(path / data), num_images, seed=seed, **toy_args)
    for i, name in enumerate(weights):
        torch.save(toy_net(i).state_dict(), path / name)
    return path


class WritesMarker:
    """Unpickling this object would create the file ``path``: what a hostile checkpoint or
    label pickle could do. The loaders must refuse it before anything is written."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
