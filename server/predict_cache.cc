#include "server/predict_cache.h"

#include <cstring>

namespace nt::server {

namespace {

bool SameArray(const Array& a, const Array& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), sizeof(Real) * a.size()) == 0;
}

bool SameOptions(const predict::MseOptions& a, const predict::MseOptions& b) {
  return a.learning_rate == b.learning_rate && a.diag_reg == b.diag_reg &&
         a.diag_reg_absolute_scale == b.diag_reg_absolute_scale;
}

}  // namespace

int64_t TrainEntry::bytes() const {
  const int64_t n = x_train.dim(0);
  return int64_t(sizeof(Real)) * (x_train.size() + y_train.size() + 2 * n * n) + ensemble->cached_bytes() +
         int64_t(architecture.size());
}

std::shared_ptr<TrainEntry> PredictCache::Find(const std::string& architecture, const Array& x_train,
                                               const Array& y_train, const predict::MseOptions& options) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    const TrainEntry& e = **it;
    if (e.architecture == architecture && SameOptions(e.options, options) && SameArray(e.x_train, x_train) &&
        SameArray(e.y_train, y_train)) {
      entries_.splice(entries_.begin(), entries_, it);  // Most recently used.
      return entries_.front();
    }
  }
  return nullptr;
}

void PredictCache::Insert(std::shared_ptr<TrainEntry> entry) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.push_front(std::move(entry));
  EvictLocked();
}

int64_t PredictCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t total = 0;
  for (const auto& e : entries_) total += e->bytes();
  return total;
}

void PredictCache::EvictLocked() {
  int64_t total = 0;
  for (const auto& e : entries_) total += e->bytes();
  // Keep at least the newest entry: it is in use by the request that inserted it.
  while (total > capacity_ && entries_.size() > 1) {
    total -= entries_.back()->bytes();
    entries_.pop_back();
  }
}

}  // namespace nt::server
