// Model file: versioned, little-endian binary, readable without Python. Layout in
// docs/model_format.md. Doubles are stored bit-exactly, so a save/load round trip
// reproduces predictions bit for bit.
#pragma once
#include <string>

#include "model.h"

namespace otfgp {

// 1: exact GP; 2: adds the optional maps; 3: the variance basis degree; 4: the optional
// variance calibration; 5: the optional analytic baseline; 6: the optional external
// (Python-only) baseline's spec and its values per training structure; 7: spline tables with
// their mean in the variance basis; 8: each calibration map's force-scale radius. Every older
// version still loads (a file before 4 uncalibrated, before 5 without a baseline, before 8
// with maps that scale with the atom's own force).
constexpr unsigned kModelFormatVersion = 8;
// The first version that stores the calibration.
constexpr unsigned kCalibrationFormatVersion = 4;
// The first version that stores the baseline.
constexpr unsigned kBaselineFormatVersion = 5;
// The first version that stores an external baseline.
constexpr unsigned kExternalBaselineFormatVersion = 6;
// First version whose spline tables may carry their mean in the variance basis (an exported
// ScalableGP, possibly a model without training data).
constexpr unsigned kBasisMeanFormatVersion = 7;
// First version whose calibration maps store their force-scale radius.
constexpr unsigned kScaleRadiusFormatVersion = 8;

std::string serialize_model(const Model& m);
Model deserialize_model(const std::string& bytes);  // throws ModelFileError

// Writes atomically (temporary file + rename), so a crash never leaves a half-written model.
void save_model(const Model& m, const std::string& path);
Model load_model(const std::string& path);

}  // namespace otfgp
