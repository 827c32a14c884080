// The /metrics HTTP endpoint, spoken to with a plain socket client.
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace nt::server {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A connected socket with a 5 s receive timeout, or -1.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Everything until the server closes (or an error / the 5 s timeout).
std::string ReadAll(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string Fetch(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "connect failed";
  std::string response = SendAll(fd, request) ? ReadAll(fd) : "send failed";
  close(fd);
  return response;
}

std::string Get(int port, const std::string& path) {
  return Fetch(port, absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"));
}

std::string Body(const std::string& response) {
  const size_t end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

class MetricsHttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start("127.0.0.1:0").ok()); }

  std::atomic<int> renders_{0};
  MetricsHttpServer server_{[this] {
    ++renders_;
    return std::string("# TYPE a_total counter\na_total 1\n");
  }};
};

TEST_F(MetricsHttpServerTest, ServesMetricsWithContentTypeLengthAndConnectionClose) {
  ASSERT_GT(server_.port(), 0);
  const std::string r = Get(server_.port(), "/metrics");
  EXPECT_EQ(r,
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: 33\r\n"
            "Connection: close\r\n"
            "\r\n"
            "# TYPE a_total counter\na_total 1\n");
  EXPECT_EQ(renders_, 1);
}

TEST_F(MetricsHttpServerTest, IgnoresQueryStringAndAcceptsBareLineFeeds) {
  EXPECT_TRUE(absl::StartsWith(Get(server_.port(), "/metrics?format=text"), "HTTP/1.1 200 OK\r\n"));
  EXPECT_TRUE(absl::StartsWith(Fetch(server_.port(), "GET /metrics HTTP/1.0\n\n"), "HTTP/1.1 200 OK\r\n"));
}

TEST_F(MetricsHttpServerTest, HealthzSaysOk) {
  const std::string r = Get(server_.port(), "/healthz");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200 OK\r\n")) << r;
  EXPECT_EQ(Body(r), "ok");
  EXPECT_EQ(renders_, 0);
}

TEST_F(MetricsHttpServerTest, UnknownPathIs404) {
  const std::string r = Get(server_.port(), "/metricsx");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 404 Not Found\r\n")) << r;
  EXPECT_TRUE(absl::StartsWith(Get(server_.port(), "/"), "HTTP/1.1 404 Not Found\r\n"));
  EXPECT_EQ(renders_, 0);
}

TEST_F(MetricsHttpServerTest, OtherMethodsMalformedRequestsAndHead) {
  EXPECT_TRUE(absl::StartsWith(Fetch(server_.port(), "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                               "HTTP/1.1 405 Method Not Allowed\r\n"));
  EXPECT_TRUE(absl::StartsWith(Fetch(server_.port(), "hello\r\n\r\n"), "HTTP/1.1 400 Bad Request\r\n"));
  const std::string head = Fetch(server_.port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(absl::StartsWith(head, "HTTP/1.1 200 OK\r\n")) << head;
  EXPECT_TRUE(absl::StrContains(head, "Content-Length: 33\r\n")) << head;
  EXPECT_EQ(Body(head), "");
}

TEST_F(MetricsHttpServerTest, SilentClientDoesNotBlockAScrapeAndIsClosedAfterTheTimeout) {
  const int silent = Connect(server_.port());
  ASSERT_GE(silent, 0);
  const Clock::time_point start = Clock::now();
  const std::string r = Get(server_.port(), "/metrics");
  EXPECT_TRUE(absl::StartsWith(r, "HTTP/1.1 200 OK\r\n")) << r;
  EXPECT_LT(SecondsSince(start), 2.5);
  // The server closes the silent connection after its 2 s request timeout.
  char c;
  EXPECT_EQ(recv(silent, &c, 1, 0), 0);
  EXPECT_LT(SecondsSince(start), 3.5);
  close(silent);
}

TEST_F(MetricsHttpServerTest, SlowClientIsClosedAfterTheTimeoutEvenWhileSending) {
  const int slow = Connect(server_.port());
  ASSERT_GE(slow, 0);
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(SendAll(slow, "GET /metrics HTTP/1.1\r\n"));
  // A header byte every 200 ms never completes the request; the deadline is from accept, not per byte.
  bool closed = false;
  for (int i = 0; i < 25 && !closed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    closed = !SendAll(slow, "X");
    char c;
    closed = closed || recv(slow, &c, 1, MSG_DONTWAIT) == 0;
  }
  EXPECT_TRUE(closed);
  EXPECT_LT(SecondsSince(start), 3.5);
  close(slow);
  EXPECT_EQ(renders_, 0);
}

TEST_F(MetricsHttpServerTest, OversizeRequestIsClosed) {
  const int fd = Connect(server_.port());
  ASSERT_GE(fd, 0);
  const Clock::time_point start = Clock::now();
  SendAll(fd, absl::StrCat("GET /metrics HTTP/1.1\r\nX-Pad: ", std::string(9000, 'a')));
  const std::string r = ReadAll(fd);  // A 431, or a reset: either way not a scrape.
  EXPECT_LT(SecondsSince(start), 1.5);
  EXPECT_FALSE(absl::StrContains(r, "200 OK")) << r;
  close(fd);
  EXPECT_EQ(renders_, 0);
  EXPECT_TRUE(absl::StartsWith(Get(server_.port(), "/metrics"), "HTTP/1.1 200 OK\r\n"));
}

TEST_F(MetricsHttpServerTest, ConcurrentScrapesAllSucceed) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        if (absl::StartsWith(Get(server_.port(), "/metrics"), "HTTP/1.1 200 OK\r\n")) ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok, 160);
  EXPECT_EQ(renders_, 160);
}

TEST_F(MetricsHttpServerTest, StopIsPromptWithAnIdleConnectionOpen) {
  const int idle = Connect(server_.port());
  ASSERT_GE(idle, 0);
  const int port = server_.port();
  const Clock::time_point start = Clock::now();
  server_.Stop();
  EXPECT_LT(SecondsSince(start), 0.1);
  EXPECT_EQ(server_.port(), 0);
  char c;
  EXPECT_LE(recv(idle, &c, 1, 0), 0);  // Closed by Stop.
  close(idle);
  EXPECT_EQ(Connect(port), -1);
  server_.Stop();  // Idempotent.
}

TEST_F(MetricsHttpServerTest, StartTwiceFails) {
  EXPECT_EQ(server_.Start("127.0.0.1:0").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MetricsHttpServerLargeTest, LargeBodyArrivesWholeAndAnEarlyHangUpIsHarmless) {
  const std::string big(4 << 20, 'x');
  MetricsHttpServer server([&big] { return big; });
  ASSERT_TRUE(server.Start("127.0.0.1:0").ok());
  // A client that asks and hangs up without reading: the server must neither die of SIGPIPE nor stall.
  for (int i = 0; i < 3; ++i) {
    const int fd = Connect(server.port());
    ASSERT_GE(fd, 0);
    SendAll(fd, "GET /metrics HTTP/1.1\r\n\r\n");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    close(fd);
  }
  const std::string r = Get(server.port(), "/metrics");
  EXPECT_TRUE(absl::StrContains(r, absl::StrCat("Content-Length: ", big.size(), "\r\n")));
  EXPECT_EQ(Body(r).size(), big.size());
}

TEST(MetricsHttpServerStartTest, BindErrorNamesTheAddress) {
  MetricsHttpServer first([] { return std::string(); });
  ASSERT_TRUE(first.Start("127.0.0.1:0").ok());
  const std::string address = absl::StrCat("127.0.0.1:", first.port());
  MetricsHttpServer second([] { return std::string(); });
  const absl::Status s = second.Start(address);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(s.message(), address)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "bind")) << s;
  EXPECT_EQ(second.port(), 0);
}

TEST(MetricsHttpServerStartTest, MalformedAddressesAreInvalidArguments) {
  for (const char* address : {"nonsense", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "[::1:9090"}) {
    MetricsHttpServer server([] { return std::string(); });
    const absl::Status s = server.Start(address);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << address << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), address)) << s;
  }
}

TEST(MetricsHttpServerStartTest, ListensOnAllInterfacesWithAnEmptyHost) {
  MetricsHttpServer server([] { return std::string("x 1\n"); });
  ASSERT_TRUE(server.Start(":0").ok());
  EXPECT_EQ(Body(Get(server.port(), "/metrics")), "x 1\n");
}

}  // namespace
}  // namespace nt::server
