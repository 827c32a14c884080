// Branch-free, vectorisable elementary functions for the kernel maps (libm's atan2 is a scalar call
// and dominated every Relu/Erf layer). Accurate to about 1 ulp (tests/fast_math_test.cc).
#ifndef NT_CORE_FAST_MATH_H_
#define NT_CORE_FAST_MATH_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/real.h"

namespace NT_CORE_NS {

// atan(lo / hi) for 0 <= lo <= hi, hi > 0: Cephes' rational approximation, with the reduction around
// pi/4 taken as (lo - hi) / (lo + hi), so that one division gives the reduced argument.
inline double AtanRatio(double lo, double hi) {
  constexpr double kP0 = -8.750608600031904122785e-1, kP1 = -1.615753718733365076637e1,
                   kP2 = -7.500855792314704667340e1, kP3 = -1.228866684490136173410e2,
                   kP4 = -6.485021904942025371773e1;
  constexpr double kQ0 = 2.485846490142306297962e1, kQ1 = 1.650270098316988542046e2,
                   kQ2 = 4.328810604912902668951e2, kQ3 = 4.853903996359136964868e2,
                   kQ4 = 1.945506571482613964425e2;
  constexpr double kMoreBits = 6.123233995736765886130e-17;  // pi/4 - fl(pi/4), halved below.
  // Both candidates are blended so that the loop stays free of branches.
  const bool big = lo > 0.66 * hi;
  const double xr = (big ? lo - hi : lo) / (big ? lo + hi : hi);
  const double z = xr * xr;
  const double p = (((kP0 * z + kP1) * z + kP2) * z + kP3) * z + kP4;
  const double q = ((((z + kQ0) * z + kQ1) * z + kQ2) * z + kQ3) * z + kQ4;
  return (big ? M_PI_4 : 0.0) + (xr + xr * (z * p / q) + (big ? 0.5 * kMoreBits : 0.0));
}

// atan2(y, x) for y >= 0, in [0, pi]; atan2(0, 0) is pi/2 (the angle between two zero vectors taken
// as orthogonal, upstream's convention).
inline double Atan2NonNegative(double y, double x) {
  const double ax = std::fabs(x);
  const bool steep = y > ax;
  const double hi = steep ? y : ax;
  const double lo = steep ? ax : y;
  double a = AtanRatio(lo, hi > 0 ? hi : 1.0);
  a = steep ? M_PI_2 - a : a;
  a = x < 0 ? M_PI - a : a;
  return hi > 0 ? a : M_PI_2;
}

// atan2(y, x) for any sign of y (x = y = 0 gives +-pi/2).
inline double Atan2(double y, double x) { return std::copysign(Atan2NonNegative(std::fabs(y), x), y); }

// 2^k for integral k in [-1022, 1023] without a double-to-int64 conversion (which AVX2 lacks): adding
// 2^52 puts k + 1023 in the low mantissa bits, which then become the exponent field.
inline double Pow2(double k) {
  const double shifted = k + 1023.0 + 4503599627370496.0;
  uint64_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits <<= 52;
  double out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// exp(x): Cephes' reduction x = n ln 2 + r with a Pade form for exp(r), times 2^n in two factors so
// that subnormal results and n = 1024 are exact. +-inf and NaN behave as std::exp.
inline double Exp(double x) {
  constexpr double kLog2e = 1.4426950408889634073599, kC1 = 6.93145751953125e-1,
                   kC2 = 1.42860682030941723212e-6;  // ln 2 = kC1 + kC2, kC1 exact in few bits.
  constexpr double kP0 = 1.26177193074810590878e-4, kP1 = 3.02994407707441961300e-2,
                   kP2 = 9.99999999999999999910e-1;
  constexpr double kQ0 = 3.00198505138664455042e-6, kQ1 = 2.52448340349684104192e-3,
                   kQ2 = 2.27265548208155028766e-1, kQ3 = 2.00000000000000000009e0;
  const double xc = x > 709.8 ? 709.8 : (x < -745.2 ? -745.2 : x);
  const double n = std::floor(kLog2e * xc + 0.5);
  double r = xc - n * kC1;
  r -= n * kC2;
  const double rr = r * r;
  const double p = r * ((kP0 * rr + kP1) * rr + kP2);
  const double q = ((kQ0 * rr + kQ1) * rr + kQ2) * rr + kQ3;
  const double e = 1.0 + 2.0 * p / (q - p);
  const double n1 = std::floor(0.5 * n);
  double out = (e * Pow2(n1)) * Pow2(n - n1);
  out = x > 709.782712893384 ? INFINITY : out;
  out = x < -745.1332191019412 ? 0.0 : out;
  return out;
}

}  // namespace NT_CORE_NS

#endif  // NT_CORE_FAST_MATH_H_
