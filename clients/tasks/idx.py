"""Reader for the IDX file format used by (Fashion-)MNIST.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, one byte for the
element type, one byte for the number of dimensions ``n``, then ``n`` big-endian uint32
sizes, then the elements in C order, big-endian. Files are usually gzip-compressed.

Parsed with numpy and gzip only: no pickle, no network.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

# IDX element type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def parse_idx(data: bytes) -> np.ndarray:
    """Parse the bytes of one (uncompressed) IDX file into a numpy array.

    Raises ValueError on a bad magic number, unknown type code, or a size mismatch
    between the header and the payload (a truncated or padded file).
    """
    if len(data) < 4:
        raise ValueError(f"IDX data too short for a header: {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"not an IDX file: magic starts with {data[:2]!r}, expected b'\\x00\\x00'")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"unknown IDX element type 0x{type_code:02x}")
    if ndim == 0:
        raise ValueError("IDX file declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"IDX header truncated: need {header_len} bytes, have {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_len
    if payload != expected:
        raise ValueError(
            f"IDX payload is {payload} bytes but the header {dims} of {dtype} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file from disk; gzip-compressed if the name ends in ``.gz``."""
    p = Path(path)
    raw = p.read_bytes()
    if p.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{p}: not a valid gzip file ({exc})") from exc
    try:
        return parse_idx(raw)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from exc
