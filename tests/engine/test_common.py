"""The claim on inference outputs (``engine.common``): every folder is checked before any
is claimed, and outputs already written by the same weights are skipped."""
import os

import pytest

from engine.common import claim_outputs, pending_outputs
from utils.dist import DistInfo
from utils.errors import UserError
from utils.manifest import file_fingerprint, producer, read_manifest


# ------------------------------------------------------------------------ inference
def test_claim_outputs_checks_every_folder_before_claiming_any(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    (tmp_path / "mine.pth").write_bytes(b"1")
    (tmp_path / "theirs.pth").write_bytes(b"2")
    mine = producer(file_fingerprint(str(tmp_path / "mine.pth")), amp="none")
    theirs = producer(file_fingerprint(str(tmp_path / "theirs.pth")), amp="none")
    claim_outputs({b: (theirs, (".png",))}, ["x"], False, DistInfo(), lambda i: False)
    open(os.path.join(b, "x.png"), "w").close()         # b holds an output of other weights
    with pytest.raises(UserError, match="--overwrite"):
        claim_outputs({a: (mine, (".npy",)), b: (mine, (".png",))}, ["x"], False, DistInfo(),
                      lambda i: False)
    assert not os.path.exists(a)                       # nothing claimed: a stays untouched
    ids = ["p", "q", "r"]
    done = {"q"}
    assert claim_outputs({a: (mine, (".npy",)), b: (mine, (".png",))}, ids, True,
                         DistInfo(), done.__contains__) == ([0, 1, 2], [0, 2])
    assert read_manifest(a)["weights"] == read_manifest(b)["weights"] == mine["weights"]
    assert not os.path.exists(os.path.join(b, "x.png"))     # --overwrite removed it
    open(os.path.join(b, "r.png"), "w").close()
    assert pending_outputs(b, mine, ids, False, DistInfo()) == ([0, 1, 2], [0, 1])
