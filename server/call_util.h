// Small pieces shared by the RPC handlers.
#ifndef NT_SERVER_CALL_UTIL_H_
#define NT_SERVER_CALL_UTIL_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/grpcpp.h"
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

inline grpc::Status Invalid(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
}
inline grpc::Status Exhausted(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, msg);
}

// Gives a reservation of the memory budget back when the call ends.
struct Reservation {
  std::function<void(int64_t)> release;
  int64_t bytes = 0;
  ~Reservation() {
    if (bytes > 0) release(bytes);
  }
};

// The error when the budget is taken by other requests.
inline grpc::Status BudgetTaken(int64_t need) {
  return Exhausted(absl::StrCat("the server's memory budget is taken by other requests (", need >> 20,
                                " MiB needed); retry later"));
}

}  // namespace nt::server

#endif  // NT_SERVER_CALL_UTIL_H_
