// A minimal HTTP/1.1 server for Prometheus scrapes: GET /metrics and GET /healthz, one connection per
// request (Connection: close). No gRPC dependency.
//
// One background thread multiplexes the listening socket and all connections with poll(), so a slow or
// silent client never delays another scrape; a connection that has not sent a complete request within
// `request_timeout`, or whose request head exceeds `max_request_bytes`, is closed.
#ifndef NT_SERVER_METRICS_HTTP_H_
#define NT_SERVER_METRICS_HTTP_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace nt::server {

struct MetricsHttpOptions {
  size_t max_request_bytes = 8 << 10;               // Request line and headers.
  std::chrono::milliseconds request_timeout{2000};  // From accept to the end of the request head.
  std::chrono::milliseconds write_timeout{10000};   // To send the response.
  int max_connections = 64;                         // Further connections are closed at once.
};

class MetricsHttpServer {
 public:
  // `render` returns the /metrics body (text exposition format); it runs on the server thread and must be
  // thread-safe with respect to the rest of the program.
  explicit MetricsHttpServer(std::function<std::string()> render, MetricsHttpOptions options = {});
  ~MetricsHttpServer();  // Stops.
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Listens on `address` ("host:port", "[v6]:port" or ":port" for all interfaces; port 0 picks a free one)
  // and starts serving. Errors name the address.
  absl::Status Start(absl::string_view address);
  // Closes the listener and every connection; returns within a few milliseconds. Idempotent.
  void Stop();
  // The bound port once Start succeeded, else 0.
  int port() const { return port_; }

 private:
  void Loop();

  std::function<std::string()> render_;
  MetricsHttpOptions options_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // A pipe: Stop writes a byte to interrupt poll().
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace nt::server

#endif  // NT_SERVER_METRICS_HTTP_H_
