// A counter-based, splittable random key: the same key gives the same numbers on any thread count.
#ifndef NT_CORE_RNG_H_
#define NT_CORE_RNG_H_

#include <cstdint>
#include <vector>

#include "core/array.h"
#include "core/real.h"

namespace NT_CORE_NS {

class RngKey {
 public:
  explicit RngKey(uint64_t seed = 0);
  RngKey(uint64_t hi, uint64_t lo) : hi_(hi), lo_(lo) {}

  // n independent child keys (upstream's random.split).
  std::vector<RngKey> Split(int n) const;
  // upstream's random.fold_in.
  RngKey FoldIn(uint64_t data) const;
  // Standard normal samples; element i depends only on (key, i).
  Array Normal(const Shape& shape) const;
  // Uniform [0, 1) samples; element i depends only on (key, i).
  Array Uniform(const Shape& shape) const;

  uint64_t hi() const { return hi_; }
  uint64_t lo() const { return lo_; }

 private:
  uint64_t Bits(uint64_t counter) const;
  uint64_t hi_, lo_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_RNG_H_
