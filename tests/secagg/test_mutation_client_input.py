"""A device's own input and the key-sharing threshold, at their boundaries (issue 16:
mutation testing found a signed input with a negative entry would pass if the range
check's lower end were computed wrongly, and no test put a device exactly one key-sharer
short of the threshold)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from secagg import (
    AbortError,
    ClientProtocol,
    MalformedMessageError,
    NotParticipantError,
    SignatureError,
)

from ._helpers import Round, make_round

DIM, BITS = 4, 8


def _shared() -> Round:
    r = make_round(n=5, dim=DIM, bits=BITS)
    r.advertise()
    r.share()
    return r


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros(3, np.int64), "input must have shape (4,), got (3,)"),
        (np.zeros((4, 1), np.int64), "input must have shape (4,), got (4, 1)"),
        (np.zeros(4, np.float64), "input must be an integer array, got dtype float64"),
        (np.array([-1, 0, 5, 255], np.int64),
         "input entries must be in [0, 2^8), got range [-1, 255]"),
        (np.array([3, 4, 256, 7], np.int64),
         "input entries must be in [0, 2^8), got range [3, 256]"),
        # unsigned: the lower end is 0 by type, whatever the smallest entry
        (np.array([3, 4, 256, 7], np.uint16),
         "input entries must be in [0, 2^8), got range [0, 256]"),
    ],
)
def test_a_bad_input_is_refused_exactly_and_the_device_can_still_send(
    x: np.ndarray, message: str
) -> None:
    r = _shared()
    client = r.clients[0]
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        client.masked_input(r.msgs["cts"][0], x)
    good = client.masked_input(r.msgs["cts"][0], np.array([0, 1, 2, 255], np.int64))
    assert good.sender == 0


def test_one_key_sharer_short_of_the_threshold_aborts_and_exactly_enough_proceeds() -> None:
    r = _shared()
    t = r.params.threshold
    cts = r.msgs["cts"][0]
    senders = sorted(cts)
    assert t == 4 and len(senders) == 4  # n = 5, complete graph
    short = {u: cts[u] for u in senders[: t - 2]}  # t - 2 others + itself = t - 1
    with pytest.raises(AbortError,
                       match=rf"^only {t - 1} parties shared keys; threshold {t}$"):
        r.clients[0].masked_input(short, r.inputs[0])
    # another device given exactly t - 1 others' ciphertexts (t with itself) proceeds
    cts1 = r.msgs["cts"][1]
    enough = {u: cts1[u] for u in sorted(cts1)[: t - 1]}
    assert r.clients[1].masked_input(enough, r.inputs[1]).sender == 1


def test_a_relayed_ciphertext_is_refused_naming_its_sender_and_the_state_is_kept() -> None:
    """What a (malicious) server relays in the masked-input stage: a ciphertext from a
    device that never advertised keys to this one, one that is not bytes, and one under
    another pair's nonce. Each is refused with its sender named, and the device can still
    send its masked input from the honest ciphertexts."""
    r = _shared()
    client = r.clients[0]
    cts = dict(r.msgs["cts"][0])
    u = sorted(cts)[0]
    cases = [
        ({**cts, 99: cts[u]}, NotParticipantError,
         "ciphertext from 99, which is not a neighbour that advertised keys to 0"),
        ({**cts, u: "not bytes"}, MalformedMessageError, f"ciphertext from {u} is not bytes"),
        ({**cts, u: bytes([cts[u][0] ^ 1]) + cts[u][1:]}, SignatureError,
         f"ciphertext from {u} carries a foreign nonce"),
    ]
    for bad, err, message in cases:
        with pytest.raises(err, match="^" + re.escape(message) + "$"):
            client.masked_input(bad, r.inputs[0])
    assert client.masked_input(cts, r.inputs[0]).sender == 0


def test_a_device_outside_the_round_is_refused_with_its_id_and_the_round() -> None:
    r = make_round(n=5, dim=DIM, bits=BITS)
    with pytest.raises(ValueError, match=r"^client 9 is not a participant of round 7$"):
        ClientProtocol(r.params, 9)
