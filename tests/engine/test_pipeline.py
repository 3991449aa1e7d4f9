"""``engine.pipeline`` without running the pipeline: flags routed to the stages by their
parsers, and the decision to skip, resume or redo a stage."""
import argparse

import pytest

from engine.pipeline import AMBIGUOUS, route_flags
from utils.errors import UserError


def test_route_flags_counts_values_by_the_stage_parser():
    a = argparse.ArgumentParser()
    a.add_argument("--scales", nargs="+")
    a.add_argument("--flip", action=argparse.BooleanOptionalAction)
    b = argparse.ArgumentParser()
    b.add_argument("--flip", action="store_true")
    b.add_argument("--W", nargs=2)
    stages = [("one", "a.py"), ("two", "b.py")]
    routed = route_flags(["--flip", "--a.scales", "0.5", "1", "--W", "1", "-2", "--no-flip"],
                         stages, {"a.py": a, "b.py": b})
    assert routed == {"one": ["--flip", "--scales", "0.5", "1", "--no-flip"],
                      "two": ["--flip", "--W", "1", "-2"]}
    with pytest.raises(UserError, match="needs 2 value"):
        route_flags(["--W", "1"], stages, {"a.py": a, "b.py": b})
    assert "--scales" in AMBIGUOUS


def test_decide_skips_resumes_and_redoes(tmp_path, monkeypatch):
    import engine.pipeline as P

    monkeypatch.setattr(P, "ROOT", str(tmp_path))
    train = argparse.ArgumentParser()
    train.add_argument("--resume", action="store_true")
    train.add_argument("--overwrite", action="store_true")
    infer = argparse.ArgumentParser()
    infer.add_argument("--overwrite", action="store_true")
    parsers = {"t.py": train, "i.py": infer}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pth").write_text("x")
    (tmp_path / "out").mkdir()

    def plan():
        stages = [P.Stage("a", "t.py", "train", ["--x"], ckpt="run/last.pth",
                          outputs=["run/last.pth"]),
                  P.Stage("b", "i.py", "infer", deps=["a"], outputs=["out"]),
                  P.Stage("c", "i.py", "infer", deps=["b"], outputs=["out"])]
        P._keys(stages)
        return stages

    stages = plan()
    # nothing recorded: a training folder of unknown origin, the rest simply runs
    P.decide(stages, {"stages": {}}, parsers)
    assert [s.action for s in stages] == ["run-unknown", "run", "run"]
    # a done, b killed half-way, c never started
    done = {"key": stages[0].key, "state": "done",
            "outputs": {"run/last.pth": P.fingerprint("run/last.pth")}}
    state = {"stages": {"a": done, "b": {"key": stages[1].key, "state": "started"}}}
    P.decide(stages, state, parsers)
    assert [(s.action, s.extra) for s in stages] == [("skip", []), ("continue", []),
                                                     ("run", [])]
    # a killed: resumed (or started over for the toy preset); b and c stay
    state["stages"]["a"] = {"key": stages[0].key, "state": "started"}
    P.decide(stages, state, parsers)
    assert stages[0].extra == ["--resume"] and stages[1].action == "continue"
    P.decide(stages, state, parsers, resume_training=False)
    assert (stages[0].action, stages[0].extra) == ("redo", ["--overwrite"])
    assert (stages[1].action, stages[1].extra) == ("redo", ["--overwrite"])
    # a's settings changed: a and everything after it redone, replacing their outputs
    state["stages"]["a"] = done
    state["stages"]["b"] = {"key": stages[1].key, "state": "done", "outputs": {}}
    state["stages"]["c"] = {"key": stages[2].key, "state": "done", "outputs": {}}
    stages[0].args = ["--y"]
    P._keys(stages)
    P.decide(stages, state, parsers)
    assert [s.action for s in stages] == ["redo", "redo", "redo"]
    assert stages[1].extra == stages[2].extra == ["--overwrite"]
    # --from b: a untouched
    stages = plan()
    P.decide(stages, state, parsers, redo_from="b")
    assert [s.action for s in stages] == ["skip", "redo", "redo"]
    # the recorded output changed since: not skipped
    (tmp_path / "run" / "last.pth").write_text("changed")
    P.decide(stages, state, parsers)
    assert stages[0].action == "resume"
