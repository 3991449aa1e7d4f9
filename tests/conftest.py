"""Shared pytest fixtures: repository root on sys.path, the shared reference fixtures."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FIXTURES = os.path.join(SHARED, "fixtures")


@pytest.fixture
def shared_fixture():
    """Path of a reference fixture in ../shared/fixtures, or skip when it is absent."""
    def get(name):
        path = os.path.join(FIXTURES, name)
        if not os.path.isfile(path):
            pytest.skip(f"reference fixture {path} not present (../shared beside the checkout)")
        return path
    return get


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~10 s (e.g. a pipeline run on "
                                       "the toy set); deselect with -m 'not slow'")
