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
  // The same tensor uploaded (UploadTensor's store) and read back by handle.
  if (t.handle().empty()) {
    nt::v1::Tensor copy = t;
    auto handle = store->Put(std::move(copy));
    if (handle.ok()) {
      nt::v1::Tensor by_handle;
      by_handle.set_handle(*handle);
      auto a = nt::server::DecodeTensor(by_handle, "x", true, store);
      auto b = nt::server::DecodeTensor(t, "x", true, nullptr);
      if (a.ok() != b.ok()) __builtin_trap();
      if (!store->Release(*handle)) __builtin_trap();
    }
  }
  return 0;
}
