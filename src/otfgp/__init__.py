"""otfgp: on-the-fly Gaussian-process force fields with trustworthy uncertainty."""
from ._core import InputError, ModelFileError, NotTrainedError, set_num_threads, get_max_threads
from .calculator import GPCalculator
from .gp import GaussianProcess, KernelMatrixError, Prediction
from .label_checks import LabelRejected
from .otf import OTF, LabellerError, OTFOptions

__all__ = [
    "GaussianProcess",
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
]
__version__ = "0.1.0"
