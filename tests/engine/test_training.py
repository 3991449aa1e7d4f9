"""``engine.training``: the meter's weighted means, the shared epoch loop (it logs whatever
terms a step returns, stops on a non-finite loss), and the ``Trainer`` skeleton (log lines,
last.pth, a resumed run equal to an uninterrupted one, epochs cut from one stream)."""
import json
import os

import pytest
import torch
from torch.utils.data import TensorDataset

from engine.seeds import pcss_step
from engine.training import MetricMeter, Trainer, batch_size, terms_but_total, train_epoch
from models import build_model
from models.pcss import PCSSObjective, sum_terms
from utils.errors import NonFiniteLoss


def test_meter_weighted_means_in_first_update_order():
    meter = MetricMeter()
    assert meter.means() == {}
    meter.update({"b": torch.tensor(2.0), "a": torch.tensor(1.0)}, weight=2)
    meter.update({"b": torch.tensor(0.5), "a": torch.tensor(4.0)}, weight=1)
    means = meter.means()
    assert list(means) == ["b", "a"]
    assert means["a"] == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert means["b"] == pytest.approx((2 * 2.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="terms"):
        meter.update({"a": torch.tensor(1.0)})


def linear_step(model, extra=None):
    """A least-squares step on ``(x, y)`` batches; ``extra`` adds a term ``"extra"``."""
    def step(batch):
        x, y = batch
        terms = {"mse": ((model(x) - y) ** 2).mean()}
        if extra is not None:
            terms["extra"] = extra * model.weight.abs().sum()
        terms["total"] = sum_terms(terms, tuple(terms))
        return terms
    return step


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))


def test_the_loop_logs_every_term_of_the_step_and_steps_the_optimiser():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ds = data()
    batches = [(ds.tensors[0][i:i + 4], ds.tensors[1][i:i + 4]) for i in (0, 4, 8)]
    got = train_epoch(model, batches, linear_step(model, extra=0.1), optimizer, epoch=0,
                      progress=False)
    assert list(got) == ["loss_mse", "loss_extra", "loss_total"]
    assert not torch.equal(model.weight, before)
    assert got["loss_total"] == pytest.approx(got["loss_mse"] + got["loss_extra"])
    got = train_epoch(model, batches, linear_step(model), optimizer, epoch=1, progress=False,
                      logged=terms_but_total, weigh=batch_size)
    assert list(got) == ["loss_mse"]


def test_weighted_by_batch_size_means_over_images():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)     # the loss stays put
    x, y = data().tensors
    batches = [(x[:2], y[:2]), (x[2:8], y[2:8])]
    losses = [float(((model(a) - b) ** 2).mean().detach()) for a, b in batches]
    got = train_epoch(model, batches, linear_step(model), optimizer, epoch=0, progress=False,
                      weigh=batch_size)
    assert got["loss_mse"] == pytest.approx((2 * losses[0] + 6 * losses[1]) / 8)
    got = train_epoch(model, batches, linear_step(model), optimizer, epoch=0, progress=False)
    assert got["loss_mse"] == pytest.approx(sum(losses) / 2)


def test_a_non_finite_loss_stops_with_the_terms_and_the_last_good_state(tmp_path):
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    last = tmp_path / "last.pth"
    last.write_bytes(b"x")

    def step(batch):
        return {"a": torch.tensor(1.0), "total": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteLoss, match=r"the toy loss became nan at epoch 3, step 0 "
                                            r"\(a=1, total=nan\).*" + str(last)):
        train_epoch(model, [None], step, optimizer, epoch=3, what="the toy loss",
                    last_good=str(last), progress=False)


