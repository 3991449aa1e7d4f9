"""What the scripts share instead of writing it each: the parsers' pieces and argument checks
(``utils.args``), the missing-input errors (``utils.errors``, ``models.weights``,
``models.registry``), the start of a training run and its epoch lines (``utils.checkpoint``,
``utils.logger``), the claim on inference outputs (``engine.common``) and the inference
loader (``datasets.loader``)."""
import json
import os

import pytest
import torch

from datasets.loader import image_loader
from engine.common import claim_outputs, pending_outputs
from models.weights import initial_weights
from datasets.layout import data_parent
from engine.run_folder import RunFolder
from models.registry import (BACKBONES, TRAINED_FILES, backbone_names, refine_net_parent,
                             resolve_init_weights)
from utils.args import (check_training_length, overwrite_parent, positive_float,
                        script_parser, training_state_parent)
from utils.checkpoint import claim_run, save_training_state, start_training
from utils.dist import DistInfo
from utils.errors import UserError, require_folder
from utils.logger import RunLog
from utils.manifest import file_fingerprint, producer, read_manifest


# ------------------------------------------------------------------------ parsers
@pytest.mark.parametrize("stage", ["affinity", "segmentation"])
def test_refine_net_help_comes_from_the_tables_the_code_uses(stage):
    """--help names every backbone, its default initial file, and where the trained net
    is looked for: the strings the resolvers use, so the two cannot drift apart."""
    train = script_parser("t", refine_net_parent(stage, trained=False)).format_help()
    infer = script_parser("i", refine_net_parent(stage, trained=True)).format_help()
    flat = lambda text: " ".join(text.split())  # noqa: E731  (argparse wraps lines)
    for name in backbone_names(stage):
        assert name in flat(train) and name in flat(infer)
        if BACKBONES[name].weights:
            assert BACKBONES[name].weights in flat(train)
    folder, file, script, _ = TRAINED_FILES[stage]
    run = RunFolder("<name>")
    assert run.trained_weights(stage) in flat(infer) and script in flat(infer)
    assert run.trained_weights(stage) == run.path(folder, file)
    for name in backbone_names(stage):   # the other backbones' nets live beside the default
        own = BACKBONES[name].own_folder
        assert run.trained_weights(stage, name) == (
            run.path(f"{folder}_{name}", file) if own else run.path(folder, file))


def test_script_parser_combines_the_shared_options():
    p = script_parser("x", data_parent("TOY", "toy"), training_state_parent("aff"))
    args = p.parse_args(["--name", "n", "--resume", "--no-tensorboard", "--overwrite"])
    assert (args.data_set, args.data_path, args.device) == ("TOY", "toy", "auto")
    assert args.resume and not args.tensorboard and args.overwrite
    assert RunFolder("<name>").last_checkpoint("affinity") in " ".join(p.format_help().split())
    assert not script_parser("y").parse_args(["--name", "n"]).__contains__("overwrite")
    p = script_parser("y", overwrite_parent("masks"))
    assert p.parse_args(["--name", "n", "--overwrite"]).overwrite


def test_scales_must_be_positive_at_parse_time(capsys):
    p = script_parser("x")
    p.add_argument("--scales", type=positive_float, nargs="+", default=[1.0])
    assert p.parse_args(["--name", "n", "--scales", "0.5", "1.5"]).scales == [0.5, 1.5]
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--name", "n", "--scales", "1", bad])
        assert e.value.code == 2
        assert "is not positive" in capsys.readouterr().err


# ------------------------------------------------------------------------ checks
def test_training_length_checks():
    check_training_length("--epochs", 1, 4, 2, 8, "list.txt")          # one step: fine
    with pytest.raises(UserError, match="--max_epoches 0: nothing to train"):
        check_training_length("--max_epoches", 0, 4, 1, 100, "list.txt")
    with pytest.raises(UserError, match=r"--batch_size 4 x 2 process\(es\) is more than the 7 "
                                        r"images of list.txt"):
        check_training_length("--epochs", 3, 4, 2, 7, "list.txt")


