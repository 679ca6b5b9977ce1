"""LAMMPS glue on the Python side: where LAMMPS finds the plugin (:mod:`.plugin`) and the
Python half of ``fix otfgp/learn`` (:mod:`.learn`). Importing this package never imports
``lammps`` (LAMMPS's own package imports :mod:`.plugin` while it is being imported)."""
