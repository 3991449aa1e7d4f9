"""Every command in README.md is accepted by the program it names (flags and values parse),
and the two commands of the README are the Makefile's and CI's."""
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    """('module name', argv) of a README command line (torchrun options skipped)."""
    words = shlex.split(cmd)
    if words[0] == "torchrun":
        i = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return words[i][:-3], words[i + 1:]
    if words[1] == "-m":
        return words[2], words[3:]
    if words[1].endswith(".py"):
        return words[1][:-3], words[2:]
    return None, None


COMMANDS = readme_commands()


def test_readme_has_commands():
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_parses(cmd):
    module, argv = program_and_args(cmd)
    if module is None:
        pytest.skip(f"not a project program: {cmd}")
    parser = importlib.import_module(module).get_args_parser()
    if module == "train_PCSS_coco":
        parser = importlib.import_module(module).get_coco_args_parser()
    parser.parse_args(argv)   # SystemExit (a failure) on an unknown flag or bad value


def test_two_commands_are_make_targets_and_ci_runs_the_test_one():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "make demo" in text and "make test" in text
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "make test" in ci
