"""Offline / iterative active learning: simulate with the model, label a batch, retrain.

- :class:`ActiveLearner` (:mod:`otfgp.active.loop`): the loop, its options
  (:class:`ActiveOptions`), log, checkpoints and resume;
- :class:`Task` (:mod:`otfgp.active.task`): what a problem provides (simulation, special
  queries, termination test, state);
- :class:`RelaxTask` (:mod:`otfgp.active.relax`): relaxation to ``fmax`` on the oracle;
- :class:`NEBTask` (:mod:`otfgp.active.neb`): climbing-image NEB until the oracle confirms
  the predicted saddle;
- :class:`MDTask` (:mod:`otfgp.active.md`): MD until the uncertainty or audit error is small.

The command line is ``otfgp active CONFIG`` (:mod:`otfgp.active.config`); see docs/active.md.
"""
from .loop import QUERIES, ActiveLearner, ActiveOptions, ActiveResult
from .md import MDTask
from .neb import NEBTask
from .relax import RelaxTask
from .task import IterationData, Task, constrained_forces, free_atoms, max_force

__all__ = ["ActiveLearner", "ActiveOptions", "ActiveResult", "QUERIES", "RelaxTask", "NEBTask", "MDTask", "Task", "IterationData",
           "free_atoms", "constrained_forces", "max_force"]
