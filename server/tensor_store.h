// Tensors uploaded in chunks (KernelService.UploadTensor), kept under a byte budget and referred to by
// handle from later requests (Tensor.handle).
#ifndef NT_SERVER_TENSOR_STORE_H_
#define NT_SERVER_TENSOR_STORE_H_

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "nt/v1/tensor.pb.h"

namespace nt::server {

// An uploaded tensor: the dtype it was sent as, and its values as float64 (FLOAT32, INT64 and BOOL
// converted). The values live in a core Array, whose large blocks are reused across uploads (a fresh
// 100 MB buffer per upload cost ~0.3 s of page faults). Kernel requests share them (DecodeSharedTensor);
// other requests copy them (DecodeTensor).
struct StoredTensor {
  nt::v1::DType dtype = nt::v1::FLOAT64;
  Array values;
};

class TensorStore {
 public:
  using Clock = std::chrono::steady_clock;
  // `budget_bytes` bounds the bytes held; `ttl` drops tensors unused for that long (zero: never).
  TensorStore(int64_t budget_bytes, std::chrono::seconds ttl) : budget_(budget_bytes), ttl_(ttl) {}

  // Whether `bytes` could ever be held (the budget, not what is free now).
  bool Fits(int64_t bytes) const { return bytes <= budget_; }
  // Bytes a tensor of `elements` values takes here (float64 values and a little bookkeeping).
  static int64_t StoredBytes(int64_t elements) { return elements * 8 + 1024; }
  // Keeps a complete tensor and returns its handle. Drops least recently used tensors to make room;
  // RESOURCE_EXHAUSTED when tensors in use still leave too little.
  absl::StatusOr<std::string> Put(StoredTensor&& tensor);
  // The tensor for `handle` (shared: a concurrent Release does not free it under a reader).
  absl::StatusOr<std::shared_ptr<const StoredTensor>> Get(const std::string& handle);
  bool Release(const std::string& handle);

  int64_t bytes() const;
  int64_t count() const;
  std::chrono::seconds ttl() const { return ttl_; }

 private:
  struct Entry {
    std::shared_ptr<const StoredTensor> tensor;
    int64_t bytes;
    Clock::time_point last_used;
    std::list<std::string>::iterator lru;  // Position in lru_ (front: most recent).
  };
  void ExpireLocked(Clock::time_point now);
  void EraseLocked(std::unordered_map<std::string, Entry>::iterator it);

  const int64_t budget_;
  const std::chrono::seconds ttl_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;
  int64_t bytes_ = 0;
  uint64_t counter_ = 0;
};

}  // namespace nt::server

#endif  // NT_SERVER_TENSOR_STORE_H_