def test_the_seed_loop_logs_an_objective_term_it_never_named():
    """A toy objective with one more term: the term reaches the epoch's means through
    ``pcss_step`` and ``train_epoch`` unchanged."""
    class WithExtra(PCSSObjective):
        TERMS = PCSSObjective.TERMS + ("extra",)

        def losses(self, net, images, labels, epoch, masks, perm):
            L = super().losses(net, images, labels, epoch, masks, perm)
            L["extra"] = 0.5 * L["cls"]
            L["total"] = sum_terms(L, self.TERMS)
            return L

    torch.manual_seed(0)
    net = build_model(num_classes=3, img_size=32, embed_dim=16, depth=3, num_heads=2)
    objective = WithExtra.for_network(3, w_fss=0.0)
    objective.prepare(net)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    got = train_epoch(net, [(images, labels)],
                      pcss_step(net, objective, 0, None, torch.device("cpu")), optimizer,
                      epoch=0, progress=False, logged=terms_but_total, weigh=batch_size)
    assert list(got) == [f"loss_{t}" for t in WithExtra.TERMS]
    assert got["loss_extra"] == pytest.approx(0.5 * got["loss_cls"])
    assert got["loss_cls_mpc"] > 0 and got["loss_cls_fss"] == 0


def options(resume=False, seed=0):
    return dict(resume=resume, overwrite=False, tensorboard=False, seed=seed, amp="none",
                num_workers=0)


def train_linear(folder, epochs, resume=False, lr=0.05, stream=None):
    """A linear model trained by a ``Trainer`` in ``folder`` (on the batches of ``stream``,
    ``(loader, steps_per_epoch)``, when given); returns its log lines."""
    from utils.dist import DistInfo

    trainer = Trainer({"lr": lr}, torch.device("cpu"), DistInfo(),
                      os.path.join(folder, "last.pth"), folder,
                      weights=os.path.join(folder, "final.pth"), **options(resume))
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    trainer.start(model, model, optimizer, "a linear model", schedule=schedule)
    loader, steps = stream or (trainer.loader(data(24), 4), None)
    trainer.fit(loader, epochs, lambda epoch: linear_step(model),
                after_epoch=lambda epoch, stats: schedule.step(), steps_per_epoch=steps,
                progress=False)
    with open(os.path.join(folder, "log.txt")) as f:
        return [json.loads(line) for line in f]


def test_trainer_logs_saves_and_resumes_to_the_same_numbers(tmp_path):
    full = train_linear(str(tmp_path / "full"), 4)
    assert [l["epoch"] for l in full] == [0, 1, 2, 3]
    assert [l["lr"] for l in full] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])
    assert set(full[0]) == {"epoch", "lr", "loss_mse", "loss_total"}
    assert full[-1]["loss_mse"] < full[0]["loss_mse"]
    state = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    assert state["epoch"] == 3 and "schedule" in state
    assert torch.equal(torch.load(tmp_path / "full" / "final.pth")["weight"],
                       state["model"]["weight"])
    train_linear(str(tmp_path / "cut"), 2)
    resumed = train_linear(str(tmp_path / "cut"), 4, resume=True)
    assert resumed == full          # float for float


def test_trainer_cuts_a_stream_into_epochs(tmp_path):
    """With ``steps_per_epoch`` each epoch takes the next batches of one pass over the
    loader: 3 epochs of 2 batches of one 6-batch pass (lr 0: each batch's loss is fixed)."""
    x, y = data(24).tensors
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 24, 4)]
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)        # what train_linear builds after seeding with 0
    losses = [float(((model(a) - b) ** 2).mean().detach()) for a, b in batches]
    lines = train_linear(str(tmp_path / "stream"), 3, lr=0.0, stream=(batches, 2))
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    assert [l["loss_mse"] for l in lines] == pytest.approx(
        [(losses[0] + losses[1]) / 2, (losses[2] + losses[3]) / 2,
         (losses[4] + losses[5]) / 2])


def test_run_options_are_the_trainers_keywords():
    import inspect

    from utils.args import run_options, script_parser, training_state_parent

    keywords = {name for name, p in inspect.signature(Trainer).parameters.items()
                if p.kind is p.KEYWORD_ONLY}
    parser = script_parser("a training script", training_state_parent("run"))
    opts = run_options(parser.parse_args(["--name", "x", "--seed", "3"]))
    assert set(opts) == keywords and opts["seed"] == 3 and opts["resume"] is False
