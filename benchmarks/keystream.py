"""The AES-256-CTR keystream floor: the fastest one core can produce mask words here.

Definition (what the number names, nothing more): the wall time for ONE core to
produce ``seeds × words_per_seed`` words of AES-256-CTR keystream with ``cryptography``
(OpenSSL), as ``seeds`` independent streams (a fresh 256-bit key and counter block per
stream, like one PRG expansion per pairwise or self seed), each ``words_per_seed`` words
of ``word_bytes`` bytes written with ``update_into`` into one preallocated buffer.
Nothing is added, reduced or converted: this is the lower bound any AES-CTR mask
generator built on ``cryptography`` pays, so "client mask generation / floor" is the
overhead of the protocol's mask code over raw keystream.

Keys come from ``os.urandom`` (never numpy). Reported as the median of ``repeats``
timed runs after one warm-up (the minimum is reported too).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@dataclass(frozen=True)
class FloorResult:
    """One keystream-floor measurement."""

    seeds: int
    words_per_seed: int
    word_bytes: int
    median_s: float
    min_s: float
    repeats: int

    @property
    def words(self) -> int:
        return self.seeds * self.words_per_seed

    @property
    def gb_per_s(self) -> float:
        return self.words * self.word_bytes / self.median_s / 1e9

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["words"] = self.words
        d["gb_per_s"] = self.gb_per_s
        return d


def word_bytes_for_bits(bits: int) -> int:
    """Word size of the protocol's PRG for modulus 2^bits (secagg.crypto.prg_words:
    32-bit words for bits <= 32, 64-bit words above)."""
    return 4 if bits <= 32 else 8


def keystream_once(seeds: int, words_per_seed: int, word_bytes: int) -> float:
    """Wall seconds for one core to produce ``seeds`` streams of ``words_per_seed`` words."""
    return keystream_times(seeds, words_per_seed, word_bytes)[0]


def keystream_times(seeds: int, words_per_seed: int, word_bytes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) for the same work. The CPU time is what
    one core spent, unaffected by other processes waiting for or holding the core."""
    nbytes = words_per_seed * word_bytes
    zeros = bytes(nbytes)
    out = bytearray(nbytes + 15)  # update_into needs len(out) >= len(in) + block - 1
    keys = [os.urandom(32) for _ in range(seeds)]
    nonces = [os.urandom(16) for _ in range(seeds)]
    cpu0 = time.thread_time()
    start = time.perf_counter()
    for key, nonce in zip(keys, nonces, strict=True):
        enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        enc.update_into(zeros, out)
    return time.perf_counter() - start, time.thread_time() - cpu0


def keystream_floor(
    seeds: int, words_per_seed: int, word_bytes: int, repeats: int = 5
) -> FloorResult:
    """Median (and min) over ``repeats`` timed runs, after one warm-up run."""
    if seeds < 1 or words_per_seed < 1 or word_bytes not in (2, 4, 8) or repeats < 1:
        raise ValueError(
            f"bad floor request: seeds={seeds}, words_per_seed={words_per_seed}, "
            f"word_bytes={word_bytes}, repeats={repeats}"
        )
    keystream_once(min(seeds, 2), words_per_seed, word_bytes)
    times = [keystream_once(seeds, words_per_seed, word_bytes) for _ in range(repeats)]
    return FloorResult(
        seeds=seeds,
        words_per_seed=words_per_seed,
        word_bytes=word_bytes,
        median_s=statistics.median(times),
        min_s=min(times),
        repeats=repeats,
    )
