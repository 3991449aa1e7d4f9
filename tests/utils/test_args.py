"""The scripts' shared parser pieces and argument checks (``utils.args``): the help names
what the resolvers use, the shared options combine, values are checked at parse time, the
training length is checked before training, and the parsed arguments stay as parsed."""
import argparse

import pytest

from datasets.layout import data_parent
from engine.run_folder import RunFolder
from models.registry import BACKBONES, TRAINED_FILES, backbone_names, refine_net_parent
from utils.args import (check_training_length, overwrite_parent, positive_float, script_parser,
                        training_state_parent, with_defaults)
from utils.errors import UserError


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


def test_with_defaults_leaves_the_parsed_arguments_alone():
    args = argparse.Namespace(lr=None, epochs=3, backbone=None)
    before = vars(args).copy()
    opt = with_defaults(args, lr=0.01, epochs=5, backbone="toy")
    assert (opt.lr, opt.epochs, opt.backbone) == (0.01, 3, "toy")
    assert vars(args) == before
