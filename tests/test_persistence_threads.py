"""Model files round-trip exactly; OpenMP thread count does not change results."""
import struct

import numpy as np
import pytest

import otfgp
from conftest import displaced_al, random_triclinic


def _predict_all(gp, atoms):
    p = gp.predict(atoms)
    return np.concatenate([[p.energy, p.energy_variance], p.forces.ravel(), p.force_variances.ravel(),
                           p.local_energies, p.local_energy_variances, p.stress, p.stress_variance])


def test_save_load_bit_identical(toy_model, rng, tmp_path):
    path = tmp_path / "model.otfgp"
    toy_model.save(path)
    loaded = otfgp.GaussianProcess.load(path)
    assert loaded.hyperparameters == toy_model.hyperparameters
    assert loaded.cutoffs == toy_model.cutoffs and loaded.species == toy_model.species
    atoms = random_triclinic(rng, n=7)
    a, b = _predict_all(toy_model, atoms), _predict_all(loaded, atoms)
    assert np.array_equal(a, b)  # bit for bit
    # The loaded model keeps learning: add data and extend the factorisation.
    loaded.add_training_data(atoms, forces=np.zeros((len(atoms), 3)))
    loaded.train(optimize=False)
    assert loaded.n_labels == toy_model.n_labels + 3 * len(atoms)


def test_untrained_model_round_trip(tmp_path):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 4.0})
    gp.add_training_data(displaced_al(np.random.default_rng(1)), atom_indices=[0, 1])
    gp.save(tmp_path / "m.otfgp")
    loaded = otfgp.GaussianProcess.load(tmp_path / "m.otfgp")
    assert not loaded.trained and loaded.n_labels == 6
    assert "threebody" not in loaded.cutoffs


def test_one_and_two_threads_agree(rng):
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    for _ in range(2):
        gp.add_training_data(displaced_al(rng), atom_indices=range(10), energy=True, stress=True)
    atoms = displaced_al(rng)
    results = []
    for threads in (1, 2):
        otfgp.set_num_threads(threads)
        gp._reset_cache()
        value, grad = gp.log_likelihood_gradient()
        gp.train(optimize=False)
        results.append((value, np.array(list(grad.values())), _predict_all(gp, atoms)))
    otfgp.set_num_threads(otfgp.get_max_threads())
    (v1, g1, p1), (v2, g2, p2) = results
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=0)
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-300)


def test_newer_format_version_refused(toy_model, tmp_path):
    data = bytearray(toy_model.core.to_bytes())
    version = struct.unpack_from("<I", data, 8)[0]
    struct.pack_into("<I", data, 8, version + 1)
    path = tmp_path / "new.otfgp"
    path.write_bytes(bytes(data))
    with pytest.raises(otfgp.ModelFileError, match="newer"):
        otfgp.GaussianProcess.load(path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_corrupt_model_file_refused(toy_model, tmp_path, damage):
    data = bytearray(toy_model.core.to_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "magic":
        data[0:4] = b"JUNK"
    else:
        data = bytearray()
    path = tmp_path / "bad.otfgp"
    path.write_bytes(bytes(data))
    with pytest.raises(otfgp.ModelFileError, match="truncated|corrupt|not an otfgp"):
        otfgp.GaussianProcess.load(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(otfgp.ModelFileError, match="cannot open"):
        otfgp.GaussianProcess.load(tmp_path / "nope.otfgp")
