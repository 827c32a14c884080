#include "server/params_codec.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/tensor_codec.h"

namespace nt::server {

absl::StatusOr<Params> DecodeParams(const nt::v1::Params& p, const std::string& field) {
  Params out;
  for (int i = 0; i < p.arrays_size(); ++i) {
    const std::string where = absl::StrCat(field, ".arrays[", i, "]");
    auto a = DecodeTensor(p.arrays(i), where);
    if (!a.ok()) return a.status();
    for (int64_t e = 0; e < a->size(); ++e) {
      if (!std::isfinite((*a)[e])) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": entry ", e, " is not finite"));
      }
    }
    out.arrays.push_back(*std::move(a));
  }
  for (int i = 0; i < p.children_size(); ++i) {
    auto c = DecodeParams(p.children(i), absl::StrCat(field, ".children[", i, "]"));
    if (!c.ok()) return c.status();
    out.children.push_back(*std::move(c));
  }
  return out;
}

void EncodeParams(const Params& p, nt::v1::DType dtype, nt::v1::Params* out) {
  for (const Array& a : p.arrays) EncodeTensor(a, dtype, out->add_arrays());
  for (const Params& c : p.children) EncodeParams(c, dtype, out->add_children());
}

}  // namespace nt::server
