#include "server/tensor_store.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nt::server {

namespace {

// Unguessable, so that one client cannot name another's upload by counting.
std::string NewHandle(uint64_t counter) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("t%016x%016x%x", rng(), rng(), counter);
}

}  // namespace

void TensorStore::EraseLocked(std::unordered_map<std::string, Entry>::iterator it) {
  bytes_ -= it->second.bytes;
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

void TensorStore::ExpireLocked(Clock::time_point now) {
  if (ttl_.count() <= 0) return;
  while (!lru_.empty()) {
    auto it = entries_.find(lru_.back());
    if (now - it->second.last_used < ttl_) break;
    EraseLocked(it);
  }
}

absl::StatusOr<std::string> TensorStore::Put(StoredTensor&& tensor) {
  const int64_t size = StoredBytes(tensor.values.size());
  if (!Fits(size)) {
    return absl::ResourceExhaustedError(absl::StrCat("upload: ", size, " bytes exceed the server's upload budget of ",
                                                     budget_, " bytes"));
  }
  auto shared = std::make_shared<const StoredTensor>(std::move(tensor));
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::time_point now = Clock::now();
  ExpireLocked(now);
  // Least recently used first, skipping tensors a request is reading right now.
  for (auto it = lru_.end(); bytes_ + size > budget_ && it != lru_.begin();) {
    --it;
    auto e = entries_.find(*it);
    if (e->second.tensor.use_count() > 1) continue;
    it = std::next(it);
    EraseLocked(e);
  }
  if (bytes_ + size > budget_) {
    return absl::ResourceExhaustedError(absl::StrCat("upload: the upload budget (", budget_ >> 20,
                                                     " MiB) is held by tensors in use; retry later"));
  }
  std::string handle = NewHandle(++counter_);
  lru_.push_front(handle);
  entries_.emplace(handle, Entry{std::move(shared), size, now, lru_.begin()});
  bytes_ += size;
  return handle;
}

absl::StatusOr<std::shared_ptr<const StoredTensor>> TensorStore::Get(const std::string& handle) {
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::time_point now = Clock::now();
  ExpireLocked(now);
  auto it = entries_.find(handle);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("no uploaded tensor '", handle.substr(0, 64),
                                            "' on this server (released, expired or evicted); upload it again"));
  }
  it->second.last_used = now;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.tensor;
}

bool TensorStore::Release(const std::string& handle) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(handle);
  if (it == entries_.end()) return false;
  EraseLocked(it);
  return true;
}

int64_t TensorStore::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

int64_t TensorStore::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(entries_.size());
}

}  // namespace nt::server
