// The engine's floating-point type. The default engine (namespace nt) computes in double; the float32
// engine is the same sources compiled with NT_REAL=float into namespace nt_f32 (library nt_core_f32,
// see core/CMakeLists.txt). Scalars of the elementwise maps stay double in both.
#ifndef NT_CORE_REAL_H_
#define NT_CORE_REAL_H_

#ifndef NT_REAL
#define NT_REAL double
#endif
#ifndef NT_CORE_NS
#define NT_CORE_NS nt
#endif

namespace NT_CORE_NS {
using Real = NT_REAL;
}  // namespace NT_CORE_NS

#endif  // NT_CORE_REAL_H_
