// Upstream's requirements machinery: trinary Bool, Diagonal composition and per-layer declarations.
#ifndef NT_CORE_REQUIREMENTS_H_
#define NT_CORE_REQUIREMENTS_H_

#include <optional>
#include <string>

#include "core/real.h"

namespace NT_CORE_NS {

enum class Bool { kNo = 0, kMaybe = 1, kYes = 2 };

inline Bool And(Bool a, Bool b) { return a < b ? a : b; }

// Whether a layer may receive (input) / whose successors may produce (output) spatially-diagonal kernels.
struct Diagonal {
  Bool input = Bool::kYes;
  Bool output = Bool::kNo;

  bool operator==(const Diagonal& o) const { return input == o.input && output == o.output; }
  // Upstream's bool(Diagonal): diagonal spatial layout is usable.
  bool AsBool() const { return input == Bool::kYes && output > Bool::kNo; }
};

// `a >> b`: a applied first, then b. Associative.
Diagonal Compose(const Diagonal& a, const Diagonal& b);
// Parallel combination.
Diagonal And(const Diagonal& a, const Diagonal& b);

// What a layer (or a folded network) declares about the kernels it accepts.
struct Requirements {
  std::optional<bool> diagonal_batch;
  std::optional<Diagonal> diagonal_spatial;
  std::optional<int> batch_axis;
  // Set (to any value) by layers that declare a channel axis; `flatten_input` is Flatten's "None".
  std::optional<int> channel_axis;
  bool flatten_input = false;
  std::optional<bool> use_dropout;
  // The network keeps only some samples (Index on the batch axis): our own flag, not upstream's. Tiles of
  // samples cannot be evaluated independently then, so the engine evaluates the batch in one piece.
  bool selects_batch = false;

  bool declares_channel() const { return channel_axis.has_value() || flatten_input; }
};

// Folding over sub-layers in serial order (`>>`, first axis declaration wins) or parallel (`&`).
// Boolean diagonal_batch folds with logical AND in both (documented divergence from upstream's
// integer shift, see core.md section 3.4).
Requirements FoldSerial(const Requirements& a, const Requirements& b);
Requirements FoldParallel(const Requirements& a, const Requirements& b);

std::string DiagonalToString(const Diagonal& d);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_REQUIREMENTS_H_
