"""PolySGD (``utils.optim``, PSA's poly learning-rate SGD) against the literal
restatement of bench/reference.py, also across a resume."""
import pytest
import torch

from bench.reference import literal_poly_sgd
from utils.optim import PolySGD


# --------------------------------------------------------------------------- PolySGD
@pytest.mark.parametrize("momentum,max_step", [(5e-4, 5), (1e-5, 3), (0.9, 10)])
def test_poly_sgd_matches_literal_and_resumes(momentum, max_step):
    g = torch.Generator().manual_seed(1)
    p0 = [torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2)]
    grads = [[torch.randn(3, generator=g, dtype=torch.float64) for _ in range(2)]
             for _ in range(7)]
    params = [torch.nn.Parameter(p.clone()) for p in p0]
    opt = PolySGD([{"params": [params[0]], "lr": 0.1, "weight_decay": 0.01},
                   {"params": [params[1]], "lr": 1.0}], max_step, momentum=momentum)
    history, lrs = literal_poly_sgd(p0, grads, [0.1, 1.0], [0.01, 0.0], max_step, momentum)
    for t, gs in enumerate(grads):
        for p, d in zip(params, gs):
            p.grad = d.clone()
        opt.step()
        assert [grp["lr"] for grp in opt.param_groups] == pytest.approx(lrs[t], rel=1e-12)
        for p, want in zip(params, history[t]):
            torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)
        if t == 3:   # a resumed optimiser continues identically
            state = opt.state_dict()
            opt = PolySGD([{"params": [params[0]], "lr": 0.1, "weight_decay": 0.01},
                           {"params": [params[1]], "lr": 1.0}], max_step, momentum=momentum)
            opt.load_state_dict(state)
            assert opt.global_step == 4
    assert opt.global_step == 7
