"""Protocol stages of one secure-aggregation round (Bonawitz et al., CCS 2017, Fig. 4)."""

from __future__ import annotations

import enum

__all__ = ["Stage"]


class Stage(enum.Enum):
    """Stage of a round; values match the HTTP API's ``stage`` strings.

    For a client the stage names the next message it will produce; for the aggregator
    it names the messages it is collecting. ``dropouts[cid] = Stage.X`` in
    :func:`secagg.run_round` means "cid vanishes before sending its stage-X message".
    """

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"

    @property
    def order(self) -> int:
        """Position in the round (ABORTED sorts last)."""
        return _ORDER[self]


_ORDER = {s: i for i, s in enumerate(Stage)}
