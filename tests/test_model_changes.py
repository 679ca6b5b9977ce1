"""Saving a model after changing it (issue 12, point 4): maps tabulate one solution, so new
data, new hyperparameters or retraining drop them, and every saved model loads again with
its labels."""
from __future__ import annotations

import logging
import struct

import numpy as np
import pytest

import otfgp
from conftest import displaced_al


def mapped_model() -> otfgp.GaussianProcess:
    rng = np.random.default_rng(4)
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2})
    gp.add_training_data(displaced_al(rng), atom_indices=rng.choice(32, 6, replace=False))
    gp.train(optimize=False)
    gp.map(variance=False, grid2=48, grid3=8)
    assert gp.mapped
    return gp


def test_map_add_data_save_load(tmp_path, caplog):
    gp = mapped_model()
    extra = displaced_al(np.random.default_rng(5))
    with caplog.at_level(logging.INFO, logger="otfgp.gp"):
        gp.add_training_data(extra, atom_indices=[0, 3, 7], energy=True)
    assert not gp.mapped and not gp.trained
    assert any("adding training data dropped the maps" in r.getMessage() for r in caplog.records)
    gp.save(tmp_path / "m.otfgp")
    back = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert back.n_labels == gp.n_labels and back.n_training_structures == 2 and not back.mapped
    np.testing.assert_array_equal(back.core.labels, gp.core.labels)  # no label lost
    # trained after loading, it is the model that was never mapped
    never_mapped = otfgp.GaussianProcess(["Al"], {"twobody": 4.5, "threebody": 3.2})
    for k in range(gp.n_training_structures):
        s = gp.training_structure(k)
        forces = np.zeros((len(s["atoms"]), 3))
        forces[s["force_atoms"]] = s["forces"]
        never_mapped.add_training_data(s["atoms"], forces=forces, atom_indices=s["force_atoms"],
                                       energy=False if s["energy"] is None else s["energy"])
    back.train(optimize=False)
    never_mapped.train(optimize=False)
    probe = displaced_al(np.random.default_rng(6))
    a, b = back.predict(probe, variance="exact"), never_mapped.predict(probe, variance="exact")
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.force_variances, b.force_variances, rtol=1e-10, atol=0)


def test_map_set_hyperparameters_save_load(tmp_path, caplog):
    gp = mapped_model()
    with caplog.at_level(logging.INFO, logger="otfgp.gp"):
        gp.hyperparameters = {"sigma2": 0.3}
    assert not gp.mapped and not gp.trained
    assert any("setting hyperparameters dropped the maps" in r.getMessage() for r in caplog.records)
    gp.save(tmp_path / "m.otfgp")
    back = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert back.hyperparameters["sigma2"] == pytest.approx(0.3) and back.n_labels == gp.n_labels
    back.train(optimize=False)
    back.predict(displaced_al(np.random.default_rng(1)))


def test_retraining_drops_the_maps_with_a_log_line(caplog):
    gp = mapped_model()
    with caplog.at_level(logging.INFO, logger="otfgp.gp"):
        gp.train(optimize=False)
    assert gp.trained and not gp.mapped
    assert sum("dropped the maps" in r.getMessage() for r in caplog.records) == 1


def test_likelihood_at_other_length_scales_keeps_the_model(tmp_path):
    """Evaluating the likelihood elsewhere used to set trial length scales on the model,
    leaving it untrained with its maps (an unloadable save)."""
    gp = mapped_model()
    gp.log_likelihood({"ell2": 1.7, "ell3": 0.8})
    gp.log_likelihood_gradient({"ell2": 2.1})
    assert gp.trained and gp.mapped
    gp.save(tmp_path / "m.otfgp")
    assert otfgp.GaussianProcess.load(tmp_path / "m.otfgp").mapped


def _fnv1a(data: bytes) -> int:
    h = 1469598103934665603
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def test_file_with_stale_maps_from_earlier_versions_loads(tmp_path, caplog):
    """Files saved before the fix (maps, but the model untrained) load with their labels,
    the stale maps dropped with a warning."""
    gp = mapped_model()
    raw = gp.core.to_bytes()
    header, payload = raw[:20], bytearray(raw[20:-8])
    alpha = np.asarray(gp.core.alpha)
    marker = struct.pack("<Q", alpha.size) + alpha.tobytes()
    at = bytes(payload).index(marker) - 1  # the "trained" flag precedes alpha
    assert payload[at] == 1
    payload[at] = 0  # what the old code wrote after map -> add data / set hyperparameters
    (tmp_path / "old.otfgp").write_bytes(header + bytes(payload) + struct.pack("<Q", _fnv1a(payload)))
    with caplog.at_level(logging.WARNING, logger="otfgp.gp"):
        back = otfgp.GaussianProcess.load(tmp_path / "old.otfgp")
    assert not back.trained and not back.mapped and back.n_labels == gp.n_labels
    assert any("maps of an outdated solution" in r.getMessage() for r in caplog.records)
    back.train(optimize=False)
    np.testing.assert_allclose(back.core.alpha, gp.core.alpha, rtol=1e-9, atol=1e-12)
