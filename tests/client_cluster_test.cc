// The C++ client against several real nt-server processes: one kernel spread over all of them (tile
// ranges, equal bit for bit to one server's), a server killed mid-call, uploads past a server's message
// limit, .npy files written tile by tile, bearer tokens, TLS and address lists.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cpp/arch_json.h"
#include "client/cpp/client.h"
#include "client/cpp/npy.h"
#include "gtest/gtest.h"
#include "tests/server_process.h"

namespace nt::client {
namespace {

using ::nt::testing::ServerProcess;

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/nt_cluster_", getpid(), "_", name);
}

nt::v1::Tensor Doubles(const std::vector<int64_t>& shape, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<double> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (double& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = static_cast<double>(static_cast<int64_t>(s >> 11) % 2000001 - 1000000) / 500000.0;
  }
  return TensorFromNpy(NpyArray::FromDoubles(shape, v)).value();
}

nt::v1::Layer Arch(const std::string& json) { return LayerFromJson(json).value(); }

const char kFc[] = R"({"layer": "serial", "layers": [
  {"layer": "Dense", "args": {"out_dim": 64, "W_std": 1.5, "b_std": 0.05}}, {"layer": "Relu"},
  {"layer": "Dense", "args": {"out_dim": 1, "W_std": 1.5, "b_std": 0.05}}]})";
const char kCnn[] = R"({"layer": "serial", "layers": [
  {"layer": "Conv", "args": {"out_chan": 8, "filter_shape": [3, 2], "padding": "SAME", "W_std": 1.3}},
  {"layer": "Relu"},
  {"layer": "Conv", "args": {"out_chan": 3, "filter_shape": [2, 2], "padding": "SAME", "W_std": 0.9}}]})";

nt::v1::KernelRequest FcRequest(int64_t n, bool with_x2, int64_t tile) {
  nt::v1::KernelRequest r;
  *r.mutable_architecture() = Arch(kFc);
  *r.mutable_x1() = Doubles({n, 7}, 1);
  if (with_x2) *r.mutable_x2() = Doubles({n - 5, 7}, 2);
  for (const char* g : {"nngp", "ntk", "cov1"}) r.add_get(g);
  if (with_x2) r.add_get("cov2");
  r.set_tile_size(tile);
  return r;
}

// x2 = None, full spatial layout: nngp (n, n, 4, 4, 3, 3), mirrored tiles swap both axis pairs.
nt::v1::KernelRequest CnnRequest(int64_t n, int64_t tile) {
  nt::v1::KernelRequest r;
  *r.mutable_architecture() = Arch(kCnn);
  *r.mutable_x1() = Doubles({n, 4, 3, 2}, 3);
  r.add_get("nngp");
  r.add_get("ntk");
  r.set_diagonal_spatial(false);
  r.set_tile_size(tile);
  return r;
}

void ExpectSameArrays(const KernelResult& got, const KernelResult& want) {
  ASSERT_EQ(got.arrays.size(), want.arrays.size());
  for (const auto& [name, a] : want.arrays) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.arrays.count(name));
    const NpyArray& b = got.arrays.at(name);
    EXPECT_EQ(b.shape, a.shape);
    EXPECT_EQ(b.dtype, a.dtype);
    EXPECT_TRUE(b.bytes == a.bytes) << "not bit-identical";
  }
}

std::string Join(const std::vector<std::unique_ptr<ServerProcess>>& servers) {
  std::string out;
  for (const auto& s : servers) absl::StrAppend(&out, out.empty() ? "" : ",", s->address());
  return out;
}

