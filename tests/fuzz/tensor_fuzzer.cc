// libFuzzer: bytes -> nt.v1.Tensor -> DecodeTensor (float tensors; with allow_integers also INT64/BOOL;
// handles against an empty store), then EncodeTensor of what was decoded.
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "nt/v1/tensor.pb.h"
#include "server/tensor_codec.h"
#include "server/tensor_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nt::v1::Tensor t;
  if (!t.ParseFromArray(data, static_cast<int>(size))) return 0;
  static auto* store = new nt::server::TensorStore(1 << 20, std::chrono::seconds(0));
  for (const bool integers : {false, true}) {
    auto a = nt::server::DecodeTensor(t, "x", integers, integers ? store : nullptr);
    if (!a.ok()) continue;
    // A decoded array holds exactly the elements its shape says.
    int64_t n = 1;
    for (int64_t d : a->shape()) {
      if (d < 0 || __builtin_mul_overflow(n, d, &n)) __builtin_trap();
    }
    if (n != a->size()) __builtin_trap();
    nt::v1::Tensor out;
    nt::server::EncodeTensor(*a, nt::v1::FLOAT32, &out);
    nt::server::EncodeTensor(*a, nt::v1::FLOAT64, &out);
    if (out.data().size() != static_cast<size_t>(n) * 8) __builtin_trap();
  }
  // The same tensor uploaded (UploadTensor keeps it decoded) and read back by handle: the same values,
  // and the same dtype rules.
  if (t.handle().empty()) {
    auto values = nt::server::DecodeTensor(t, "x", true, nullptr);
    if (!values.ok()) return 0;
    const nt::v1::DType dtype = t.dtype() == nt::v1::DTYPE_UNSPECIFIED ? nt::v1::FLOAT64 : t.dtype();
    auto handle = store->Put(nt::server::StoredTensor{dtype, *values});
    if (handle.ok()) {
      nt::v1::Tensor by_handle;
      by_handle.set_handle(*handle);
      auto a = nt::server::DecodeTensor(by_handle, "x", true, store);
      if (!a.ok() || a->shape() != values->shape()) __builtin_trap();
      for (int64_t i = 0; i < a->size(); ++i) {
        if (!((*a)[i] == (*values)[i] || ((*a)[i] != (*a)[i] && (*values)[i] != (*values)[i])))
          __builtin_trap();
      }
      auto floats_only = nt::server::DecodeTensor(by_handle, "x", false, store);
      const bool is_float = dtype == nt::v1::FLOAT64 || dtype == nt::v1::FLOAT32;
      if (floats_only.ok() != is_float) __builtin_trap();
      if (!store->Release(*handle)) __builtin_trap();
    }
  }
  return 0;
}
