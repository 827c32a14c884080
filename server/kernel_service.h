// KernelService: a thin gRPC adapter over the core engine (validation, budgets, streaming).
#ifndef NT_SERVER_KERNEL_SERVICE_H_
#define NT_SERVER_KERNEL_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
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
  double max_request_seconds = 0;           // A call running longer gets DEADLINE_EXCEEDED (0: no limit).
  int max_concurrent_requests = 0;          // Calls beyond this get RESOURCE_EXHAUSTED (0: no limit).
};

struct ServerMetrics;
class TokenAuthenticator;

class KernelServiceImpl final : public nt::v1::KernelService::Service {
 public:
  // `metrics` and `auth` may be null (no metrics; no authentication); both must outlive the service.
  explicit KernelServiceImpl(const ServerOptions& options, ServerMetrics* metrics = nullptr,
                             const TokenAuthenticator* auth = nullptr);
  ~KernelServiceImpl() override;

  // Each RPC goes through Serve (authentication, admission, per-request time limit, metrics), then its
  // *Impl in the file named.
  grpc::Status Describe(grpc::ServerContext* context, const nt::v1::DescribeRequest* request,
                        nt::v1::DescribeResponse* response) override;
  grpc::Status ComputeKernel(grpc::ServerContext* context, const nt::v1::KernelRequest* request,
                             grpc::ServerWriter<nt::v1::KernelResponse>* writer) override;
  grpc::Status Predict(grpc::ServerContext* context, const nt::v1::PredictRequest* request,
                       grpc::ServerWriter<nt::v1::PredictResponse>* writer) override;
  grpc::Status Init(grpc::ServerContext* context, const nt::v1::InitRequest* request,
                    nt::v1::InitResponse* response) override;
  grpc::Status Apply(grpc::ServerContext* context, const nt::v1::ApplyRequest* request,
                     nt::v1::ApplyResponse* response) override;
  grpc::Status EmpiricalKernel(grpc::ServerContext* context, const nt::v1::EmpiricalKernelRequest* request,
                               nt::v1::EmpiricalKernelResponse* response) override;
  grpc::Status MonteCarloKernel(grpc::ServerContext* context, const nt::v1::MonteCarloKernelRequest* request,
                                grpc::ServerWriter<nt::v1::MonteCarloKernelResponse>* writer) override;
  grpc::Status UploadTensor(grpc::ServerContext* context, grpc::ServerReader<nt::v1::TensorChunk>* reader,
                            nt::v1::UploadTensorResponse* response) override;
  grpc::Status ReleaseTensor(grpc::ServerContext* context, const nt::v1::ReleaseTensorRequest* request,
                             nt::v1::ReleaseTensorResponse* response) override;

  int64_t reserved_bytes() const { return reserved_.load(); }
  // Calls being handled right now (for a graceful shutdown that does not wait on idle connections).
  int active_calls() const { return active_.load(); }
  const TensorStore& tensor_store() const { return tensor_store_; }

 private:
  // kernel_service.cc.
  grpc::Status DescribeImpl(grpc::ServerContext* context, const nt::v1::DescribeRequest* request,
                            nt::v1::DescribeResponse* response);
  grpc::Status ComputeKernelImpl(grpc::ServerContext* context, const nt::v1::KernelRequest* request,
                                 grpc::ServerWriter<nt::v1::KernelResponse>* writer);
  // predict_rpc.cc.
  grpc::Status PredictImpl(grpc::ServerContext* context, const nt::v1::PredictRequest* request,
                           grpc::ServerWriter<nt::v1::PredictResponse>* writer);
  // finite_rpc.cc: init_fn and apply_fn of the finite network.
  grpc::Status InitImpl(grpc::ServerContext* context, const nt::v1::InitRequest* request,
                        nt::v1::InitResponse* response);
  grpc::Status ApplyImpl(grpc::ServerContext* context, const nt::v1::ApplyRequest* request,
                         nt::v1::ApplyResponse* response);
  // empirical_rpc.cc.
  grpc::Status EmpiricalKernelImpl(grpc::ServerContext* context, const nt::v1::EmpiricalKernelRequest* request,
                                   nt::v1::EmpiricalKernelResponse* response);
  grpc::Status MonteCarloKernelImpl(grpc::ServerContext* context, const nt::v1::MonteCarloKernelRequest* request,
                                    grpc::ServerWriter<nt::v1::MonteCarloKernelResponse>* writer);
  // upload_rpc.cc.
  grpc::Status UploadTensorImpl(grpc::ServerContext* context, grpc::ServerReader<nt::v1::TensorChunk>* reader,
                                nt::v1::UploadTensorResponse* response);
  grpc::Status ReleaseTensorImpl(grpc::ServerContext* context, const nt::v1::ReleaseTensorRequest* request,
                                 nt::v1::ReleaseTensorResponse* response);

  // Runs one call: authentication, the concurrency limit and the per-request time limit, metrics.
  template <typename Fn>
  grpc::Status Serve(grpc::ServerContext* context, const char* method, int64_t request_bytes, Fn&& fn);
  // Serve for a unary call whose response size is counted as sent.
  template <typename Req, typename Resp>
  grpc::Status ServeUnary(grpc::ServerContext* context, const char* method, const Req* request, Resp* response,
                          grpc::Status (KernelServiceImpl::*impl)(grpc::ServerContext*, const Req*, Resp*));
  // The client cancelled, or the call ran past --max_request_seconds: handlers stop at the next check.
  bool Stopped(grpc::ServerContext* context) const;
  // Reserves `bytes` of the memory budget; false if it would be exceeded.
  bool Reserve(int64_t bytes);
  void Release(int64_t bytes) { reserved_ -= bytes; }
  // Counts bytes and tiles sent (no-op without metrics).
  void CountSent(int64_t bytes, int64_t tiles = 0);

  ServerOptions options_;
  ServerMetrics* metrics_;
  const TokenAuthenticator* auth_;
  // A quarter of the memory budget for train-side state kept between Predict calls.
  PredictCache predict_cache_;
  TensorStore tensor_store_;
  std::atomic<int64_t> reserved_{0};
  std::atomic<int> active_{0};
  // Per-call deadlines of --max_request_seconds, by call.
  mutable absl::Mutex deadlines_mu_;
  absl::flat_hash_map<const grpc::ServerContext*, std::chrono::steady_clock::time_point> deadlines_
      ABSL_GUARDED_BY(deadlines_mu_);
};

}  // namespace nt::server

#endif  // NT_SERVER_KERNEL_SERVICE_H_
