"""Logging convention of the package.

Every module logs to a child of the ``otfgp`` logger and never configures logging: that is
the application's choice. Without any configuration Python shows only warnings and errors
(its last-resort handler), so an on-the-fly run in a script is silent about its progress
until the script configures logging, for example with :func:`log_to_console`. The ``otfgp``
command configures it itself (``-q``, ``-v``, and ``RUN_DIR/otfgp.log`` for ``otfgp otf``).
"""
from __future__ import annotations

import logging
import sys
from typing import TextIO

_HANDLER_NAME = "otfgp.console"


def log_to_console(level: int | str = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Show otfgp's log messages at ``level`` and above (e.g. ``"DEBUG"``) on ``stream``
    (default stderr), as ``HH:MM:SS LEVEL message``. Only the ``otfgp`` logger is touched
    (other libraries' logging stays as configured); calling it again replaces the
    handler instead of adding a second one. The records still propagate to the root logger,
    so a script that also configures root logging to the console sees them twice; use one
    or the other. Returns the handler (``logging.getLogger("otfgp").removeHandler(h)``
    undoes it)."""
    logger = logging.getLogger("otfgp")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
