"""Typed wire messages of one round (Bonawitz et al., CCS 2017, Fig. 4 / Bell et al. 2020).

Each message is a frozen dataclass carrying ``round_id`` and (except the server's
:class:`UnmaskRequest`) ``sender``. ``to_dict()`` gives a JSON-safe dict (bytes as
standard base64, integer-keyed maps with decimal string keys); ``from_dict()`` is its
strict inverse and raises :class:`~secagg.errors.MalformedMessageError` (a
``ProtocolError``) on a missing or unknown field, a wrong type or a wrong byte length.
Construction validates the same things, so no malformed message object ever exists.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from secagg.crypto import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, KEY_BYTES
from secagg.errors import MalformedMessageError
from secagg.shamir import SHARE_BYTES

__all__ = [
    "AdvertiseKeys",
    "ConsistencyCheck",
    "MaskedInput",
    "SHARE_PLAINTEXT_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "SIGNATURE_BYTES",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskShares",
    "b64decode",
    "b64encode",
]

SIGNATURE_BYTES = 64
#: be64(sender) || be64(receiver) || share of b_u || share of s_u^SK
SHARE_PLAINTEXT_BYTES = 8 + 8 + 2 * SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = AEAD_NONCE_BYTES + SHARE_PLAINTEXT_BYTES + AEAD_TAG_BYTES

M = TypeVar("M", bound="_Message")


def b64encode(data: bytes) -> str:
    """Standard base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: object, what: str) -> bytes:
    """Strict base64 decoding; anything else raises :class:`MalformedMessageError`."""
    if not isinstance(text, str):
        raise MalformedMessageError(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as err:
        raise MalformedMessageError(f"{what} is not valid base64") from err


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessageError(f"{what} must be an int, got {value!r}")
    if value < 0:
        raise MalformedMessageError(f"{what} must be >= 0, got {value}")
    return value


def _check_bytes(value: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedMessageError(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise MalformedMessageError(f"{what} must be {length} bytes, got {len(value)}")
    return value


def _check_byte_map(value: object, what: str, length: int | None) -> dict[int, bytes]:
    if not isinstance(value, Mapping):
        raise MalformedMessageError(f"{what} must be a mapping, got {type(value).__name__}")
    out: dict[int, bytes] = {}
    for k, v in value.items():
        key = _check_int(k, f"{what} key")
        out[key] = _check_bytes(v, f"{what}[{key}]", length)
    return out


def _check_ids(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise MalformedMessageError(f"{what} must be a sequence of ids, got {type(value).__name__}")
    ids = tuple(_check_int(v, f"{what} entry") for v in value)
    if list(ids) != sorted(set(ids)):
        raise MalformedMessageError(f"{what} must be sorted and unique, got {list(ids)[:20]}")
    return ids


def _key_from_json(k: object, what: str) -> int:
    if isinstance(k, str) and k.isascii() and k.isdigit() and (k == "0" or not k.startswith("0")):
        return int(k)
    return _check_int(k, what)


def _map_from_json(value: object, what: str) -> dict[int, bytes]:
    if not isinstance(value, dict):
        raise MalformedMessageError(f"{what} must be an object, got {type(value).__name__}")
    return {
        _key_from_json(k, f"{what} key"): b64decode(v, f"{what}[{k}]") for k, v in value.items()
    }


def _map_to_json(value: Mapping[int, bytes]) -> dict[str, str]:
    return {str(k): b64encode(v) for k, v in sorted(value.items())}


class _Message:
    """Shared ``to_dict`` / ``from_dict`` plumbing."""

    TYPE: ClassVar[str]
    _BYTES: ClassVar[tuple[str, ...]] = ()
    _MAPS: ClassVar[tuple[str, ...]] = ()
    _IDS: ClassVar[tuple[str, ...]] = ()
    _OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (bytes as base64; id-keyed maps with string keys)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif f.name in self._BYTES:
                out[f.name] = b64encode(value)
            elif f.name in self._MAPS:
                out[f.name] = _map_to_json(value)
            elif f.name in self._IDS:
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[M], d: object) -> M:
        """Strict inverse of :meth:`to_dict`; raises :class:`MalformedMessageError`."""
        if not isinstance(d, dict):
            raise MalformedMessageError(f"{cls.__name__} must be a JSON object")
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        extra = set(d) - set(names) - {"type"}
        if extra:
            raise MalformedMessageError(f"{cls.__name__}: unknown fields {sorted(extra)}")
        if "type" in d and d["type"] != cls.TYPE:
            raise MalformedMessageError(
                f"{cls.__name__}: type must be {cls.TYPE!r}, got {d['type']!r}"
            )
        kwargs: dict[str, Any] = {}
        for name in names:
            if name not in d:
                if name in cls._OPTIONAL:
                    kwargs[name] = None
                    continue
                raise MalformedMessageError(f"{cls.__name__}: missing field {name!r}")
            value = d[name]
            if value is None and name in cls._OPTIONAL:
                kwargs[name] = None
            elif name in cls._BYTES:
                kwargs[name] = b64decode(value, name)
            elif name in cls._MAPS:
                kwargs[name] = _map_from_json(value, name)
            elif name in cls._IDS:
                kwargs[name] = _check_ids(value, name)
            else:
                kwargs[name] = value
        try:
            return cls(**kwargs)
        except MalformedMessageError:
            raise
        except (TypeError, ValueError) as err:
            raise MalformedMessageError(f"{cls.__name__}: {err}") from err


def _freeze(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Round 0: the sender's two fresh X25519 public keys (c_pk for share encryption,
    s_pk for pairwise masks) and, in active mode, an Ed25519 signature binding
    ``(round_id, sender, c_pk, s_pk)`` under the sender's long-term identity key."""

    TYPE: ClassVar[str] = "advertise_keys"
    _BYTES: ClassVar[tuple[str, ...]] = ("c_pk", "s_pk", "signature")
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("signature",)

    round_id: int
    sender: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes | None = None

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _check_int(self.sender, "sender")
        _check_bytes(self.c_pk, "c_pk", KEY_BYTES)
        _check_bytes(self.s_pk, "s_pk", KEY_BYTES)
        if self.signature is not None:
            _check_bytes(self.signature, "signature", SIGNATURE_BYTES)


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1: recipient id -> ChaCha20-Poly1305 ciphertext of the sender's Shamir
    shares of b_u and s_u^SK for that recipient (opaque to the server, which relays)."""

    TYPE: ClassVar[str] = "share_keys"
    _MAPS: ClassVar[tuple[str, ...]] = ("ciphertexts",)

    round_id: int
    sender: int
    ciphertexts: dict[int, bytes]

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _check_int(self.sender, "sender")
        _freeze(
            self,
            "ciphertexts",
            _check_byte_map(self.ciphertexts, "ciphertexts", SHARE_CIPHERTEXT_BYTES),
        )


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Round 2: ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod 2^b``, packed at b bits per
    entry (little-endian). Over HTTP only ``data`` travels (octet-stream body)."""

    TYPE: ClassVar[str] = "masked_input"
    _BYTES: ClassVar[tuple[str, ...]] = ("data",)

    round_id: int
    sender: int
    data: bytes

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _check_int(self.sender, "sender")
        if isinstance(self.data, (bytearray, memoryview)):
            _freeze(self, "data", bytes(self.data))
        _check_bytes(self.data, "data")

    def __repr__(self) -> str:  # never print the vector
        return (
            f"MaskedInput(round_id={self.round_id}, sender={self.sender}, "
            f"data=<{len(self.data)} bytes>)"
        )


@dataclass(frozen=True)
class ConsistencyCheck(_Message):
    """Round 3 (active mode): the sender's Ed25519 signature over ``(round_id, sender,
    survivor set)`` so that no two honest clients are shown different survivor sets."""

    TYPE: ClassVar[str] = "consistency_check"
    _BYTES: ClassVar[tuple[str, ...]] = ("signature",)

    round_id: int
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _check_int(self.sender, "sender")
        _check_bytes(self.signature, "signature", SIGNATURE_BYTES)


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Server -> clients before Unmasking: ``survivors`` (masked input received; their
    b_u shares are requested) and ``dropped`` (shared keys but sent no masked input;
    their s^SK shares are requested). Active mode adds the consistency signatures."""

    TYPE: ClassVar[str] = "unmask_request"
    _IDS: ClassVar[tuple[str, ...]] = ("survivors", "dropped")
    _MAPS: ClassVar[tuple[str, ...]] = ("signatures",)
    _OPTIONAL: ClassVar[tuple[str, ...]] = ("signatures",)

    round_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: dict[int, bytes] | None = None

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _freeze(self, "survivors", _check_ids(self.survivors, "survivors"))
        _freeze(self, "dropped", _check_ids(self.dropped, "dropped"))
        if self.signatures is not None:
            _freeze(
                self, "signatures", _check_byte_map(self.signatures, "signatures", SIGNATURE_BYTES)
            )


@dataclass(frozen=True)
class UnmaskShares(_Message):
    """Round 4: shares held by ``sender``: peer -> share of that peer's b_u (survivors)
    and peer -> share of that peer's s^SK (dropped). Never both for one peer."""

    TYPE: ClassVar[str] = "unmask_shares"
    _MAPS: ClassVar[tuple[str, ...]] = ("self_mask_shares", "secret_key_shares")

    round_id: int
    sender: int
    self_mask_shares: dict[int, bytes]
    secret_key_shares: dict[int, bytes]

    def __post_init__(self) -> None:
        _check_int(self.round_id, "round_id")
        _check_int(self.sender, "sender")
        b = _check_byte_map(self.self_mask_shares, "self_mask_shares", SHARE_BYTES)
        s = _check_byte_map(self.secret_key_shares, "secret_key_shares", SHARE_BYTES)
        both = set(b) & set(s)
        if both:
            raise MalformedMessageError(f"both shares given for peers {sorted(both)}")
        _freeze(self, "self_mask_shares", b)
        _freeze(self, "secret_key_shares", s)
