#include "server/metrics_http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace nt::server {
namespace {

using Clock = std::chrono::steady_clock;

constexpr absl::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

enum class ConnState { kReading, kWriting, kDraining };

struct Conn {
  int fd = -1;
  ConnState state = ConnState::kReading;
  std::string in;
  std::string out;
  size_t sent = 0;
  Clock::time_point deadline;
};

void CloseFd(int* fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

std::string Response(absl::string_view status, absl::string_view content_type, absl::string_view body,
                     bool head_only, absl::string_view extra_headers = "") {
  std::string out =
      absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                   "\r\nContent-Length: ", body.size(), "\r\n", extra_headers, "Connection: close\r\n\r\n");
  if (!head_only) out.append(body.data(), body.size());
  return out;
}

// The end of the request head ("\r\n\r\n", or "\n\n" from lenient clients), or npos.
size_t HeadEnd(const std::string& in) {
  const size_t crlf = in.find("\r\n\r\n");
  const size_t lf = in.find("\n\n");
  return std::min(crlf, lf);
}

// The response to a complete request head.
std::string Answer(absl::string_view head, const std::function<std::string()>& render) {
  absl::string_view line = head.substr(0, head.find('\n'));
  absl::ConsumeSuffix(&line, "\r");
  const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ', absl::SkipEmpty());
  if (parts.size() != 3 || !absl::StartsWith(parts[2], "HTTP/")) {
    return Response("400 Bad Request", "text/plain; charset=utf-8", "bad request\n", false);
  }
  const absl::string_view method = parts[0];
  absl::string_view path = parts[1];
  path = path.substr(0, path.find('?'));
  const bool head_only = method == "HEAD";
  if (method != "GET" && !head_only) {
    return Response("405 Method Not Allowed", "text/plain; charset=utf-8", "method not allowed\n", false,
                    "Allow: GET, HEAD\r\n");
  }
  if (path == "/metrics") {
    std::string body;
    try {
      body = render();
    } catch (const std::exception& e) {
      return Response("500 Internal Server Error", "text/plain; charset=utf-8",
                      absl::StrCat("rendering metrics failed: ", e.what(), "\n"), head_only);
    } catch (...) {
      return Response("500 Internal Server Error", "text/plain; charset=utf-8", "rendering metrics failed\n",
                      head_only);
    }
    return Response("200 OK", kMetricsContentType, body, head_only);
  }
  if (path == "/healthz") return Response("200 OK", "text/plain; charset=utf-8", "ok", head_only);
  return Response("404 Not Found", "text/plain; charset=utf-8", "not found\n", head_only);
}

// Splits "host:port", "[v6]:port" or ":port".
absl::Status ParseAddress(absl::string_view address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' is not host:port"));
  }
  absl::string_view h = address.substr(0, colon);
  const absl::string_view p = address.substr(colon + 1);
  if (absl::ConsumePrefix(&h, "[") && !absl::ConsumeSuffix(&h, "]")) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address '", address, "' has an unclosed '['"));
  }
  int port_number = -1;
  if (p.empty() || !absl::SimpleAtoi(p, &port_number) || port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' has no valid port (0..65535)"));
  }
  *host = std::string(h);
  *port = std::string(p);
  return absl::OkStatus();
}

}  // namespace

MetricsHttpServer::MetricsHttpServer(std::function<std::string()> render, MetricsHttpOptions options)
    : render_(std::move(render)), options_(options) {}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::Status MetricsHttpServer::Start(absl::string_view address) {
  if (thread_.joinable() || listen_fd_ >= 0) {
    return absl::FailedPreconditionError("metrics HTTP server already started");
  }
  std::string host, port;
  if (absl::Status s = ParseAddress(address, &host, &port); !s.ok()) return s;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve metrics address '", address, "': ", gai_strerror(rc)));
  }
  std::string error;
  for (addrinfo* ai = found; ai != nullptr && listen_fd_ < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = absl::StrCat("socket: ", std::strerror(errno));
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      error = absl::StrCat("bind: ", std::strerror(errno));
      CloseFd(&fd);
      continue;
    }
    if (listen(fd, 64) != 0) {
      error = absl::StrCat("listen: ", std::strerror(errno));
      CloseFd(&fd);
      continue;
    }
    listen_fd_ = fd;
  }
  freeaddrinfo(found);
  if (listen_fd_ < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on metrics address '", address, "': ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    if (bound.ss_family == AF_INET) port_ = ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    if (bound.ss_family == AF_INET6) port_ = ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  }
  if (pipe2(wake_fds_, O_NONBLOCK | O_CLOEXEC) != 0) {
    const std::string why = std::strerror(errno);
    CloseFd(&listen_fd_);
    port_ = 0;
    return absl::InternalError(absl::StrCat("metrics HTTP server: pipe: ", why));
  }
  stopping_ = false;
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void MetricsHttpServer::Stop() {
  if (thread_.joinable()) {
    stopping_ = true;
    const char byte = 0;
    while (write(wake_fds_[1], &byte, 1) < 0 && errno == EINTR) {
    }
    thread_.join();
  }
  CloseFd(&listen_fd_);
  CloseFd(&wake_fds_[0]);
  CloseFd(&wake_fds_[1]);
  port_ = 0;
}

