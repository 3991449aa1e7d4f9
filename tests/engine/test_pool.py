"""The CRF worker pool (``engine.pool``): every job runs, errors come back, and zero workers
run inline."""
import pytest

from engine.pool import WorkPool
from utils.errors import UserError


# ----------------------------------------------------------------------------- the pool
def _square(path, x):
    with open(path, "a") as f:
        f.write(f"{x * x}\n")


def _fail(x):
    raise UserError(f"cannot read image number {x}")


def test_pool_runs_every_job_and_brings_errors_back(tmp_path):
    out = tmp_path / "out.txt"
    with WorkPool(2, backlog=2) as pool:
        for x in range(6):
            pool.submit(_square, str(out), x)
    assert sorted(int(v) for v in out.read_text().split()) == [x * x for x in range(6)]
    with pytest.raises(UserError, match="cannot read image number 3"):
        with WorkPool(2) as pool:
            pool.submit(_fail, 3)
    inline = WorkPool(0)
    inline.submit(_square, str(out), 7)
    assert out.read_text().split()[-1] == "49"
