"""Every command in README.md is accepted by the program it names (flags and values parse:
each runs as a subprocess with ``--print-args``, which parses and exits), and the two
commands of the README are the Makefile's and CI's."""
import os
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import ROOT, python


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith(("python ", "torchrun ")):
                cmds.append(line)
    return cmds


def program_and_args(cmd):
    """(argv prefix that runs the program, its arguments) of a README command line
    (torchrun options skipped); (None, None) for other programs."""
    words = shlex.split(cmd)
    if words[0] == "torchrun":
        i = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return [words[i]], words[i + 1:]
    if words[1] == "-m":
        return ["-m", words[2]], words[3:]
    if words[1].endswith(".py"):
        return [words[1]], words[2:]
    return None, None


COMMANDS = readme_commands()


def parse_check(cmd):
    prog, argv = program_and_args(cmd)
    if prog is None:
        return cmd, None
    proc = python(*prog, *argv, "--print-args", timeout=120)
    return cmd, proc


@pytest.fixture(scope="module")
def parsed():
    """All README commands parsed, two at a time (each is a short-lived process)."""
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(parse_check, COMMANDS))


def test_readme_has_commands():
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_parses(parsed, cmd):
    proc = parsed[cmd]
    if proc is None:
        pytest.skip(f"not a project program: {cmd}")
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-2000:]}"
    assert proc.stdout.startswith("{"), proc.stdout[:500]


def test_two_commands_are_make_targets_and_ci_runs_the_test_one():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "make demo" in text and "make test" in text
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "make test" in ci
