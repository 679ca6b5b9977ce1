#include "model_io.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "errors.h"

namespace otfgp {
namespace {

constexpr char kMagic[8] = {'O', 'T', 'F', 'G', 'P', 'M', 'D', 'L'};

std::uint64_t fnv1a(const char* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ULL;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

// The format is little-endian; so are all machines this builds on (checked at compile time).
static_assert(sizeof(double) == 8, "IEEE double required");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the model format is little-endian");

class Writer {
 public:
  template <class T>
  void put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    put<std::uint64_t>(v.size());
    if (!v.empty()) buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string& str() { return buf_; }

 private:
  std::string buf_;
};

class Reader {
 public:
  Reader(const char* p, std::size_t n) : p_(p), n_(n) {}
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  template <class T>
  std::vector<T> get_vec(std::uint64_t max_count) {
    const auto n = get<std::uint64_t>();
    if (n > max_count) throw ModelFileError("model file is corrupt: implausible array length");
    need(n * sizeof(T));
    std::vector<T> v(n);
    if (n) std::memcpy(v.data(), p_ + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return v;
  }
  bool done() const { return pos_ == n_; }

 private:
  void need(std::size_t k) const {
    if (k > n_ - pos_) throw ModelFileError("model file is truncated");
  }
  const char* p_;
  std::size_t n_, pos_ = 0;
};

}  // namespace

std::string serialize_model(const Model& m) {
  Writer w;
  w.put_vec(m.atomic_numbers());
  w.put(m.cutoff2());
  w.put(m.cutoff3());
  for (double h : m.hyperparameters().as_array()) w.put(h);
  w.put_vec(m.energy_offsets());
  // Version 5: the baseline, before the training data because it defines their targets.
  const PairBaseline* base = m.baseline();
  w.put<std::uint8_t>(base ? static_cast<std::uint8_t>(base->spec().kind) : 0);
  if (base) {
    const BaselineSpec& b = base->spec();
    w.put(b.cutoff);
    w.put_vec(b.elements);
    std::vector<double> params;
    for (const auto& p : b.params) params.insert(params.end(), p.begin(), p.end());
    w.put_vec(params);
    w.put<std::uint64_t>(b.overrides.size());
    for (const auto& o : b.overrides) {
      w.put<std::int32_t>(o.z1);
      w.put<std::int32_t>(o.z2);
      for (double x : o.params) w.put(x);
    }
  }
  // Version 6: the external baseline's spec (empty: none); its values per structure below.
  const std::string& external = m.external_baseline();
  w.put_vec(std::vector<char>(external.begin(), external.end()));
  w.put<std::uint64_t>(m.training_structures().size());
  for (const auto& ts : m.training_structures()) {
    for (double c : ts.structure.cell) w.put(c);
    for (bool b : ts.structure.pbc) w.put<std::uint8_t>(b ? 1 : 0);
    w.put_vec(ts.structure.species);
    w.put_vec(ts.structure.positions);
    w.put_vec(ts.force_atoms);
    w.put_vec(ts.forces);
    w.put<std::uint8_t>(ts.has_energy ? 1 : 0);
    w.put(ts.energy);
    w.put<std::uint8_t>(ts.has_stress ? 1 : 0);
    for (double v : ts.stress) w.put(v);
    if (!external.empty()) w.put_vec(ts.prior);
  }
  w.put<std::uint8_t>(m.trained() ? 1 : 0);
  w.put_vec(m.alpha());
  w.put_vec(m.cholesky());
  // Version 2: the maps.
  const Maps* maps = m.maps();
  w.put<std::uint8_t>(maps ? 1 : 0);
  if (maps) {
    w.put_vec(std::vector<char>(maps->info.begin(), maps->info.end()));
    w.put<std::uint64_t>(maps->tables().size());
    for (const auto& t : maps->tables()) {
      w.put<std::int32_t>(t.dim);
      w.put<std::int32_t>(t.type);
      w.put<std::int32_t>(t.n);
      w.put(t.lo);
      w.put(t.hi);
      w.put_vec(t.mean);
      w.put<std::int32_t>(t.nv);
      w.put<std::int32_t>(t.vdeg);
      w.put_vec(t.basis_mean);  // version 7
    }
    w.put_vec(maps->covariance());
  }
  // Version 4: the calibration, maps in the order force, energy, stress, local energy.
  const Calibration* cal = m.calibration();
  w.put<std::uint8_t>(cal ? 1 : 0);
  if (cal) {
    for (const VarianceMap* vm : {&cal->force, &cal->energy, &cal->stress, &cal->local_energy})
      for (double x : {vm->a, vm->p, vm->b, vm->c, vm->e, vm->radius}) w.put(x);  // radius: version 8
    w.put_vec(std::vector<char>(cal->info.begin(), cal->info.end()));
  }

  const std::string& payload = w.str();
  Writer out;
  out.str().append(kMagic, 8);
  out.put<std::uint32_t>(kModelFormatVersion);
  out.put<std::uint64_t>(payload.size());
  out.str().append(payload);
  out.put<std::uint64_t>(fnv1a(payload.data(), payload.size()));
  return std::move(out.str());
}

Model deserialize_model(const std::string& bytes) {
  if (bytes.size() < 8 || std::memcmp(bytes.data(), kMagic, 8) != 0)
    throw ModelFileError("not an otfgp model file (bad magic bytes)");
  Reader head(bytes.data() + 8, bytes.size() - 8);
  const auto version = head.get<std::uint32_t>();
  if (version > kModelFormatVersion)
    throw ModelFileError("model file format version " + std::to_string(version) +
                         " is newer than this otfgp supports (" +
                         std::to_string(kModelFormatVersion) + "); upgrade otfgp");
  if (version < 1) throw ModelFileError("unknown model file format version " + std::to_string(version));
  const auto size = head.get<std::uint64_t>();
  const std::size_t start = 8 + 4 + 8;
  if (bytes.size() < start + 8 || size != bytes.size() - start - 8)
    throw ModelFileError("model file is truncated or has trailing data");
  const char* payload = bytes.data() + start;
  std::uint64_t stored;
  std::memcpy(&stored, payload + size, 8);
  if (stored != fnv1a(payload, size))
    throw ModelFileError("model file is corrupt (checksum mismatch)");

  const std::uint64_t limit = size;  // no array can hold more elements than the file has bytes
  Reader r(payload, size);
  try {
    auto species = r.get_vec<int>(limit);
    const double c2 = r.get<double>(), c3 = r.get<double>();
    std::array<double, 7> h;
    for (double& v : h) v = r.get<double>();
    auto offsets = r.get_vec<double>(limit);
    Model m(species, c2, c3);
    m.set_hyperparameters(Hyperparameters::from_array(h));
    m.set_energy_offsets(offsets);
    if (version >= kBaselineFormatVersion) {
      const auto kind = r.get<std::uint8_t>();
      if (kind != 0) {
        BaselineSpec b;
        b.kind = static_cast<BaselineKind>(kind);
        b.cutoff = r.get<double>();
        b.elements = r.get_vec<int>(limit);
        const auto params = r.get_vec<double>(limit);
        if (params.size() != 3 * b.elements.size())
          throw ModelFileError("model file is corrupt: baseline parameters do not match its elements");
        for (std::size_t k = 0; k < b.elements.size(); ++k)
          b.params.push_back({params[3 * k], params[3 * k + 1], params[3 * k + 2]});
        const auto no = r.get<std::uint64_t>();
        if (no > limit) throw ModelFileError("model file is corrupt: implausible override count");
        for (std::uint64_t k = 0; k < no; ++k) {
          PairOverride o;
          o.z1 = r.get<std::int32_t>();
          o.z2 = r.get<std::int32_t>();
          for (double& x : o.params) x = r.get<double>();
          b.overrides.push_back(o);
        }
        m.set_baseline(std::move(b));  // before the training data: it defines their targets
      }
    }
    if (version >= kExternalBaselineFormatVersion) {
      const auto spec = r.get_vec<char>(limit);
      m.set_external_baseline(std::string(spec.begin(), spec.end()));
    }
    const auto ns = r.get<std::uint64_t>();
    if (ns > limit) throw ModelFileError("model file is corrupt: implausible structure count");
    for (std::uint64_t k = 0; k < ns; ++k) {
      TrainingStructure ts;
      for (double& c : ts.structure.cell) c = r.get<double>();
      for (int d = 0; d < 3; ++d) ts.structure.pbc[d] = r.get<std::uint8_t>() != 0;
      ts.structure.species = r.get_vec<int>(limit);
      ts.structure.positions = r.get_vec<double>(limit);
      ts.force_atoms = r.get_vec<int>(limit);
      ts.forces = r.get_vec<double>(limit);
      ts.has_energy = r.get<std::uint8_t>() != 0;
      ts.energy = r.get<double>();
      ts.has_stress = r.get<std::uint8_t>() != 0;
      for (double& v : ts.stress) v = r.get<double>();
      if (!m.external_baseline().empty()) ts.prior = r.get_vec<double>(limit);
      m.add_training_structure(std::move(ts));
    }
    const bool trained = r.get<std::uint8_t>() != 0;
    auto alpha = r.get_vec<double>(limit);
    auto chol = r.get_vec<double>(limit);
    // A trained model without labels is the maps of an exported ScalableGP (version 7).
    const bool mapped_only = trained && m.n_labels() == 0 && version >= kBasisMeanFormatVersion;
    if (trained && !mapped_only) m.set_solution(std::move(alpha), std::move(chol));
    bool maps_read = false;
    if (version >= 2 && r.get<std::uint8_t>() != 0) {
      // Earlier versions could save maps of a solution that new data or hyperparameters had
      // invalidated. The tables are stale, the training data are not: read past the maps
      // and drop them instead of refusing the file.
      const bool stale = !trained;
      Maps maps;
      const auto info = r.get_vec<char>(limit);
      maps.info.assign(info.begin(), info.end());
      const auto nt = r.get<std::uint64_t>();
      if (nt > limit) throw ModelFileError("model file is corrupt: implausible table count");
      for (std::uint64_t k = 0; k < nt; ++k) {
        SplineTable t;
        t.dim = r.get<std::int32_t>();
        t.type = r.get<std::int32_t>();
        t.n = r.get<std::int32_t>();
        t.lo = r.get<double>();
        t.hi = r.get<double>();
        t.mean = r.get_vec<double>(limit);
        t.nv = r.get<std::int32_t>();
        if (version >= 3) t.vdeg = r.get<std::int32_t>();  // version 2: always cubic
        if (version >= kBasisMeanFormatVersion) t.basis_mean = r.get_vec<double>(limit);
        if (!stale) maps.add(std::move(t), m.n_species());
      }
      auto covariance = r.get_vec<double>(limit);
      if (stale) {
        m.add_load_warning("the file held maps of an outdated solution (saved after new data or "
                           "hyperparameters, before retraining); they were dropped: train() "
                           "and map() again");
      } else {
        if (!covariance.empty()) maps.set_covariance(std::move(covariance));
        if (mapped_only)
          m.set_mapped_only(std::move(maps));
        else
          m.set_maps(std::move(maps));
        maps_read = true;
      }
    }
    if (mapped_only && !maps_read)
      throw ModelFileError("model file is corrupt: trained without training data or maps");
    if (version >= kCalibrationFormatVersion && r.get<std::uint8_t>() != 0) {
      Calibration cal;
      for (VarianceMap* vm : {&cal.force, &cal.energy, &cal.stress, &cal.local_energy}) {
        for (double* x : {&vm->a, &vm->p, &vm->b, &vm->c, &vm->e}) *x = r.get<double>();
        if (version >= kScaleRadiusFormatVersion) vm->radius = r.get<double>();
      }
      const auto info = r.get_vec<char>(limit);
      cal.info.assign(info.begin(), info.end());
      m.set_calibration(std::move(cal));
    }
    if (!r.done()) throw ModelFileError("model file is corrupt: unexpected trailing data");
    m.set_format_version(version);
    return m;
  } catch (const InputError& e) {
    throw ModelFileError(std::string("model file is corrupt: ") + e.what());
  } catch (const NotTrainedError& e) {
    throw ModelFileError(std::string("model file is corrupt: ") + e.what());
  }
}

void save_model(const Model& m, const std::string& path) {
  const std::string bytes = serialize_model(m);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw ModelFileError("cannot write model file " + tmp);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());  // a partial file left behind would look like a model
      throw ModelFileError("error writing model file " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw ModelFileError("cannot move model file into place: " + path);
  }
}

Model load_model(const std::string& path) {
  // a directory opens as a stream on Linux and reads as empty: say what it is
  if (std::filesystem::is_directory(path)) throw ModelFileError(path + " is a directory, not a model file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw ModelFileError("cannot open model file " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  try {
    return deserialize_model(ss.str());
  } catch (const ModelFileError& e) {
    throw ModelFileError(path + ": " + e.what());
  }
}

}  // namespace otfgp
