// Small numeric helpers shared by the polynomial-type kernel maps.
#ifndef NT_CORE_MATH_UTIL_H_
#define NT_CORE_MATH_UTIL_H_

#include "core/real.h"

namespace NT_CORE_NS {

// n! as a double (exact up to 22!, then correctly rounded growth; callers keep n small).
inline double Factorial(int n) {
  double f = 1;
  for (int k = 2; k <= n; ++k) f *= k;
  return f;
}

}  // namespace NT_CORE_NS

#endif  // NT_CORE_MATH_UTIL_H_