// ---- Three servers with one engine thread each ----

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    servers_ = new std::vector<std::unique_ptr<ServerProcess>>();
    for (int i = 0; i < 3; ++i) {
      servers_->push_back(std::make_unique<ServerProcess>(std::vector<std::string>{"--threads=1"}));
    }
  }
  static void TearDownTestSuite() {
    delete servers_;
    servers_ = nullptr;
  }
  void SetUp() override {
    for (const auto& s : *servers_) ASSERT_NE(s->port(), 0);
  }

  // The same request on all three servers and on the first alone.
  void CheckSpreadEqualsOne(const nt::v1::KernelRequest& request) {
    KernelClient one((*servers_)[0]->address());
    absl::StatusOr<KernelResult> want = one.ComputeKernel(request);
    ASSERT_TRUE(want.ok()) << want.status();
    EXPECT_EQ(want->stats.ranges, 1);
    KernelClient all(Join(*servers_));
    ASSERT_EQ(all.endpoints().size(), 3u);
    int64_t last_done = 0, calls = 0;
    absl::StatusOr<KernelResult> got = all.ComputeKernel(request, [&](const KernelProgress& p) {
      ++calls;
      last_done = p.tiles_done;
      EXPECT_FALSE(p.endpoint.empty());
    });
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameArrays(*got, *want);
    const int64_t total = want->summary.num_tiles();
    EXPECT_EQ(got->summary.num_tiles(), total);
    EXPECT_EQ(got->header.num_tiles(), total);
    EXPECT_EQ(last_done, total);
    EXPECT_EQ(calls, total);
    EXPECT_EQ(got->stats.retries, 0);
    EXPECT_TRUE(got->stats.given_up.empty());
    int64_t sum = 0;
    for (const auto& [address, n] : got->stats.tiles) sum += n;
    EXPECT_EQ(sum, total);
    // About 4 ranges per endpoint, at most one per tile.
    EXPECT_EQ(got->stats.ranges, std::min<int64_t>(want->header.total_tiles(), 12));
  }

  static std::vector<std::unique_ptr<ServerProcess>>* servers_;
};
std::vector<std::unique_ptr<ServerProcess>>* ClusterTest::servers_ = nullptr;

TEST_F(ClusterTest, MirroredKernelOverThreeServersEqualsOneServer) {
  CheckSpreadEqualsOne(FcRequest(61, /*with_x2=*/false, /*tile=*/8));
}

TEST_F(ClusterTest, KernelWithX2OverThreeServersEqualsOneServer) {
  CheckSpreadEqualsOne(FcRequest(45, /*with_x2=*/true, /*tile=*/6));
}

TEST_F(ClusterTest, FullSpatialCnnOverThreeServersEqualsOneServer) {
  CheckSpreadEqualsOne(CnnRequest(9, /*tile=*/2));
  // The server's own tile size (Describe fixes it for every range).
  CheckSpreadEqualsOne(CnnRequest(9, /*tile=*/0));
}

TEST_F(ClusterTest, NpyFilesEqualTheArraysInMemory) {
  const nt::v1::KernelRequest request = CnnRequest(7, 2);
  KernelClient all(Join(*servers_));
  absl::StatusOr<KernelResult> memory = all.ComputeKernel(request);
  ASSERT_TRUE(memory.ok()) << memory.status();
  for (const std::string& tmpl : {TempPath("files"), TempPath("k_{name}.npy")}) {
    SCOPED_TRACE(tmpl);
    for (const std::string& spec : {Join(*servers_), (*servers_)[0]->address()}) {
      KernelClient client(spec);
      absl::StatusOr<KernelResult> files = client.ComputeKernelToFiles(request, tmpl);
      ASSERT_TRUE(files.ok()) << files.status();
      EXPECT_TRUE(files->arrays.empty());
      ASSERT_EQ(files->files.size(), 2u);
      KernelResult read;
      for (const auto& [name, path] : files->files) {
        EXPECT_EQ(path, KernelFilePath(tmpl, name));
        absl::StatusOr<NpyArray> a = ReadNpy(path);
        ASSERT_TRUE(a.ok()) << a.status();
        read.arrays.emplace(name, *std::move(a));
        std::remove(path.c_str());
      }
      ExpectSameArrays(read, *memory);
    }
  }
  EXPECT_EQ(KernelFilePath("/tmp/out", "nngp"), "/tmp/out.nngp.npy");
  EXPECT_EQ(KernelFilePath("/tmp/out.npy", "ntk"), "/tmp/out.ntk.npy");
  EXPECT_EQ(KernelFilePath("/d/{name}/{name}.npy", "cov1"), "/d/cov1/cov1.npy");
}

