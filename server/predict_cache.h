// Train-side state of Predict requests kept between calls: the train-train kernels and their
// factorisations (inside predict::MseEnsemble), keyed by architecture, training set and options.
#ifndef NT_SERVER_PREDICT_CACHE_H_
#define NT_SERVER_PREDICT_CACHE_H_

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>

#include "core/array.h"
#include "core/predict.h"

namespace nt::server {

struct TrainEntry {
  std::string architecture;  // Deterministically serialised Layer.
  Array x_train, y_train;
  predict::MseOptions options;
  std::unique_ptr<predict::MseEnsemble> ensemble;

  // Inputs, kernels and factorisations.
  int64_t bytes() const;
};

// Least-recently-used entries beyond `capacity_bytes` are dropped (in-flight users keep theirs alive).
class PredictCache {
 public:
  explicit PredictCache(int64_t capacity_bytes) : capacity_(capacity_bytes) {}

  // The entry equal to these in every field (compared exactly, not by hash), or null.
  std::shared_ptr<TrainEntry> Find(const std::string& architecture, const Array& x_train,
                                   const Array& y_train, const predict::MseOptions& options);
  void Insert(std::shared_ptr<TrainEntry> entry);
  // Bytes held by the cached entries (their factorisations grow as requests use them).
  int64_t bytes() const;

 private:
  void EvictLocked();
  const int64_t capacity_;
  mutable std::mutex mu_;
  std::list<std::shared_ptr<TrainEntry>> entries_;  // Most recently used first.
};

}  // namespace nt::server

#endif  // NT_SERVER_PREDICT_CACHE_H_
