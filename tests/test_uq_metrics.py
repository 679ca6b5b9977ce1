"""otfgp.uq_metrics against hand-computed values, calibrated and miscalibrated Gaussian
samples, and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from otfgp import uq_metrics as uq

E = np.array([1.0, -2.0, 0.5])
S = np.array([1.0, 1.0, 2.0])


def test_hand_computed_values():
    # z = [1, -2, 0.25]
    nll = np.mean([0.5 * math.log(2 * math.pi) + math.log(s) + 0.5 * (e / s) ** 2 for e, s in zip(E, S)])
    assert uq.gaussian_nll(E, S) == pytest.approx(nll)
    assert uq.gaussian_nll(E, S) == pytest.approx(0.5 * math.log(2 * math.pi) + (math.log(2) + 0.5 + 2 + 0.03125) / 3)
    assert uq.mean_squared_z(E, S) == pytest.approx((1 + 4 + 0.0625) / 3)
    assert uq.coverage(E, S, 1) == pytest.approx(2 / 3)  # |z| = 1 counts as inside
    assert uq.coverage(E, S, 2) == pytest.approx(1.0)
    assert uq.coverage(E, S, 0.5) == pytest.approx(1 / 3)
    assert uq.rmse_over_rms_std(E, S) == pytest.approx(math.sqrt((1 + 4 + 0.25) / 3) / math.sqrt(6 / 3))
    # |e| = [1, 2, 0.5] ranks [2, 3, 1]; s ranks [1.5, 1.5, 3]
    r = np.corrcoef([2, 3, 1], [1.5, 1.5, 3])[0, 1]
    assert uq.spearman(E, S) == pytest.approx(r)


def test_reliability_curve_by_hand():
    # |z| = [1, 2, 0.25]; the central p-interval is |z| <= Phi^-1(0.5 + p/2)
    p, observed = uq.reliability_curve(E, S, [0.1, 0.5, 0.6827, 0.9, 0.96])
    # q(0.1)=0.126, q(0.5)=0.674, q(0.6827)=1.0000, q(0.9)=1.645, q(0.96)=2.054
    np.testing.assert_allclose(observed, [0, 1 / 3, 2 / 3, 2 / 3, 1], atol=1e-12)
    np.testing.assert_array_equal(p, [0.1, 0.5, 0.6827, 0.9, 0.96])
    p, observed = uq.reliability_curve(E, S)
    assert len(p) == 19 and np.all(np.diff(observed) >= 0)


def test_miscalibration_area_of_a_single_entry():
    # one entry with |z| = q: observed(p) = 1 for p >= p0 = 2 Phi(q) - 1, else 0;
    # area = int_0^p0 p dp + int_p0^1 (1 - p) dp = p0^2 / 2 + (1 - p0)^2 / 2
    from scipy.stats import norm

    q = 1.0
    p0 = 2 * norm.cdf(q) - 1
    expected = p0 ** 2 / 2 + (1 - p0) ** 2 / 2
    assert uq.miscalibration_area([q], [1.0], grid=20000) == pytest.approx(expected, abs=1e-4)


def test_calibrated_gaussian_sample():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.01, 0.2, 200_000)
    e = rng.normal(0.0, s)
    assert uq.coverage(e, s, 1) == pytest.approx(0.6827, abs=0.005)
    assert uq.coverage(e, s, 2) == pytest.approx(0.9545, abs=0.005)
    assert uq.miscalibration_area(e, s) < 0.01
    assert uq.mean_squared_z(e, s) == pytest.approx(1.0, abs=0.02)
    assert uq.rmse_over_rms_std(e, s) == pytest.approx(1.0, abs=0.02)
    p, observed = uq.reliability_curve(e, s)
    np.testing.assert_allclose(observed, p, atol=0.006)
    # NLL of the true model: E[log s] + 0.5 log(2 pi) + 0.5
    assert uq.gaussian_nll(e, s) == pytest.approx(np.mean(np.log(s)) + 0.5 * math.log(2 * math.pi) + 0.5, abs=0.01)
    assert uq.spearman(e, s) > 0.3  # the std does rank the errors


def test_overconfident_sample_is_caught():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.01, 0.2, 200_000)
    e = rng.normal(0.0, s)
    small = s / 3
    assert uq.miscalibration_area(e, small) > 0.2
    assert uq.mean_squared_z(e, small) == pytest.approx(9.0, rel=0.03)
    assert uq.coverage(e, small, 1) == pytest.approx(0.2611, abs=0.005)  # erf(1/(3 sqrt 2))
    assert uq.gaussian_nll(e, small) > uq.gaussian_nll(e, s) + 2


def test_roc_auc():
    assert uq.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert uq.roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert uq.roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # pairs (pos, neg): (0.3 vs 0.1, 0.4) -> 1 + 0; (0.4 vs 0.1, 0.4) -> 1 + 0.5: 2.5 / 4
    assert uq.roc_auc([0.1, 0.3, 0.4, 0.4], [False, True, True, False]) == pytest.approx(2.5 / 4)


def test_zero_stds():
    assert uq.gaussian_nll([0.1, 0.0], [1.0, 0.0]) == math.inf
    assert uq.mean_squared_z([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert uq.mean_squared_z([0.0, 0.1], [1.0, 0.0]) == math.inf
    assert uq.coverage([0.0, 0.1, 0.1], [0.0, 0.0, 1.0], 1) == pytest.approx(2 / 3)
    assert uq.rmse_over_rms_std([0.1, 0.1], [0.0, 0.0]) == math.inf
    assert uq.rmse_over_rms_std([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert math.isnan(uq.spearman([0.1, 0.2, 0.3], [0.0, 0.0, 0.0]))


@pytest.mark.parametrize("fn", [uq.gaussian_nll, uq.mean_squared_z, uq.coverage, uq.reliability_curve,
                                uq.miscalibration_area, uq.spearman, uq.rmse_over_rms_std])
@pytest.mark.parametrize("errors,stds,match", [
    ([1.0, 2.0], [1.0], "shape"),
    ([], [], "empty"),
    ([1.0, 2.0], [1.0, -1.0], "negative"),
    ([1.0, 2.0], [1.0, np.nan], "NaN"),
    ([1.0, np.nan], [1.0, 1.0], "NaN"),
])
def test_bad_input_raises(fn, errors, stds, match):
    with pytest.raises(ValueError, match=match):
        fn(errors, stds)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="k must"):
        uq.coverage(E, S, -1)
    with pytest.raises(ValueError, match="levels"):
        uq.reliability_curve(E, S, [0.5, 1.5])
    with pytest.raises(ValueError, match="positives and negatives"):
        uq.roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="differ"):
        uq.roc_auc([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="booleans"):
        uq.roc_auc([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="at least 2"):
        uq.spearman([1.0], [1.0])
