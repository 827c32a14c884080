// nt-server: serves nt.v1.KernelService, grpc.health.v1 and reflection.
#include <csignal>
#include <cstdlib>
#include <memory>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "server/kernel_service.h"
#include "server/logging.h"
#include "tbb/global_control.h"

ABSL_FLAG(std::string, address, "0.0.0.0:50051", "Listen address (host:port; port 0 picks a free one).");
ABSL_FLAG(int, threads, 0, "Engine worker threads (0: all cores).");
ABSL_FLAG(int64_t, max_message_bytes, 256LL << 20, "Largest request or response message, in bytes.");
ABSL_FLAG(int64_t, memory_budget_mb, 8192, "Engine memory budget across concurrent requests, in MiB.");
ABSL_FLAG(int64_t, upload_budget_mb, 2048, "Uploaded tensors (UploadTensor) held at once, in MiB.");
ABSL_FLAG(int64_t, upload_ttl_s, 3600, "Uploads unused for this many seconds are dropped (0: never).");
ABSL_FLAG(std::string, port_file, "", "If set, the bound port is written to this file once serving.");

namespace {

std::atomic<int> g_signal{0};
void OnSignal(int sig) { g_signal = sig; }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("nt-server: infinite-width NNGP/NTK kernels over gRPC");
  absl::ParseCommandLine(argc, argv);

  nt::server::ServerOptions options;
  options.address = absl::GetFlag(FLAGS_address);
  options.worker_threads = absl::GetFlag(FLAGS_threads);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.memory_budget_bytes = absl::GetFlag(FLAGS_memory_budget_mb) << 20;
  options.upload_budget_bytes = absl::GetFlag(FLAGS_upload_budget_mb) << 20;
  options.upload_ttl_seconds = absl::GetFlag(FLAGS_upload_ttl_s);
  if (options.worker_threads < 0 || options.max_message_bytes < 4096 || options.memory_budget_bytes <= 0 ||
      options.upload_budget_bytes < 0 || options.upload_ttl_seconds < 0) {
    nt::server::LogError(
        "--threads must be >= 0, --max_message_bytes >= 4096, --memory_budget_mb > 0, --upload_budget_mb >= 0 "
        "and --upload_ttl_s >= 0");
    return 2;
  }
  std::unique_ptr<tbb::global_control> threads;
  if (options.worker_threads > 0) {
    threads = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    options.worker_threads);
  }

  nt::server::KernelServiceImpl service(options);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &port);
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
  nt::server::LogInfo("nt-server stopped");
  return 0;
}