TEST_F(ClusterTest, BadRequestFailsTheWholeCall) {
  nt::v1::KernelRequest request = FcRequest(30, false, 4);
  request.mutable_architecture()->mutable_serial()->mutable_layers(0)->mutable_dense()->set_out_dim(0);
  KernelClient all(Join(*servers_));
  absl::StatusOr<KernelResult> r = all.ComputeKernel(request);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("out_dim"), absl::string_view::npos) << r.status();
}

TEST_F(ClusterTest, DeadEndpointsAreGivenUp) {
  // Port 1 refuses connections: its ranges go to the live server.
  const nt::v1::KernelRequest request = FcRequest(40, false, 5);
  KernelClient one((*servers_)[1]->address());
  absl::StatusOr<KernelResult> want = one.ComputeKernel(request);
  ASSERT_TRUE(want.ok()) << want.status();
  ClientOptions options;
  options.address = absl::StrCat("127.0.0.1:1,", (*servers_)[1]->address());
  KernelClient client(options);
  absl::StatusOr<KernelResult> got = client.ComputeKernel(request);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameArrays(*got, *want);
  EXPECT_EQ(got->stats.given_up, std::vector<std::string>{"127.0.0.1:1"});
}

TEST(ClusterDownTest, AllEndpointsDownIsUnavailable) {
  ClientOptions options;
  options.address = "127.0.0.1:1,127.0.0.1:2";
  options.timeout = absl::Seconds(20);
  KernelClient client(options);
  absl::StatusOr<KernelResult> r = client.ComputeKernel(FcRequest(10, false, 2));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  // Large requests take the same path even with one endpoint.
  options.address = "127.0.0.1:1";
  options.upload_threshold_bytes = 16;
  KernelClient single(options);
  r = single.ComputeKernel(FcRequest(10, false, 2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

// ---- A server killed mid-call ----

TEST(ClusterFaultTest, ServerKilledAfterItsFirstTile) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(std::make_unique<ServerProcess>(std::vector<std::string>{"--threads=1"}));
    ASSERT_NE(servers.back()->port(), 0);
  }
  // Tiles that take a moment each, so that the victim has work left when it dies.
  const nt::v1::KernelRequest request = CnnRequest(24, 2);
  KernelClient one(servers[0]->address());
  absl::StatusOr<KernelResult> want = one.ComputeKernel(request);
  ASSERT_TRUE(want.ok()) << want.status();

  const std::string victim = servers[1]->address();
  bool killed = false;
  KernelClient all(Join(servers));
  absl::StatusOr<KernelResult> got = all.ComputeKernel(request, [&](const KernelProgress& p) {
    if (!killed && p.endpoint == victim) {
      killed = true;
      servers[1]->Signal(SIGKILL);
    }
  });
  ASSERT_TRUE(killed);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameArrays(*got, *want);
  EXPECT_EQ(got->stats.given_up, std::vector<std::string>{victim});
  EXPECT_GE(got->stats.tiles.at(victim), 1);
  EXPECT_LT(got->stats.tiles.at(victim), want->summary.num_tiles());
  std::cout << "[ fault    ] " << got->stats.ranges << " ranges, " << got->stats.retries << " retries, "
            << got->stats.tiles.at(victim) << " tiles from the killed server\n";
}

// ---- Uploads ----

TEST(ClusterUploadTest, InputLargerThanTheServersMessageLimitGoesByHandle) {
  ServerProcess small({"--threads=1", "--max_message_bytes=1048576"});
  ServerProcess big({"--threads=1"});
  ASSERT_NE(small.port(), 0);
  ASSERT_NE(big.port(), 0);
  nt::v1::KernelRequest request;
  *request.mutable_architecture() = Arch(kFc);
  *request.mutable_x1() = Doubles({40, 4000}, 4);  // 1.28 MB.
  *request.mutable_x2() = Doubles({3, 4000}, 5);   // 96 KB: also by handle (the request is large).
  request.add_get("nngp");
  request.add_get("ntk");
  request.set_tile_size(16);
  ASSERT_GT(request.ByteSizeLong(), 1u << 20);

  ClientOptions inline_options;
  inline_options.upload_threshold_bytes = int64_t{1} << 40;
  inline_options.address = big.address();
  absl::StatusOr<KernelResult> want = KernelClient(inline_options).ComputeKernel(request);
  ASSERT_TRUE(want.ok()) << want.status();
  inline_options.address = small.address();
  absl::StatusOr<KernelResult> refused = KernelClient(inline_options).ComputeKernel(request);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();

  KernelClient client(small.address());
  absl::StatusOr<KernelResult> got = client.ComputeKernel(request);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameArrays(*got, *want);
  EXPECT_EQ(got->stats.uploads, 2);

  // Upload() / Release() by hand: the handle stands for the data in a request to that server.
  absl::StatusOr<NpyArray> x1 = NpyFromTensor(request.x1());
  ASSERT_TRUE(x1.ok());
  absl::StatusOr<nt::v1::Tensor> h1 = client.Upload(*x1);
  absl::StatusOr<nt::v1::Tensor> h2 = client.Upload(request.x2());
  ASSERT_TRUE(h1.ok()) << h1.status();
  ASSERT_TRUE(h2.ok()) << h2.status();
  EXPECT_FALSE(h1->handle().empty());
  EXPECT_EQ(h1->shape_size(), 0);
  nt::v1::KernelRequest by_handle = request;
  *by_handle.mutable_x1() = *h1;
  *by_handle.mutable_x2() = *h2;
  absl::StatusOr<KernelResult> again = client.ComputeKernel(by_handle);
  ASSERT_TRUE(again.ok()) << again.status();
  ExpectSameArrays(*again, *want);
  EXPECT_EQ(client.Release(h1->handle()).value_or(false), true);
  EXPECT_EQ(client.Release(h1->handle()).value_or(true), false);
  absl::StatusOr<KernelResult> gone = client.ComputeKernel(by_handle);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
  client.Release(h2->handle()).IgnoreError();
}

// ---- Bearer tokens ----

TEST(ClusterAuthTest, TokenProtectedServer) {
  const std::string token_file = TempPath("tokens");
  {
    std::ofstream out(token_file);
    out << "s3cret-token\n";
  }
  ServerProcess server({"--threads=1", "--auth_token_file=" + token_file});
  ASSERT_NE(server.port(), 0);
  unsetenv("NT_TOKEN");
  const nt::v1::KernelRequest request = FcRequest(12, false, 4);

  KernelClient anonymous(server.address());
  absl::StatusOr<KernelResult> r = anonymous.ComputeKernel(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  // Spread over two endpoints (the same server twice): refused at once, not retried.
  KernelClient anonymous2(absl::StrCat(server.address(), ",localhost:", server.port()));
  r = anonymous2.ComputeKernel(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();
  // Health stays open for probes.
  absl::StatusOr<HealthStatus> h = anonymous.Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);

  ClientOptions wrong;
  wrong.address = server.address();
  wrong.token = "guess";
  r = KernelClient(wrong).ComputeKernel(request);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << r.status();

  ClientOptions with_token;
  with_token.address = absl::StrCat(server.address(), ",localhost:", server.port());
  with_token.token = "s3cret-token";
  r = KernelClient(with_token).ComputeKernel(request);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->arrays.at("nngp").shape, (std::vector<int64_t>{12, 12}));

  setenv("NT_TOKEN", "s3cret-token", 1);  // The default token.
  absl::StatusOr<KernelResult> from_env = KernelClient(server.address()).ComputeKernel(request);
  unsetenv("NT_TOKEN");
  ASSERT_TRUE(from_env.ok()) << from_env.status();
  ExpectSameArrays(*from_env, *r);
  std::remove(token_file.c_str());
}

// ---- TLS ----

TEST(ClusterTlsTest, TlsServerWithCaAndDnsName) {
  const std::string key = TempPath("key.pem"), cert = TempPath("cert.pem");
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ", key, " -out ", cert,
      " -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1");
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl cannot make a test certificate";
  ServerProcess server({"--threads=1", "--tls_cert_file=" + cert, "--tls_key_file=" + key});
  ASSERT_NE(server.port(), 0);
  unsetenv("NT_TLS_CA");

  ClientOptions options;
  options.address = server.address();
  options.root_certificates_pem = ReadTextFile(cert).value();
  options.timeout = absl::Seconds(30);
  absl::StatusOr<HealthStatus> h = KernelClient(options).Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  // dns:///localhost:PORT: the resolved IPs are verified against the name.
  options.address = absl::StrCat("dns:///localhost:", server.port());
  const nt::v1::KernelRequest request = FcRequest(10, false, 3);
  absl::StatusOr<KernelResult> r = KernelClient(options).ComputeKernel(request);
  ASSERT_TRUE(r.ok()) << r.status();

  // Plaintext against a TLS server fails.
  ClientOptions plain;
  plain.address = server.address();
  plain.timeout = absl::Seconds(5);
  EXPECT_FALSE(KernelClient(plain).Health().ok());
  // $NT_TLS_CA names the CA file by default.
  setenv("NT_TLS_CA", cert.c_str(), 1);
  h = KernelClient(server.address()).Health();
  unsetenv("NT_TLS_CA");
  ASSERT_TRUE(h.ok()) << h.status();

  // The CLI as the Kubernetes exec probes run it.
  const std::string out = TempPath("health.txt");
  const std::string cli = absl::StrCat(NT_CLI_BIN, " health --server ", server.address(), " --tls_ca=", cert,
                                       " --timeout 20 >", out, " 2>&1");
  EXPECT_EQ(std::system(cli.c_str()), 0);
  std::ifstream in(out);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, server.address() + ": SERVING");
  for (const std::string& f : {key, cert, out}) std::remove(f.c_str());
}

