"""The house rules (README, Development: where things live), checked on the source with ``ast``: imports run
downhill (scripts -> engine -> models -> wsss / datasets -> utils), scripts define nothing but
``get_args_parser``, ``main`` and ``run`` (the scripts that run a network define the first
and the last; ``utils.args.launch_script`` launches ``run``), and tests never import a
script module."""
import ast
import glob
import os

import pytest

from helpers import ROOT, python

SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, "*.py")))
PACKAGES = ("utils", "wsss", "datasets", "models", "engine")
# what each package may import from the project (itself included)
ALLOWED = {
    "utils": {"utils"},
    "wsss": {"wsss", "utils"},
    "datasets": {"datasets", "wsss", "utils"},
    "models": {"models", "wsss", "utils"},
    "engine": {"engine", "models", "wsss", "utils", "datasets"},
}
# the public API's import paths in utils/, re-exporting the method's functions from wsss/
PUBLIC_ALIASES = {"cam", "frequency", "affinity", "segmentation", "crf", "evaluation"}


def project_imports(path):
    """Top-level project modules imported anywhere in ``path`` (also inside functions)."""
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & (set(PACKAGES) | set(SCRIPTS) | {"bench", "tests"})


def package_files(pkg):
    return sorted(glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_imports_run_downhill(pkg):
    def allowed(f):
        alias = pkg == "utils" and os.path.splitext(os.path.basename(f))[0] in PUBLIC_ALIASES
        return {"wsss"} if alias else ALLOWED[pkg]

    bad = {os.path.relpath(f, ROOT): sorted(project_imports(f) - allowed(f))
           for f in package_files(pkg)}
    assert not {f: v for f, v in bad.items() if v}


def test_scripts_define_only_parser_main_run():
    assert {"train_PCSS", "infer_PCSS", "evaluation", "demo"} <= set(SCRIPTS)
    for name in SCRIPTS:
        tree = ast.parse(open(os.path.join(ROOT, name + ".py")).read())
        defined = {n.name for n in tree.body
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))}
        assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
        assert defined <= {"get_args_parser", "main", "run"}, (name, defined)
        assert not assigned, (name, assigned)


def test_tests_never_import_a_script_module():
    for f in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True):
        assert not project_imports(f) & set(SCRIPTS), f


def test_registries_are_torch_free_and_every_entry_builds():
    """The names the parsers offer come from the registries (models.registry,
    datasets.layout), which import no torch; every registered net's builder imports and
    every dataset has a layout."""
    code = ("import sys, models.registry, datasets.layout, utils.args; "
            "sys.exit('torch' in sys.modules)")
    assert python("-c", code).returncode == 0
    from datasets.layout import DATASETS, layout
    from models.registry import BACKBONES

    for name in BACKBONES:
        for stage in BACKBONES[name].nets:
            assert callable(BACKBONES[name].builder(stage))
    for ds in DATASETS:
        assert layout(ds, ROOT, check=False).data_set == ds
