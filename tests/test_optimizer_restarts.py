"""ABNORMAL L-BFGS-B exits away from a stationary point are restarted; the report warns only
when the restarts keep finding real gains (otfgp.gp.ABNORMAL_RESTARTS, NEGLIGIBLE_GAIN)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.optimize
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
import otfgp.gp as gpmod

REAL_MINIMIZE = scipy.optimize.minimize


def small_model() -> otfgp.GaussianProcess:
    rng = np.random.default_rng(4)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.5})
    for _ in range(2):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        gp.add_training_data(atoms)
    return gp


def abnormal(res: scipy.optimize.OptimizeResult, jac_value: float = 5.0) -> scipy.optimize.OptimizeResult:
    """The same point, reported as a failed line search with a non-vanishing gradient."""
    res.message, res.success = "ABNORMAL: ", False
    res.jac = np.full_like(np.asarray(res.jac, dtype=float), jac_value)
    return res


def first_run_abnormal(calls: dict[str, int]):
    """A stand-in for scipy.optimize.minimize that runs the real one but reports its first
    run as ABNORMAL with a large gradient (counting the runs in ``calls["n"]``)."""
    def fake(fun, x0, **kw):
        calls["n"] += 1
        res = REAL_MINIMIZE(fun, x0, **kw)
        return abnormal(res) if calls["n"] == 1 else res
    return fake


def reference() -> tuple[dict[str, float], float]:
    gp = small_model()
    gp.train()
    return gp.hyperparameters, gp.last_optimization.log_likelihood


def test_abnormal_exit_at_the_optimum_is_converged(monkeypatch, caplog):
    """A run that ends at the optimum but says ABNORMAL: the restart gains nothing, so the
    point counts as converged, with the same hyperparameters and no warning."""
    ref, ll = reference()
    calls = {"n": 0}
    monkeypatch.setattr(gpmod.scipy.optimize, "minimize", first_run_abnormal(calls))
    gp = small_model()
    with caplog.at_level(logging.WARNING, logger="otfgp"):
        gp.train()
    report = gp.last_optimization
    assert not report.abnormal and report.converged
    assert "stopped abnormally" not in caplog.text
    assert calls["n"] >= 2  # the first start was restarted
    for k, v in ref.items():
        assert gp.hyperparameters[k] == pytest.approx(v, rel=1e-3), k
    assert report.log_likelihood == pytest.approx(ll, abs=1e-3)


def test_abnormal_exit_far_from_the_optimum_goes_on(monkeypatch):
    """A run stopped after 2 iterations and reported ABNORMAL: the restart goes on to the
    optimum of an undisturbed training."""
    ref, ll = reference()
    calls = {"n": 0}

    def fake(fun, x0, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            return abnormal(REAL_MINIMIZE(fun, x0, **{**kw, "options": {"maxiter": 2}}))
        return REAL_MINIMIZE(fun, x0, **kw)

    monkeypatch.setattr(gpmod.scipy.optimize, "minimize", fake)
    gp = small_model()
    gp.train()
    assert not gp.last_optimization.abnormal
    assert gp.last_optimization.log_likelihood == pytest.approx(ll, abs=1e-3)
    for k, v in ref.items():
        assert gp.hyperparameters[k] == pytest.approx(v, rel=1e-2), k


def test_abnormal_exits_that_keep_gaining_are_warned(monkeypatch, caplog):
    """Every run says ABNORMAL and each restart lowers the objective by 1 nat: after
    ABNORMAL_RESTARTS restarts the optimisation is reported abnormal and warned about."""
    calls = {"n": 0}

    def fake(fun, x0, **kw):
        calls["n"] += 1
        value, grad = fun(np.asarray(x0, dtype=float))
        return scipy.optimize.OptimizeResult(x=np.asarray(x0, dtype=float), fun=value - calls["n"],
                                             jac=np.full_like(grad, 5.0), nit=3, success=False,
                                             message="ABNORMAL: ")

    monkeypatch.setattr(gpmod.scipy.optimize, "minimize", fake)
    gp = small_model()
    with caplog.at_level(logging.WARNING, logger="otfgp"):
        gp.train()
    assert gp.last_optimization.abnormal
    assert "stopped abnormally" in caplog.text
    # one start (an untrained model's warm start is the defaults), then every restart
    assert calls["n"] == 1 + gpmod.ABNORMAL_RESTARTS


def test_scalable_gp_follows_the_same_rule(monkeypatch, caplog):
    """ScalableGP's optimisation uses the same restarts: an ABNORMAL exit at its optimum is
    converged, not abnormal."""
    def frames():
        rng = np.random.default_rng(5)
        out = []
        for _ in range(2):
            atoms = bulk("Al", "fcc", a=4.05, cubic=True)
            atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
            atoms.calc = EMT()
            out.append(atoms)
        return out

    def model() -> otfgp.ScalableGP:
        sg = otfgp.ScalableGP(["Al"], {"twobody": 4.5}, lower=1.8)
        for atoms in frames():
            sg.add_training_data(atoms)
        return sg

    ref = model()
    ref.train(max_iterations=30)
    calls = {"n": 0}
    monkeypatch.setattr(gpmod.scipy.optimize, "minimize", first_run_abnormal(calls))
    sg = model()
    with caplog.at_level(logging.WARNING, logger="otfgp"):
        sg.train(max_iterations=30)
    assert calls["n"] == 2
    assert not sg.last_optimization.abnormal and sg.last_optimization.converged
    for k, v in ref.hyperparameters.items():
        assert sg.hyperparameters[k] == pytest.approx(v, rel=1e-3), k
