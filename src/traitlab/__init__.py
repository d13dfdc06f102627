"""traitlab: extract, validate and use trait vectors of language models.

From Python (a notebook):  ``from traitlab import SteeringVector, api`` — see README "From Python".
Names are imported on first use so ``import traitlab`` stays light for the command-line tools.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["SteeringVector", "steer"]


def __getattr__(name: str) -> Any:
    if name in ("SteeringVector", "steer"):
        from traitlab import steering_vector

        return getattr(steering_vector, name)
    raise AttributeError(f"module 'traitlab' has no attribute {name!r}")
