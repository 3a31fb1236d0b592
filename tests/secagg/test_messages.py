"""Wire messages: JSON round trips and strict rejection of malformed dicts."""

from __future__ import annotations

import json

import pytest

from secagg import (
    AdvertiseKeys,
    ConsistencyCheck,
    MalformedMessageError,
    MaskedInput,
    ProtocolError,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from secagg.messages import SHARE_CIPHERTEXT_BYTES

MSGS = [
    AdvertiseKeys(1, 2, b"a" * 32, b"b" * 32, None),
    AdvertiseKeys(1, 2, b"a" * 32, b"b" * 32, b"s" * 64),
    ShareKeys(1, 2, {3: b"c" * SHARE_CIPHERTEXT_BYTES, 10: b"d" * SHARE_CIPHERTEXT_BYTES}),
    MaskedInput(1, 2, b"\x00\x01\x02"),
    ConsistencyCheck(1, 2, b"s" * 64),
    UnmaskRequest(1, (1, 2, 5), (3,), None),
    UnmaskRequest(1, (1, 2, 5), (3,), {1: b"s" * 64}),
    UnmaskShares(1, 2, {1: b"x" * 33}, {3: b"y" * 33}),
]


@pytest.mark.parametrize("msg", MSGS, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    d = json.loads(json.dumps(msg.to_dict()))  # type: ignore[attr-defined]
    assert type(msg).from_dict(d) == msg


@pytest.mark.parametrize("msg", MSGS, ids=lambda m: type(m).__name__)
def test_missing_field_and_wrong_type(msg: object) -> None:
    cls = type(msg)
    d = msg.to_dict()  # type: ignore[attr-defined]
    for key in [k for k in d if k not in ("type", "signature", "signatures")]:
        with pytest.raises(ProtocolError):
            cls.from_dict({k: v for k, v in d.items() if k != key})
        with pytest.raises(ProtocolError):
            cls.from_dict({**d, key: 1.5})
    with pytest.raises(ProtocolError):
        cls.from_dict({**d, "bogus": 1})
    with pytest.raises(ProtocolError):
        cls.from_dict({**d, "type": "other"})
    with pytest.raises(ProtocolError):
        cls.from_dict([d])


def test_wrong_byte_lengths() -> None:
    d = MSGS[0].to_dict()
    with pytest.raises(MalformedMessageError):
        AdvertiseKeys.from_dict({**d, "c_pk": "AAAA"})
    with pytest.raises(MalformedMessageError):
        AdvertiseKeys.from_dict({**d, "round_id": True})
    with pytest.raises(MalformedMessageError):
        AdvertiseKeys.from_dict({**d, "sender": -1})
    d = MSGS[2].to_dict()
    with pytest.raises(MalformedMessageError):
        ShareKeys.from_dict({**d, "ciphertexts": {"3": "AAAA"}})
    with pytest.raises(MalformedMessageError):
        ShareKeys.from_dict({**d, "ciphertexts": {"x": d["ciphertexts"]["3"]}})
    with pytest.raises(MalformedMessageError):
        UnmaskShares(1, 2, {1: b"x" * 32}, {})
    with pytest.raises(MalformedMessageError):
        UnmaskShares(1, 2, {1: b"x" * 33}, {1: b"y" * 33})  # both shares of one peer
    with pytest.raises(MalformedMessageError):
        UnmaskRequest(1, (2, 1), (), None)
    with pytest.raises(MalformedMessageError):
        MaskedInput.from_dict({"round_id": 1, "sender": 2, "data": "not base64!"})


def test_masked_input_repr_hides_data() -> None:
    assert "bytes>" in repr(MaskedInput(1, 2, b"secret-bytes"))
    assert "secret" not in repr(MaskedInput(1, 2, b"secret-bytes"))
