// nt-server: serves nt.v1.KernelService, grpc.health.v1 and reflection.
#include <malloc.h>

#include <csignal>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "core/array.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/auth.h"
#include "server/kernel_service.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "tbb/global_control.h"

ABSL_FLAG(std::string, address, "0.0.0.0:50051", "Listen address (host:port; port 0 picks a free one).");
ABSL_FLAG(int, threads, 0, "Engine worker threads (0: all cores).");
ABSL_FLAG(int64_t, max_message_bytes, 256LL << 20, "Largest request or response message, in bytes.");
ABSL_FLAG(int64_t, memory_budget_mb, 8192, "Engine memory budget across concurrent requests, in MiB.");
ABSL_FLAG(int64_t, upload_budget_mb, 2048, "Uploaded tensors (UploadTensor) held at once, in MiB.");
ABSL_FLAG(int64_t, block_cache_mb, -1,
          "Freed engine blocks over 32 MiB kept for reuse (no page faults on the next request), in MiB; "
          "the system may reclaim them under memory pressure (-1: min(2048, RAM / 8)).");
ABSL_FLAG(int64_t, upload_ttl_s, 3600, "Uploads unused for this many seconds are dropped (0: never).");
ABSL_FLAG(double, max_request_seconds, 0,
          "A call running longer is stopped with DEADLINE_EXCEEDED (0: no limit; client deadlines also apply).");
ABSL_FLAG(int, max_concurrent_requests, 256, "Calls handled at once; more get RESOURCE_EXHAUSTED (0: no limit).");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain: serve TLS only (with --tls_key_file).");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: also require and verify client certificates (mutual TLS).");
ABSL_FLAG(std::string, auth_token_file, "",
          "Bearer tokens, one per line: every KernelService call needs 'authorization: Bearer <token>' "
          "(grpc.health.v1 and reflection stay open for probes).");
ABSL_FLAG(std::string, metrics_address, "",
          "host:port for Prometheus metrics over plain HTTP (GET /metrics); empty: none.");
ABSL_FLAG(std::string, port_file, "", "If set, the bound port is written to this file once serving.");

namespace {

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal = sig; }

absl::StatusOr<std::string> ReadFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  if (!in || s.str().empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  return s.str();
}

// Plaintext, or TLS from the --tls_* files (mutual TLS with --tls_client_ca_file).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert_file), key = absl::GetFlag(FLAGS_tls_key_file),
                    ca = absl::GetFlag(FLAGS_tls_client_ca_file);
  if (cert.empty() && key.empty() && ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file must be given together");
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto c = ReadFile("--tls_cert_file", cert);
  if (!c.ok()) return c.status();
  auto k = ReadFile("--tls_key_file", key);
  if (!k.ok()) return k.status();
  pair.cert_chain = *c;
  pair.private_key = *k;
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!ca.empty()) {
    auto r = ReadFile("--tls_client_ca_file", ca);
    if (!r.ok()) return r.status();
    ssl.pem_root_certs = *r;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

int main(int argc, char** argv) {
  // glibc hands heap memory freed above 128 KiB back to the system and serves blocks from 128 KiB up to
  // its dynamic threshold with fresh mmaps, so gRPC's receive buffers fault their pages in again on
  // every request (~11 us per 4 KiB on these VMs: a 100 MB upload spent 0.3 s of CPU there). Keep up to
  // 64 MiB of freed heap and map only blocks over 32 MiB, which core/array.cc's block cache reuses.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  absl::SetProgramUsageMessage("nt-server: infinite-width NNGP/NTK kernels over gRPC");
  absl::ParseCommandLine(argc, argv);

  nt::server::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.worker_threads = absl::GetFlag(FLAGS_threads);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget_mb) << 20;
  options.upload_budget_bytes = absl::GetFlag(FLAGS_upload_budget_mb) << 20;
  options.upload_ttl_seconds = absl::GetFlag(FLAGS_upload_ttl_s);
  options.max_request_seconds = absl::GetFlag(FLAGS_max_request_seconds);
  options.max_concurrent_requests = absl::GetFlag(FLAGS_max_concurrent_requests);
  if (options.worker_threads < 0 || options.max_message_bytes < 4096 || options.memory_budget_bytes <= 0 ||
      options.upload_budget_bytes < 0 || options.upload_ttl_seconds < 0 || options.max_request_seconds < 0 ||
      options.max_concurrent_requests < 0) {
    nt::server::LogError(
        "--threads must be >= 0, --max_message_bytes >= 4096, --memory_budget_mb > 0, --upload_budget_mb >= 0 "
        "and --upload_ttl_s, --max_request_seconds, --max_concurrent_requests >= 0");
    return 2;
  }
  if (const int64_t mb = absl::GetFlag(FLAGS_block_cache_mb); mb >= 0) {
    nt::SetSharedBlockCacheBytes(static_cast<size_t>(mb) << 20);
  }
  std::unique_ptr<tbb::global_control> threads;
  if (options.worker_threads > 0) {
    threads = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    options.worker_threads);
  }

  std::optional<nt::server::TokenAuthenticator> auth;
  if (const std::string f = absl::GetFlag(FLAGS_auth_token_file); !f.empty()) {
    auto a = nt::server::TokenAuthenticator::FromFile(f);
    if (!a.ok()) {
      nt::server::LogError(absl::StrCat("--auth_token_file: ", a.status().message()));
      return 2;
    }
    auth = *std::move(a);
  }
  auto credentials = ServerCredentials();
  if (!credentials.ok()) {
    nt::server::LogError(std::string(credentials.status().message()));
    return 2;
  }

  nt::server::ServerMetrics metrics(NT_SERVER_VERSION);
  nt::server::KernelServiceImpl service(options, &metrics, auth ? &*auth : nullptr);
  std::unique_ptr<nt::server::MetricsHttpServer> metrics_http;
  if (const std::string a = absl::GetFlag(FLAGS_metrics_address); !a.empty()) {
    metrics_http = std::make_unique<nt::server::MetricsHttpServer>([&metrics] { return metrics.Render(); });
    if (absl::Status st = metrics_http->Start(a); !st.ok()) {
      nt::server::LogError(absl::StrCat("--metrics_address: ", st.message()));
      return 1;
    }
    nt::server::LogInfo(absl::StrCat("metrics on http://", a, "/metrics (port ", metrics_http->port(), ")"));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.address, *credentials, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX)));
  builder.SetMaxSendMessageSize(static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX)));
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    nt::server::LogError(absl::StrCat("could not listen on ", options.address));
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  nt::server::LogInfo(absl::StrCat("nt-server listening on port ", port, " (", options.address, ")"));
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    if (FILE* fp = std::fopen(f.c_str(), "w")) {
      std::fprintf(fp, "%d\n", port);
      std::fclose(fp);
    }
  }

  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (g_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  nt::server::LogInfo(absl::StrCat("signal ", g_signal.load(), ": draining (up to 10 s), then stopping"));
  server->GetHealthCheckService()->SetServingStatus(false);
  // Wait for the calls in flight ourselves: gRPC's Shutdown deadline would also wait on idle client
  // connections.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (service.active_calls() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  server->Wait();
  if (metrics_http) metrics_http->Stop();
  nt::server::LogInfo("nt-server stopped");
  return 0;
}
