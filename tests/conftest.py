"""The repository root and ``tests/`` (for ``helpers``) on ``sys.path``; the ``slow`` marker
(pytest.ini) splits the suite into its two tiers."""
import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if TESTS not in sys.path:
    sys.path.append(TESTS)
