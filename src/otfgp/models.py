"""The model kinds the learners and the command line work with, and reading either from a
file: the exact :class:`otfgp.GaussianProcess` and the reduced-rank
:class:`otfgp.ScalableGP` (docs/scalable.md)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from .gp import GaussianProcess
    from .scalable import ScalableGP

    Model = Union[GaussianProcess, ScalableGP]

#: ``[model] kind`` values (docs/config.md).
MODEL_KINDS = ("exact", "scalable", "auto")

_ZIP_MAGIC = b"PK\x03\x04"  # ScalableGP.save writes a (compressed) .npz, a zip archive


def is_scalable(model: object) -> bool:
    """True for a :class:`otfgp.ScalableGP` (no stored label rows, mapped by construction)."""
    from .scalable import ScalableGP

    return isinstance(model, ScalableGP)


def load_model(path: str | os.PathLike) -> "Model":
    """A model file of either kind (told apart by its first bytes), loaded by its class.

    Raises:
        ValueError: not a readable model file of either kind (the loader's message).
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        from .scalable import ScalableGP

        return ScalableGP.load(path)
    from .gp import GaussianProcess

    return GaussianProcess.load(path)
