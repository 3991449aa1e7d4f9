"""Initial weights (``models.weights``, ``models.registry``): the default file, ``none``,
``download`` for the torchvision backbones only, and a missing file's error."""
import pytest

from models.registry import resolve_init_weights
from models.weights import describe_weights, initial_weights, load_weights
from utils.errors import UserError


def test_initial_weights_resolution(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    missing = lambda p: f"no {p}"  # noqa: E731
    assert initial_weights(None, None, missing) is None                 # toy: from scratch
    assert initial_weights(None, str(f), missing) == str(f)             # the default file
    assert initial_weights("None", str(f), missing) is None             # 'none' wins
    assert initial_weights("download", None, missing, keep=("download",)) == "download"
    with pytest.raises(UserError, match="no download"):
        initial_weights("download", None, missing)                      # not kept: a path
    with pytest.raises(UserError, match=f"no {tmp_path / 'gone.pth'}"):
        initial_weights(None, str(tmp_path / "gone.pth"), missing)
    # the refinement stages' wrapper: 'download' only for the torchvision backbones
    assert resolve_init_weights("resnet50", "download", "affinity") == "download"
    assert resolve_init_weights("toy", None, "affinity") is None
    with pytest.raises(UserError, match="initial weights not found: download"):
        resolve_init_weights("resnet38", "download", "affinity")


def test_the_log_line_counts_what_the_loader_reported(tmp_path):
    import torch

    src = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    path = str(tmp_path / "w.pth")
    torch.save({"0.weight": src[0].weight, "0.bias": src[0].bias,
                "9.weight": torch.zeros(1)}, path)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 3))
    report = load_weights(net, path, fresh_ok=("1.weight", "1.bias"), drop_ok=True)
    assert describe_weights(path, report) == (f"weights {path}: 2 fresh tensors, "
                                              "1 file tensors unused")
    assert describe_weights(None, {"fresh": [], "dropped": []}).startswith(
        "weights none (from scratch): 0 fresh")
