// Exception types of the core. Bindings map them to Python exceptions, the LAMMPS glue to
// LAMMPS errors; the core itself never prints or aborts.
#pragma once
#include <stdexcept>
#include <string>

namespace otfgp {

// Bad user input: shapes, species, coordinates, cutoffs, hyperparameters.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A model file that is missing, truncated, corrupt or of an unknown version.
struct ModelFileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An operation that needs a trained model was called on an untrained one.
struct NotTrainedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace otfgp
