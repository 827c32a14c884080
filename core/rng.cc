#include "core/rng.h"

#include <cmath>

namespace NT_CORE_NS {

namespace {

// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double ToUnit(uint64_t bits) { return (bits >> 11) * (1.0 / 9007199254740992.0); }

}  // namespace

RngKey::RngKey(uint64_t seed) : hi_(Mix(seed)), lo_(Mix(seed ^ 0x5851f42d4c957f2dULL)) {}

uint64_t RngKey::Bits(uint64_t counter) const { return Mix(hi_ ^ Mix(lo_ + Mix(counter))); }

std::vector<RngKey> RngKey::Split(int n) const {
  std::vector<RngKey> keys;
  keys.reserve(n);
  for (int i = 0; i < n; ++i) {
    keys.emplace_back(Bits(0x100000000ULL + 2 * i), Bits(0x100000001ULL + 2 * i));
  }
  return keys;
}

RngKey RngKey::FoldIn(uint64_t data) const { return RngKey(Mix(hi_ ^ Mix(data)), Mix(lo_ + Mix(~data))); }

Array RngKey::Uniform(const Shape& shape) const {
  Array out = Array::Uninitialized(shape);
  for (int64_t i = 0; i < out.size(); ++i) out[i] = ToUnit(Bits(static_cast<uint64_t>(i)));
  return out;
}

Array RngKey::Normal(const Shape& shape) const {
  Array out = Array::Uninitialized(shape);
  // Box-Muller on a pair of counters per element; the cosine branch only, so element i is independent
  // of the array size.
  for (int64_t i = 0; i < out.size(); ++i) {
    const double u1 = 1.0 - ToUnit(Bits(2 * static_cast<uint64_t>(i)));  // (0, 1]
    const double u2 = ToUnit(Bits(2 * static_cast<uint64_t>(i) + 1));
    out[i] = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
  return out;
}

}  // namespace NT_CORE_NS
