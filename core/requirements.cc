#include "core/requirements.h"

#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

Diagonal Compose(const Diagonal& a, const Diagonal& b) {
  if (a.output == Bool::kYes) return a;
  Bool input;
  if (a.output > Bool::kNo && b.input > Bool::kNo) {
    input = a.input;
  } else if (a.output == Bool::kNo && b.input < Bool::kYes) {
    input = Bool::kNo;
  } else {
    input = And(a.input, b.input);
  }
  return Diagonal{input, b.output};
}

Diagonal And(const Diagonal& a, const Diagonal& b) {
  return Diagonal{And(a.input, b.input), And(a.output, b.output)};
}

namespace {

template <typename T, typename F>
std::optional<T> FoldOptional(const std::optional<T>& a, const std::optional<T>& b, F f) {
  if (!a) return b;
  if (!b) return a;
  return f(*a, *b);
}

Requirements Fold(const Requirements& a, const Requirements& b, bool serial) {
  Requirements r;
  r.diagonal_batch = FoldOptional(a.diagonal_batch, b.diagonal_batch, [](bool x, bool y) { return x && y; });
  r.diagonal_spatial = FoldOptional(
      a.diagonal_spatial, b.diagonal_spatial,
      [serial](const Diagonal& x, const Diagonal& y) { return serial ? Compose(x, y) : And(x, y); });
  r.batch_axis = a.batch_axis ? a.batch_axis : b.batch_axis;
  if (a.declares_channel()) {
    r.channel_axis = a.channel_axis;
    r.flatten_input = a.flatten_input;
  } else {
    r.channel_axis = b.channel_axis;
    r.flatten_input = b.flatten_input;
  }
  r.use_dropout = a.use_dropout ? a.use_dropout : b.use_dropout;
  r.selects_batch = a.selects_batch || b.selects_batch;
  return r;
}

}  // namespace

Requirements FoldSerial(const Requirements& a, const Requirements& b) { return Fold(a, b, true); }
Requirements FoldParallel(const Requirements& a, const Requirements& b) { return Fold(a, b, false); }

std::string DiagonalToString(const Diagonal& d) {
  auto s = [](Bool b) { return b == Bool::kYes ? "YES" : b == Bool::kMaybe ? "MAYBE" : "NO"; };
  return absl::StrCat("Diagonal(input=", s(d.input), ", output=", s(d.output), ")");
}

}  // namespace NT_CORE_NS
