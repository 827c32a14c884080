// KernelService: a thin gRPC adapter over the core engine (validation, budgets, streaming).
#ifndef NT_SERVER_KERNEL_SERVICE_H_
#define NT_SERVER_KERNEL_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "nt/v1/service.grpc.pb.h"
#include "server/predict_cache.h"
#include "server/tensor_store.h"

namespace nt::server {

struct ServerOptions {
  std::string address = "0.0.0.0:50051";
  int worker_threads = 0;                   // 0: all cores.
  int64_t max_message_bytes = 256LL << 20;  // Largest request or response message.
  int64_t memory_budget_bytes = 8LL << 30;  // Engine memory across concurrent requests.
  int64_t tile_queue_depth = 8;             // Computed tiles waiting to be written, per request.
  int64_t upload_budget_bytes = 2LL << 30;  // Uploaded tensors held at once (UploadTensor).
  int64_t upload_ttl_seconds = 3600;        // Uploads unused this long are dropped (0: never).
};

class KernelServiceImpl final : public nt::v1::KernelService::Service {
 public:
  explicit KernelServiceImpl(const ServerOptions& options)
      : options_(options),
        predict_cache_(options.memory_budget_bytes / 4),
        tensor_store_(options.upload_budget_bytes, std::chrono::seconds(options.upload_ttl_seconds)) {}

  grpc::Status Describe(grpc::ServerContext* context, const nt::v1::DescribeRequest* request,
                        nt::v1::DescribeResponse* response) override;
  grpc::Status ComputeKernel(grpc::ServerContext* context, const nt::v1::KernelRequest* request,
                             grpc::ServerWriter<nt::v1::KernelResponse>* writer) override;
  // In predict_rpc.cc.
  grpc::Status Predict(grpc::ServerContext* context, const nt::v1::PredictRequest* request,
                       grpc::ServerWriter<nt::v1::PredictResponse>* writer) override;
  // In finite_rpc.cc: init_fn and apply_fn of the finite network.
  grpc::Status Init(grpc::ServerContext* context, const nt::v1::InitRequest* request,
                    nt::v1::InitResponse* response) override;
  grpc::Status Apply(grpc::ServerContext* context, const nt::v1::ApplyRequest* request,
                     nt::v1::ApplyResponse* response) override;
  grpc::Status EmpiricalKernel(grpc::ServerContext* context, const nt::v1::EmpiricalKernelRequest* request,
                               nt::v1::EmpiricalKernelResponse* response) override;
  grpc::Status MonteCarloKernel(grpc::ServerContext* context, const nt::v1::MonteCarloKernelRequest* request,
                                grpc::ServerWriter<nt::v1::MonteCarloKernelResponse>* writer) override;
  // In upload_rpc.cc.
  grpc::Status UploadTensor(grpc::ServerContext* context, grpc::ServerReader<nt::v1::TensorChunk>* reader,
                            nt::v1::UploadTensorResponse* response) override;
  grpc::Status ReleaseTensor(grpc::ServerContext* context, const nt::v1::ReleaseTensorRequest* request,
                             nt::v1::ReleaseTensorResponse* response) override;

  int64_t reserved_bytes() const { return reserved_.load(); }
  // Calls being handled right now (for a graceful shutdown that does not wait on idle connections).
  int active_calls() const { return active_.load(); }

 private:
  // Reserves `bytes` of the memory budget; false if it would be exceeded.
  bool Reserve(int64_t bytes);
  void Release(int64_t bytes) { reserved_ -= bytes; }

  ServerOptions options_;
  // A quarter of the memory budget for train-side state kept between Predict calls.
  PredictCache predict_cache_;
  TensorStore tensor_store_;
  std::atomic<int64_t> reserved_{0};
  std::atomic<int> active_{0};
};

}  // namespace nt::server

#endif  // NT_SERVER_KERNEL_SERVICE_H_
