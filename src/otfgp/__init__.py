"""otfgp: on-the-fly Gaussian-process force fields with trustworthy uncertainty."""
from ._core import InputError, ModelFileError, NotTrainedError, set_num_threads, get_max_threads
from .calculator import GPCalculator
from .gp import GaussianProcess, KernelMatrixError, Prediction
from .label_checks import LabelRejected
from .logs import log_to_console
from .otf import OTF, LabellerError, OTFOptions
from .scalable import ScalableGP

__all__ = [
    "GaussianProcess",
    "ScalableGP",
    "GPCalculator",
    "OTF",
    "OTFOptions",
    "LabellerError",
    "LabelRejected",
    "Prediction",
    "KernelMatrixError",
    "InputError",
    "ModelFileError",
    "NotTrainedError",
    "set_num_threads",
    "get_max_threads",
    "log_to_console",
]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is set)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otfgp")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


__version__ = _version()
