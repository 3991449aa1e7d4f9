"""../shared/tools/conform.py passes every check on the reference fixtures: the model and
its objective (s1, deit-s1), the evaluation (eval3) and the refinement (r1)."""
import pytest

from helpers import conform


@pytest.mark.parametrize("fixture", [pytest.param("s1.npz", marks=pytest.mark.slow), "deit-s1.npz",
                                     "eval3.npz", pytest.param("r1.npz", marks=pytest.mark.slow)])
def test_reference_conformance(fixture):
    conform(fixture)
