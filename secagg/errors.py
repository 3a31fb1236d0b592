"""Exceptions raised by the secure-aggregation protocol.

Every rejection is narrow so that a transport can map it to a status code without
parsing messages (see CONTRACT.md, "Status codes"):

- :class:`ProtocolError` (also a ``ValueError``): a message or call that the protocol
  refuses. Raising it never changes the state of the object that raised it.
  Subclasses say why: :class:`MalformedMessageError` (400), :class:`NotParticipantError`
  (403), :class:`RoundMismatchError` (404 / 409), :class:`StageError` and
  :class:`DuplicateMessageError` (409), :class:`SignatureError` (401 / 400),
  :class:`RefusedError` (an honest client refusing a request that could unmask an input)
  and its subclass :class:`PolicyError` (a device refusing a round whose parameters or
  identity keys fall outside its local :class:`~secagg.policy.ClientPolicy`).
- :class:`AbortError`: the round cannot finish with the privacy guarantee intact (fewer
  than ``t`` parties remain, or reconstruction failed). Nothing is revealed and the
  object moves to ``Stage.ABORTED``.
"""

from __future__ import annotations

__all__ = [
    "AbortError",
    "DuplicateMessageError",
    "MalformedMessageError",
    "NotParticipantError",
    "PolicyError",
    "ProtocolError",
    "RefusedError",
    "RoundMismatchError",
    "SecAggError",
    "SignatureError",
    "StageError",
]


class SecAggError(Exception):
    """Base class of every error raised by :mod:`secagg`."""


class ProtocolError(SecAggError, ValueError):
    """A message or call that the protocol rejects; the receiver's state is unchanged."""


class MalformedMessageError(ProtocolError):
    """Missing field, wrong type, wrong byte length or wrong vector length."""


class NotParticipantError(ProtocolError):
    """The sender (or a named peer) is not a participant / neighbour for this round."""


class RoundMismatchError(ProtocolError):
    """The message belongs to another round."""


class StageError(ProtocolError):
    """The message or call arrives at the wrong stage (out of order)."""


class DuplicateMessageError(ProtocolError):
    """The sender already sent this kind of message this round (replay)."""


class SignatureError(ProtocolError):
    """A missing or invalid Ed25519 signature (active mode) or AEAD authentication failure."""


class RefusedError(ProtocolError):
    """An honest client refuses an unmasking request that contradicts what it knows."""


class PolicyError(RefusedError):
    """A device refuses a round: its parameters (threshold, cohort, graph, bits, mode,
    minimum survivors) or identity keys fall outside the device's local policy. The
    message names the value and the rule it breaks."""


class AbortError(SecAggError):
    """The round aborts: fewer than ``t`` parties remain; nothing is revealed."""
