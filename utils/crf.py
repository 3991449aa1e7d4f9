"""``utils.crf``: the stable import path of ``wsss.crf`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/crf.py``."""
from wsss.crf import (  # noqa: F401
    PRESETS, crf_available, dense_crf, crf_with_alpha
)

__all__ = ['PRESETS', 'crf_available', 'dense_crf', 'crf_with_alpha']