void MetricsHttpServer::Loop() {
  std::vector<Conn> conns;
  std::vector<pollfd> fds;
  Clock::time_point accept_paused_until;  // After EMFILE and the like, so poll does not spin.
  char buf[4096];

  while (!stopping_) {
    Clock::time_point now = Clock::now();
    const bool accepting = now >= accept_paused_until;
    fds.clear();
    fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});
    fds.push_back({wake_fds_[0], POLLIN, 0});
    Clock::time_point wake = now + std::chrono::seconds(1);
    if (!accepting) wake = std::min(wake, accept_paused_until);
    for (const Conn& c : conns) {
      fds.push_back({c.fd, static_cast<short>(c.state == ConnState::kWriting ? POLLOUT : POLLIN), 0});
      wake = std::min(wake, c.deadline);
    }
    const auto timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count() + 1;
    const int n = poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(timeout_ms, 0)));
    if (n < 0 && errno != EINTR) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (stopping_) break;
    if (n > 0 && (fds[1].revents & POLLIN)) {
      while (read(wake_fds_[0], buf, sizeof(buf)) > 0) {
      }
    }
    now = Clock::now();

    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      const short revents = n > 0 ? fds[i + 2].revents : 0;
      if (revents & POLLNVAL) {
        c.fd = -1;
        continue;
      }
      if (c.state == ConnState::kReading && (revents & (POLLIN | POLLHUP | POLLERR))) {
        while (c.fd >= 0 && c.state == ConnState::kReading) {
          const ssize_t got = recv(c.fd, buf, sizeof(buf), 0);
          if (got < 0 && errno == EINTR) continue;
          if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          if (got <= 0) {  // EOF before a complete request, or an error.
            CloseFd(&c.fd);
            break;
          }
          c.in.append(buf, static_cast<size_t>(got));
          const size_t end = HeadEnd(c.in);
          if (end != std::string::npos && end <= options_.max_request_bytes) {
            c.out = Answer(absl::string_view(c.in).substr(0, end), render_);
            c.state = ConnState::kWriting;
            c.deadline = now + options_.write_timeout;
          } else if (c.in.size() > options_.max_request_bytes) {
            // Best effort: one non-blocking send, then close.
            const std::string r = Response("431 Request Header Fields Too Large", "text/plain; charset=utf-8",
                                           "request too large\n", false);
            (void)send(c.fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            CloseFd(&c.fd);
          }
        }
      }
      if (c.fd >= 0 && c.state == ConnState::kWriting) {
        // Try at once after reading; the socket is usually writable.
        while (c.sent < c.out.size()) {
          const ssize_t put = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
          if (put < 0 && errno == EINTR) continue;
          if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          if (put <= 0) {
            CloseFd(&c.fd);
            break;
          }
          c.sent += static_cast<size_t>(put);
        }
        if (c.fd >= 0 && c.sent == c.out.size()) {
          // Half-close and read until the client closes (briefly): closing with unread input would send
          // a reset that can destroy the response before the client reads it.
          shutdown(c.fd, SHUT_WR);
          c.state = ConnState::kDraining;
          c.deadline = std::min(c.deadline, now + std::chrono::milliseconds(500));
          c.in.clear();
          c.out.clear();
        }
      } else if (c.fd >= 0 && c.state == ConnState::kDraining && (revents & (POLLIN | POLLHUP | POLLERR))) {
        for (int reads = 0; reads < 16; ++reads) {  // Bounded: the deadline ends a client that never stops.
          const ssize_t got = recv(c.fd, buf, sizeof(buf), 0);
          if (got > 0 || (got < 0 && errno == EINTR)) continue;  // Discard.
          if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          CloseFd(&c.fd);  // EOF or error: done.
          break;
        }
      }
      if (c.fd >= 0 && now >= c.deadline) CloseFd(&c.fd);
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const Conn& c) { return c.fd < 0; }),
                conns.end());

    if (accepting && n > 0 && (fds[0].revents & POLLIN)) {
      for (;;) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK) {
            accept_paused_until = now + std::chrono::milliseconds(100);
          }
          break;
        }
        if (static_cast<int>(conns.size()) >= options_.max_connections) {
          close(fd);
          continue;
        }
        Conn c;
        c.fd = fd;
        c.deadline = now + options_.request_timeout;
        conns.push_back(std::move(c));
      }
    }
  }
  for (Conn& c : conns) CloseFd(&c.fd);
}

}  // namespace nt::server