def test_require_folder_says_how_to_make_it(tmp_path):
    require_folder(str(tmp_path), "masks", "`make`", "--dir")
    with pytest.raises(UserError) as e:
        require_folder(str(tmp_path / "no"), "pseudo masks", "`python infer_aff.py`", "--dir")
    assert str(e.value) == (f"pseudo masks not found: {tmp_path / 'no'}. Write them with "
                            f"`python infer_aff.py`, or pass --dir.")


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


def test_find_trained_weights(tmp_path):
    run = RunFolder("run1", root=tmp_path)
    with pytest.raises(UserError) as e:
        run.find_trained_weights(None, "affinity")
    msg = str(e.value)
    assert run.path("aff", "aff_net.pth") in msg
    assert "python train_aff.py --name run1" in msg and "res38_aff.pth" in msg
    with pytest.raises(UserError, match="python train_seg.py --name run1 --backbone "
                                        "deeplabv2_r101"):
        run.find_trained_weights(None, "segmentation", "deeplabv2_r101")
    path = run.trained_weights("segmentation")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"x")
    assert run.find_trained_weights(None, "segmentation") == path
    assert RunFolder("elsewhere").find_trained_weights(str(path), "affinity") == str(path)


# ------------------------------------------------------------------------ training runs
def test_start_training_heads_a_fresh_log_and_resumes_a_saved_run(tmp_path):
    class Args:
        resume = False
        lr = 0.1

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    log = RunLog(str(tmp_path), tensorboard=False)
    assert start_training(str(tmp_path / "last.pth"), log, Args(), "2 steps", net, opt) == 0
    log.epoch({"epoch": 0, "loss": 1.5})
    save_training_state(str(tmp_path / "last.pth"), 0, net, opt, None, Args())
    text = (tmp_path / "train.log").read_text()
    assert "arguments:" in text and "2 steps" in text
    assert 'epoch {"epoch": 0, "loss": 1.5}' in text          # the epoch line, on screen too
    assert json.loads((tmp_path / "log.txt").read_text()) == {"epoch": 0, "loss": 1.5}

    Args.resume = True
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.zero_()
    log = RunLog(str(tmp_path), tensorboard=False)
    assert start_training(str(tmp_path / "last.pth"), log, Args(), "unused", net, opt) == 1
    assert torch.equal(net.weight, before)
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "train.log").read_text().count("arguments:") == 1


def test_start_training_logs_the_resolved_arguments(tmp_path):
    class Args:
        resume = False
        finetune = None

    net = torch.nn.Linear(3, 2)
    log = RunLog(str(tmp_path), tensorboard=False)
    start_training(str(tmp_path / "last.pth"), log, Args(), "s", net,
                   torch.optim.SGD(net.parameters(), lr=0.1),
                   resolved={"finetune": "pretrained/deit.pth"})
    text = (tmp_path / "train.log").read_text()
    assert "  finetune: pretrained/deit.pth" in text and "finetune: None" not in text
    assert Args.finetune is None                        # args (what last.pth keeps) as given


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


def test_image_loader_yields_single_items_in_order_with_few_workers():
    items = [(torch.zeros(3, h, 5), torch.ones(2), f"id{h}") for h in (4, 6, 8, 10)]
    loader = image_loader(items, [3, 1], num_workers=8, device=torch.device("cpu"))
    assert loader.num_workers == 2                           # no more workers than images
    assert [(img.shape[1], i) for img, _, i in loader] == [(10, "id10"), (6, "id6")]
    assert image_loader(items, [], 4, torch.device("cpu")).num_workers == 0


def test_more_torchrun_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine: a message that
    says what to change, before any CUDA call can fail with "invalid device ordinal"."""
    from utils import dist as d

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda i: pytest.fail("set_device reached with a rank past the GPUs"))
    with pytest.raises(UserError, match="--nproc_per_node 1 or fewer, or --device cpu"):
        d.init_distributed("cuda")
