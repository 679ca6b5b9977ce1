"""Bad input raises a clear error naming the problem."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import otfgp
from otfgp import KernelMatrixError
from conftest import displaced_al


@pytest.fixture
def al_gp():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5})
    gp.add_training_data(displaced_al(np.random.default_rng(0)), atom_indices=range(4))
    gp.train(optimize=False)
    return gp


def test_unknown_species(al_gp):
    atoms = bulk("Cu", "fcc", a=3.6)
    with pytest.raises(ValueError, match="unknown species Cu"):
        al_gp.predict(atoms)


@pytest.mark.parametrize("what", ["nan", "inf"])
def test_non_finite_positions(al_gp, what):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.positions[2, 1] = np.nan if what == "nan" else np.inf
    with pytest.raises(ValueError, match="atom 2 is not finite"):
        al_gp.predict(atoms)


def test_non_finite_cell(al_gp):
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.cell[0, 0] = np.nan
    with pytest.raises(ValueError, match="cell contains NaN"):
        al_gp.predict(atoms)


def test_overlapping_atoms(al_gp):
    atoms = Atoms("Al2", positions=[[0, 0, 0], [0.3, 0, 0]])
    with pytest.raises(ValueError, match="closer than the minimum"):
        al_gp.predict(atoms)


def test_overlapping_periodic_image(al_gp):
    atoms = Atoms("Al", cell=[0.4, 5, 5], pbc=True)
    with pytest.raises(ValueError, match="closer than the minimum"):
        al_gp.predict(atoms)


@pytest.mark.parametrize("cutoffs", [{"twobody": 0.0}, {"twobody": -1.0}, {"twobody": 5.0, "threebody": 0},
                                     {"twobody": float("nan")}, {}, {"fourbody": 3.0}])
def test_bad_cutoffs(cutoffs):
    with pytest.raises(ValueError, match="cutoff"):
        otfgp.GaussianProcess(["Al"], cutoffs)


def test_threebody_cutoff_larger_than_twobody_is_supported():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 3.0, "threebody": 4.0})
    gp.add_training_data(displaced_al(np.random.default_rng(0)), atom_indices=[0])
    gp.train(optimize=False)
    assert np.isfinite(gp.predict(bulk("Al", "fcc", a=4.05, cubic=True)).energy)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="sigma2 must be a positive number"):
        otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, hyperparameters={"sigma2": -1.0})
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, hyperparameters={"sigma_x": 1.0})


def test_unknown_species_name():
    with pytest.raises(ValueError, match="unknown chemical symbol"):
        otfgp.GaussianProcess(["Xx"], {"twobody": 5.0})


def test_predict_on_untrained_model():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0})
    with pytest.raises(otfgp.NotTrainedError, match="not trained"):
        gp.predict(bulk("Al"))
    with pytest.raises(otfgp.NotTrainedError, match="no training data"):
        gp.train()


def test_predict_after_adding_data_needs_training(al_gp):
    al_gp.add_training_data(displaced_al(np.random.default_rng(3)), atom_indices=[1])
    with pytest.raises(otfgp.NotTrainedError):
        al_gp.predict(bulk("Al"))


def test_labels_of_wrong_shape():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0})
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    with pytest.raises(ValueError, match=r"forces must have shape \(4, 3\)"):
        gp.add_training_data(atoms, forces=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="stress must have 6"):
        gp.add_training_data(atoms, forces=False, energy=1.0, stress=np.zeros(5))
    with pytest.raises(ValueError, match="force labels contain NaN"):
        gp.add_training_data(atoms, forces=np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="out of range"):
        gp.add_training_data(atoms, forces=np.zeros((1, 3)), atom_indices=[7])
    assert gp.n_labels == 0  # failed additions leave nothing behind


def test_non_positive_definite_kernel_reports_noise():
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 3.5},
                               hyperparameters={"sigma2": 1e3, "sigma3": 1e3, "noise_force": 1e-9},
                               bounds={"noise_force": (1e-9, 1.0)})
    atoms = displaced_al(np.random.default_rng(0))
    for _ in range(3):  # the same environments three times: a singular kernel matrix
        gp.add_training_data(atoms)
    with pytest.raises(KernelMatrixError, match="increase the noise"):
        gp.train(optimize=False)


def test_wrong_atoms_type(al_gp):
    with pytest.raises(TypeError, match="ase.Atoms"):
        al_gp.predict(np.zeros((3, 3)))


@pytest.mark.parametrize("bound, message", [
    ((1.0, 0.1), r"bounds of ell2 are inverted: lower 1 > upper 0.1"),
    ((0.7, 0.7), r"bounds of ell2 have zero width \(0.7, 0.7\)"),
    ((0.0, 2.0), r"bounds of ell2 must be positive and finite, got \(0, 2\)"),
    ((0.5, float("inf")), "bounds of ell2 must be positive and finite"),
    ((0.5,), r"bounds of ell2 must be a pair \(lower, upper\)"),
])
def test_bad_bounds_are_named_when_given(bound, message):
    """Inverted or empty bounds used to surface at train() as 'raise the noise bounds'."""
    with pytest.raises(otfgp.InputError, match=message):
        otfgp.GaussianProcess(["Al"], {"twobody": 5.0}, bounds={"ell2": bound})


def test_bad_bounds_set_later_are_named_at_train(al_gp):
    al_gp.bounds["noise_force"] = (0.2, 0.01)
    with pytest.raises(otfgp.InputError, match="bounds of noise_force are inverted"):
        al_gp.train()


@pytest.mark.parametrize("make,expected", [
    (lambda: otfgp.GaussianProcess("CO", {"twobody": 4.0}), r"species must be a list of chemical symbols, e.g. \['CO'\]"),
    (lambda: otfgp.GaussianProcess([True], {"twobody": 4.0}), "species must be chemical symbols"),
    (lambda: otfgp.ScalableGP("Al", {"twobody": 4.0}), "species must be a list"),
    (lambda: otfgp.GaussianProcess(["Al"], {"twobody": True}), "cutoff 'twobody' must be a positive number"),
    (lambda: otfgp.ScalableGP(["Al"], {"twobody": 4.0, "threebody": -1.0}), "cutoff 'threebody' must be a positive"),
    (lambda: otfgp.GaussianProcess(["Al"], {"twobody": 4.0}, hyperparameters={"sigma2": "1"}),
     "hyperparameter sigma2 must be a positive number, got '1'"),
    (lambda: otfgp.ScalableGP(["Al"], {"twobody": 4.0}, hyperparameters={"ell2": True}),
     "hyperparameter ell2 must be a positive number, got True"),
])
def test_model_arguments_that_used_to_be_misread(make, expected):
    """A string species was read letter by letter ("CO": carbon and oxygen), True as a 1 A
    cutoff or a 1.0 hyperparameter, "1" converted: all refused now."""
    with pytest.raises(ValueError, match=expected):
        make()


@pytest.mark.parametrize("kwargs,expected", [
    ({"optimize": "no"}, "optimize must be true or false"),
    ({"max_iterations": "5"}, "max_iterations must be a non-negative integer"),
    ({"restarts": -1}, "restarts must be a non-negative integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_train_arguments(al_gp, kwargs, expected):
    before = al_gp.hyperparameters
    with pytest.raises(ValueError, match=expected):
        al_gp.train(**kwargs)
    assert al_gp.hyperparameters == before


def test_numpy_bool_label_flags_are_flags():
    """np.False_ used to become a 0 eV energy label and np.True_ a 1 eV one."""
    atoms = displaced_al(np.random.default_rng(1))
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0})
    gp.add_training_data(atoms, forces=np.True_, energy=np.False_, atom_indices=[0])
    assert gp.n_labels == 3 and gp.training_structure(0)["energy"] is None
    gp.add_training_data(atoms, forces=np.False_, energy=np.True_)
    assert gp.training_structure(1)["energy"] == pytest.approx(atoms.get_potential_energy(), rel=1e-12)


def test_a_threebody_cutoff_typo_is_named_not_an_out_of_memory():
    """30 for 3.0: about 6800 neighbours per Al atom, 23 million triplets each, once ate all
    the memory; the per-centre limit names the cutoff before anything is allocated, in the
    structure path (training, prediction) and in the per-centre MD path."""
    gp = otfgp.GaussianProcess(["Al"], {"twobody": 5.0, "threebody": 30.0})
    atoms = displaced_al(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"neighbours within the 3-body cutoff 30.0+ A .*is it a typo"):
        gp.add_training_data(atoms, atom_indices=[0])
    assert gp.n_labels == 0
    dimer = Atoms("Al2", positions=[[0, 0, 0], [0, 0, 2.6]], cell=[40, 40, 40], pbc=False)
    dimer.calc = EMT()
    gp.add_training_data(dimer)  # one neighbour: trainable, then asked about the bulk
    gp.train(optimize=False)
    with pytest.raises(ValueError, match="is it a typo"):
        gp.predict(atoms)
    with pytest.raises(ValueError, match="is it a typo"):  # the per-centre path of LAMMPS
        gp.core.predict_local(*gp._structure_arrays(atoms), True)


def test_model_file_paths_that_are_directories(al_gp, tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="adir is a directory, not a model file"):
        otfgp.GaussianProcess.load(tmp_path / "adir")
    with pytest.raises(ValueError, match="cannot move model file into place"):
        al_gp.save(tmp_path / "adir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]  # no .tmp left behind
