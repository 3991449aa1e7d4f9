"""The start of a training run (``utils.checkpoint``, ``utils.logger``): a fresh log headed
with the resolved arguments, a resumed run, and a fresh run that never replaces a run."""
import json
import os

import pytest
import torch

from utils.checkpoint import claim_run, save_training_state, start_training
from utils.errors import UserError
from utils.logger import RunLog


# ------------------------------------------------------------------------ training runs
def test_start_training_heads_a_fresh_log_and_resumes_a_saved_run(tmp_path):
    settings = {"lr": 0.1}
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    log = RunLog(str(tmp_path), tensorboard=False)
    assert start_training(str(tmp_path / "last.pth"), log, settings, "2 steps", net, opt) == 0
    log.epoch({"epoch": 0, "loss": 1.5})
    save_training_state(str(tmp_path / "last.pth"), 0, net, opt, None, settings)
    text = (tmp_path / "train.log").read_text()
    assert "arguments:" in text and "2 steps" in text
    assert 'epoch {"epoch": 0, "loss": 1.5}' in text          # the epoch line, on screen too
    assert json.loads((tmp_path / "log.txt").read_text()) == {"epoch": 0, "loss": 1.5}

    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.zero_()
    log = RunLog(str(tmp_path), tensorboard=False)
    assert start_training(str(tmp_path / "last.pth"), log, settings, "unused", net, opt,
                          resume=True) == 1
    assert torch.load(str(tmp_path / "last.pth"), weights_only=True)["args"] == settings
    assert torch.equal(net.weight, before)
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "train.log").read_text().count("arguments:") == 1


def test_start_training_logs_the_resolved_arguments(tmp_path):
    settings = {"finetune": None}
    net = torch.nn.Linear(3, 2)
    log = RunLog(str(tmp_path), tensorboard=False)
    start_training(str(tmp_path / "last.pth"), log, settings, "s", net,
                   torch.optim.SGD(net.parameters(), lr=0.1),
                   resolved={"finetune": "pretrained/deit.pth"})
    text = (tmp_path / "train.log").read_text()
    assert "  finetune: pretrained/deit.pth" in text and "finetune: None" not in text
    assert settings == {"finetune": None}          # the settings (what last.pth keeps) as given


def test_a_fresh_run_never_replaces_a_run(tmp_path):
    ckpt, last = tmp_path / "ckpt", tmp_path / "ckpt" / "last.pth"
    claim_run(str(last), str(tmp_path), resume=False, overwrite=False)   # empty: fine
    with pytest.raises(UserError, match="no checkpoint at .*last.pth; start without --resume"):
        claim_run(str(last), str(tmp_path), resume=True, overwrite=False)
    ckpt.mkdir()
    last.write_bytes(b"state")
    (ckpt / "000net_trm.pth").write_bytes(b"epoch 0")
    (tmp_path / "log.txt").write_text("{}\n")
    (tmp_path / "tb").mkdir()
    (tmp_path / "eval_cam.json").write_text("{}")       # not the training run's: kept
    with pytest.raises(UserError) as e:
        claim_run(str(last), str(tmp_path), resume=False, overwrite=False)
    msg = str(e.value)
    assert "--resume" in msg and "--overwrite" in msg and str(last) in msg and "\n" not in msg
    assert last.read_bytes() == b"state"                # refused: nothing touched
    for logs_only in (False, True):                     # a log alone is a run too
        if logs_only:
            (tmp_path / "train.log").write_text("x")
        with pytest.raises(UserError, match="already holds a training run"):
            claim_run(str(tmp_path / "other" / "last.pth"), str(tmp_path), False, False)
    claim_run(str(last), str(tmp_path), resume=True, overwrite=False)     # continues
    with pytest.raises(UserError, match="give one"):
        claim_run(str(last), str(tmp_path), resume=True, overwrite=True)
    claim_run(str(last), str(tmp_path), resume=False, overwrite=True)     # starts over
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "eval_cam.json"] and not os.listdir(ckpt)