// ---- Address lists ----

TEST(AddressListTest, ParsesListsAndDnsItems) {
  absl::StatusOr<std::vector<ResolvedAddress>> r = ResolveAddresses(" a:1, b:2,,[::1]:3 ");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0].address, "a:1");
  EXPECT_EQ((*r)[1].address, "b:2");
  EXPECT_EQ((*r)[2].address, "[::1]:3");
  EXPECT_EQ((*r)[0].tls_name, "");

  r = ResolveAddresses("x:9,dns:///localhost:4321");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_GE(r->size(), 2u);
  EXPECT_EQ((*r)[0].address, "x:9");
  bool ipv4 = false;
  for (size_t i = 1; i < r->size(); ++i) {
    EXPECT_EQ((*r)[i].tls_name, "localhost");
    EXPECT_TRUE(absl::EndsWith((*r)[i].address, ":4321")) << (*r)[i].address;
    ipv4 |= (*r)[i].address == "127.0.0.1:4321";
  }
  EXPECT_TRUE(ipv4);
  r = ResolveAddresses("dns:localhost:7");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)[0].tls_name, "localhost");

  for (const char* bad :
       {"", " , ", "dns:///localhost", "dns:///:80", "dns:///localhost:http", "dns://8.8.8.8/localhost:80"}) {
    EXPECT_EQ(ResolveAddresses(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ResolveAddresses("dns:///no-such-host.invalid:80").status().code(),
            absl::StatusCode::kUnavailable);

  KernelClient broken("dns:///no-such-host.invalid:80");
  EXPECT_FALSE(broken.status().ok());
  EXPECT_EQ(broken.Describe({}).status().code(), absl::StatusCode::kUnavailable);

  setenv("NT_SERVER", "h1:1,h2:2", 1);
  EXPECT_EQ(DefaultServerAddress(), "h1:1,h2:2");
  EXPECT_EQ(KernelClient().endpoints(), (std::vector<std::string>{"h1:1", "h2:2"}));
  unsetenv("NT_SERVER");
}

TEST(AddressListTest, DnsItemReachesARealServer) {
  ServerProcess server({"--threads=1"});
  ASSERT_NE(server.port(), 0);
  const nt::v1::KernelRequest request = FcRequest(20, false, 4);
  absl::StatusOr<KernelResult> want = KernelClient(server.address()).ComputeKernel(request);
  ASSERT_TRUE(want.ok()) << want.status();
  // localhost may also resolve to ::1, where nothing listens: that endpoint is given up.
  KernelClient client(absl::StrCat("dns:///localhost:", server.port()));
  ASSERT_TRUE(client.status().ok()) << client.status();
  absl::StatusOr<KernelResult> got = client.ComputeKernel(request);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameArrays(*got, *want);
  absl::StatusOr<HealthStatus> h = client.Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
}

}  // namespace
}  // namespace nt::client
