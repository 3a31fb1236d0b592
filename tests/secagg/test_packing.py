"""Little-endian b-bit packing: round trips for every b in 8..62 and exact layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import MalformedMessageError, pack, packed_size, unpack
from secagg.packing import pack_reduced, word_dtype


def _reference_pack(values: list[int], bits: int) -> bytes:
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * bits)
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


@pytest.mark.parametrize("bits", range(8, 63))
def test_round_trip_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for dim in (1, 7, 8, 9, 64, 1001):
        x = rng.integers(0, 1 << bits, dim, dtype=np.uint64)
        x[0] = (1 << bits) - 1
        data = pack(x, bits)
        assert len(data) == packed_size(dim, bits)
        assert data == _reference_pack(x.tolist(), bits)
        assert pack_reduced(x.astype(word_dtype(bits)), bits) == data  # the client's path
        y = unpack(data, bits, dim)
        assert y.dtype == np.uint64
        assert np.array_equal(x, y)
        if bits <= 32:
            assert np.array_equal(unpack(data, bits, dim, np.uint32), x.astype(np.uint32))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(8, 62), data=st.data())
def test_round_trip_property(bits: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=50))
    x = np.array(values, dtype=np.uint64)
    packed = pack(x, bits)
    assert packed == _reference_pack(values, bits)
    assert unpack(packed, bits, len(values)).tolist() == values


def test_layout_example() -> None:
    # entries 1 and 2 at 12 bits: bits 0..11 = 1, bits 12..23 = 2 -> 0x002001
    assert pack(np.array([1, 2]), 12) == bytes([0x01, 0x20, 0x00])


def test_rejects_out_of_range_and_bad_lengths() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack(np.array([1 << 12]), 12)
    with pytest.raises(ValueError, match="negative"):
        pack(np.array([-1]), 12)
    with pytest.raises(ValueError):
        pack(np.array([1.0]), 12)
    with pytest.raises(ValueError):
        pack(np.array([1]), 63)
    with pytest.raises(MalformedMessageError):
        unpack(b"\x00" * 2, 12, 2)
    with pytest.raises(MalformedMessageError):
        unpack(b"\x00\x00\xf0", 12, 1 + 0)  # wrong length for dim 1 (2 bytes)
    with pytest.raises(MalformedMessageError):
        unpack(bytes([0, 0xF0]), 12, 1)  # non-zero padding bits
    assert packed_size(10**5, 20) == 250000
