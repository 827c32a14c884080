// Small pieces shared by the RPC handlers.
#ifndef NT_SERVER_CALL_UTIL_H_
#define NT_SERVER_CALL_UTIL_H_

#include <atomic>
#include <thread>

#include "server/kernel_service.h"

namespace nt::server {

// Counts a call as active for its lifetime.
class ActiveCall {
 public:
  explicit ActiveCall(std::atomic<int>* n) : n_(n) { ++*n_; }
  ~ActiveCall() { --*n_; }
  ActiveCall(const ActiveCall&) = delete;
  ActiveCall& operator=(const ActiveCall&) = delete;

 private:
  std::atomic<int>* n_;
};

// Engine threads a request may use.
inline int Concurrency(const ServerOptions& o) {
  return o.worker_threads > 0 ? o.worker_threads : static_cast<int>(std::thread::hardware_concurrency());
}

}  // namespace nt::server

#endif  // NT_SERVER_CALL_UTIL_H_
