"""The code stands on its own: no .py or .md file of the repository cites the method's
specification (a document users do not have), no comment or docstring narrates the project's
issue tracker, and every "docs/method.md, <section>" pointer names a heading that exists."""
import ast
import io
import os
import re
import tokenize

import pytest

from engine.run_folder import EXPERIMENTS


def repo_root():
    """The checkout this file sits in (however deep under tests/)."""
    d = os.path.dirname(os.path.abspath(__file__))
    while not (os.path.isdir(os.path.join(d, "wsss"))
               and os.path.isfile(os.path.join(d, "README.md"))):
        if os.path.dirname(d) == d:
            raise RuntimeError("not inside the repository")
        d = os.path.dirname(d)
    return d


ROOT = repo_root()
METHOD = os.path.join(ROOT, "docs", "method.md")
SKIP_DIRS = {".git", ".venv", "data", "pretrained", EXPERIMENTS, "__pycache__", "node_modules"}
# spelled in two parts so that this file does not cite what it looks for
SPEC_CITATION = re.compile(r"\b" + "SP" + r"EC(_REFINE)?\b")
ISSUE = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
POINTER = "docs/method.md,"


def repo_files(*exts, makefile=False):
    """Paths (relative to the root) of the repository's files ending in ``exts`` (and the
    Makefile if ``makefile``), outside the virtual environment, data, weights and run
    folders."""
    out = []
    for d, subdirs, files in os.walk(ROOT):
        subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS and not s.startswith("."))
        for f in sorted(files):
            if f.endswith(exts) or (makefile and f == "Makefile"):
                out.append(os.path.relpath(os.path.join(d, f), ROOT))
    return out


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def headings():
    return [re.sub(r"^#+\s*", "", line).strip() for line in read(METHOD).splitlines()
            if re.match(r"#{1,6}\s", line)]


def comments_and_docstrings(source):
    """The comments and docstrings of a Python source, with their line numbers."""
    out = [(tok.start[0], tok.string) for tok in
           tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                out.append((node.body[0].lineno, doc))
    return out


def test_method_page_exists_and_readme_links_it():
    assert os.path.isfile(METHOD)
    names = headings()
    for section in ("Network", "Objective", "Frequency influence maps", "CAM inference",
                    "Dense CRF", "Affinity labels", "Affinity loss", "Random walk",
                    "Segmentation inference", "Seed evaluation"):
        assert section in names
    assert len(names) == len(set(names)), "two sections share a heading"
    assert "(docs/method.md)" in read("README.md")


def test_nothing_cites_the_specification():
    files = repo_files(".py", ".md", ".sh", makefile=True)
    assert "README.md" in files and os.path.join("docs", "method.md") in files
    bad = [f"{rel}:{i}: {line.strip()}" for rel in files
           for i, line in enumerate(read(rel).splitlines(), 1) if SPEC_CITATION.search(line)]
    assert not bad, "cite the paper, the reference code or docs/method.md instead:\n" + \
        "\n".join(bad)


def test_no_comment_narrates_issues():
    bad = [f"{rel}:{line}: {ISSUE.search(text).group(0)}" for rel in repo_files(".py")
           for line, text in comments_and_docstrings(read(rel)) if ISSUE.search(text)]
    bad += [f"{rel}:{i}: {line.strip()}" for rel in repo_files(".sh", makefile=True)
            if not rel.endswith(".py")
            for i, line in enumerate(read(rel).splitlines(), 1)
            if "#" in line and ISSUE.search(line.split("#", 1)[1])]
    assert not bad, "history goes in commit messages:\n" + "\n".join(bad)


def pointers(text):
    """The section names that follow each "docs/method.md," in ``text``, with line breaks,
    comment markers and indentation collapsed to single spaces."""
    flat = re.sub(r"\s*\n\s*(#\s*)?", " ", text)
    return [flat[m.end():].lstrip() for m in re.finditer(re.escape(POINTER), flat)]


def test_pointers_name_existing_sections():
    names = sorted(headings(), key=len, reverse=True)
    found, bad = 0, []
    for rel in repo_files(".py", ".md"):
        if os.path.join(ROOT, rel) in (METHOD, os.path.abspath(__file__)):
            continue
        for rest in pointers(read(rel)):
            found += 1
            if not any(rest.startswith(n) and not rest[len(n):len(n) + 1].isalnum()
                       for n in names):
                bad.append(f"{rel}: docs/method.md, {rest[:40]}...")
    assert found >= 20
    assert not bad, "no such heading in docs/method.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("text, expected", [
    ("see (docs/method.md, Random walk).", ["Random walk)."]),
    ("x (docs/method.md,\n    Random walk): y", ["Random walk): y"]),
    ("# a (docs/method.md, Affinity\n# loss)", ["Affinity loss)"]),
])
def test_pointers_read_across_line_breaks(text, expected):
    assert pointers(text) == expected
