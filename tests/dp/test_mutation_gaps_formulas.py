"""The RDP formulas of dp.mechanisms against REFERENCES.md, written out again, on a grid
that makes every term count (issue 16: at the plan's scales some terms are below 1e-9 of
the total, so a wrong constant there survived every end-to-end test)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dp.mechanisms import ddgauss_rdp, ddgauss_tau, gaussian_rdp, get_mechanism, skellam_rdp
from tests.dp.test_mutation_gaps import reference_ddgauss_rdp, reference_skellam_rdp

ORDERS = [1.5, 2.0, 3.0, 7.0, 32.0, 256.0]


@pytest.mark.parametrize(
    "l2,l1,mu", list(itertools.product([0.5, 1.0, 3.0], [1.0, 4.0], [0.2, 1.0, 5.0, 50.0]))
)
def test_skellam_rdp_matches_the_reference(l2: float, l1: float, mu: float) -> None:
    a = np.asarray(ORDERS)
    np.testing.assert_allclose(skellam_rdp(ORDERS, l2, l1, mu),
                               reference_skellam_rdp(a, l2, l1, mu), rtol=1e-13)


def test_skellam_rdp_both_branches_of_the_min_occur() -> None:
    a = np.asarray([2.0])
    small = ((2 * a - 1) * 1 + 6 * 4) / (4 * 0.2**2) > 3 * 4 / (2 * 0.2)
    large = ((2 * a - 1) * 1 + 6 * 4) / (4 * 50.0**2) < 3 * 4 / (2 * 50.0)
    assert small.all() and large.all()


@pytest.mark.parametrize("mu", [0.0, -1.0])
def test_skellam_without_noise_is_not_private(mu: float) -> None:
    assert np.all(np.isinf(skellam_rdp(ORDERS, 1.0, 1.0, mu)))
    assert skellam_rdp(ORDERS, 1.0, 1.0, mu).shape == (len(ORDERS),)


@pytest.mark.parametrize(
    "l2,l1,s,n,d",
    [(2.0, 6.0, 0.3, 3, 4), (2.0, 6.0, 0.6, 5, 16), (10.0, 40.0, 1.0, 10, 100),
     (3.0, 9.0, 0.25, 2, 9), (50.0, 500.0, 4.0, 20, 1000), (0.1, 5.0, 1.0, 3, 100)],
)
def test_ddgauss_rdp_matches_the_reference(l2: float, l1: float, s: float, n: int,
                                           d: int) -> None:
    a = np.asarray(ORDERS)
    np.testing.assert_allclose(ddgauss_rdp(ORDERS, l2, l1, s, n, d),
                               reference_ddgauss_rdp(a, l2, l1, s, n, d), rtol=1e-13)


def test_ddgauss_each_term_of_the_min_is_reached() -> None:
    """The grid above reaches all three forms of the min (so each constant matters)."""
    reached = set()
    for l2, l1, s, n, d in [(2.0, 6.0, 0.3, 3, 4), (2.0, 6.0, 0.6, 5, 16),
                            (10.0, 40.0, 1.0, 10, 100), (3.0, 9.0, 0.25, 2, 9),
                            (50.0, 500.0, 4.0, 20, 1000), (0.1, 5.0, 1.0, 3, 100)]:
        tau = ddgauss_tau(s, n)
        sigma = math.sqrt(n) * s
        a, b = l2 / sigma, l1 / sigma
        for al in ORDERS:
            terms = [al / 2 * a**2 + tau * d, al / 2 * (a**2 + 2 * b * tau + tau**2 * d),
                     al / 2 * (a + math.sqrt(d) * tau) ** 2]
            reached.add(int(np.argmin(terms)))
    assert reached == {0, 1, 2}, reached


def test_ddgauss_tau_matches_its_sum() -> None:
    assert ddgauss_tau(1.0, 1) == 0.0 and ddgauss_tau(1.0, 0) == 0.0
    for s, n in [(0.3, 2), (0.5, 7), (1.0, 30)]:
        want = 10 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
        assert ddgauss_tau(s, n) == pytest.approx(want, rel=1e-13)


@pytest.mark.parametrize("s,n", [(0.0, 5), (-1.0, 5), (1.0, 0)])
def test_ddgauss_without_noise_is_not_private(s: float, n: int) -> None:
    out = ddgauss_rdp(ORDERS, 1.0, 1.0, s, n, 4)
    assert out.shape == (len(ORDERS),) and np.all(np.isinf(out))


def test_gaussian_rdp_is_alpha_over_two_z_squared() -> None:
    for z in (0.5, 1.0, 2.5):
        np.testing.assert_allclose(gaussian_rdp(ORDERS, z),
                                   np.asarray(ORDERS) / (2 * z * z), rtol=1e-15)
    for z in (0.0, -1.0):
        out = gaussian_rdp(ORDERS, z)
        assert out.shape == (len(ORDERS),) and np.all(np.isinf(out))
    assert gaussian_rdp(ORDERS, 1.0).dtype == np.float64


@pytest.mark.parametrize("name", ["ddgauss", "skellam"])
def test_mechanism_rdp_routes_to_its_formula(name: str) -> None:
    mech = get_mechanism(name)
    got = mech.rdp(ORDERS, 2.0, 6.0, 0.5, 4, 9)
    if name == "ddgauss":
        want = reference_ddgauss_rdp(np.asarray(ORDERS), 2.0, 6.0, 0.5, 4, 9)
    else:
        want = reference_skellam_rdp(np.asarray(ORDERS), 2.0, 6.0, 4 * 0.25)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    assert mech.noise_variance(0.5, 4) == pytest.approx(1.0)


# ------------------------------------------------------------------ the mechanism registry


def _toy(name: str, proven: bool = True) -> type:
    from dp.mechanisms import NoNoise

    return type("Toy", (NoNoise,), {"name": name, "proven": proven})


def test_register_mechanism_class_instance_duplicate_and_replace() -> None:
    from dp.mechanisms import MECHANISM_REGISTRY, register_mechanism

    cls = _toy("toy_gaps_a")
    try:
        assert register_mechanism(cls) is cls  # a class decorator returns the class
        assert isinstance(MECHANISM_REGISTRY["toy_gaps_a"], cls)
        assert get_mechanism("toy_gaps_a") is MECHANISM_REGISTRY["toy_gaps_a"]
        with pytest.raises(ValueError, match=r"^mechanism 'toy_gaps_a' is already registered$"):
            register_mechanism(cls)
        other = _toy("toy_gaps_a")()
        assert register_mechanism(other, replace=True) is other
        assert MECHANISM_REGISTRY["toy_gaps_a"] is other
    finally:
        MECHANISM_REGISTRY.pop("toy_gaps_a", None)


@pytest.mark.parametrize("bad", ["", "not an identifier", 3])
def test_register_mechanism_refuses_bad_names(bad: object) -> None:
    from dp.mechanisms import MECHANISM_REGISTRY, register_mechanism

    before = dict(MECHANISM_REGISTRY)
    with pytest.raises(ValueError, match=r"^mechanism name must be a non-empty identifier, got "):
        register_mechanism(_toy(bad)())  # type: ignore[arg-type]
    assert dict(MECHANISM_REGISTRY) == before


def test_register_mechanism_refuses_what_is_not_a_mechanism() -> None:
    from dp.mechanisms import register_mechanism

    for bad in (object(), int, "ddgauss"):
        with pytest.raises(TypeError, match=r"^needs a NoiseMechanism subclass or instance, "):
            register_mechanism(bad)  # type: ignore[arg-type]


def test_accounting_note_only_for_unproven_mechanisms() -> None:
    from dp.mechanisms import MECHANISM_REGISTRY, accounting_note, register_mechanism

    for name in ("ddgauss", "skellam", "none", "no_such_mechanism"):
        assert accounting_note(name) is None
    assert accounting_note("gaussian") == (
        "gaussian: the sum of rounded shares is accounted as a Gaussian, a close "
        "approximation, not a proof; use ddgauss or skellam for a proven bound")
    register_mechanism(_toy("toy_gaps_b", proven=False))
    try:
        assert accounting_note("toy_gaps_b").startswith("toy_gaps_b: the sum of rounded")
    finally:
        MECHANISM_REGISTRY.pop("toy_gaps_b", None)
