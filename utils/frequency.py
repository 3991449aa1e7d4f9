"""``utils.frequency``: the stable import path of ``wsss.frequency`` (tools and tests written against
the project's public API import from here); the code lives in ``wsss/frequency.py``."""
from wsss.frequency import (  # noqa: F401
    IMAGES_PER_FORWARD, replace_magnitude, mix_magnitude, suppress_frequencies,
    influence_cells, FrequencyInfluence
)

__all__ = ['IMAGES_PER_FORWARD', 'replace_magnitude', 'mix_magnitude',
           'suppress_frequencies', 'influence_cells', 'FrequencyInfluence']
