#include "server/kernel_service.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/kernel_fn.h"
#include "server/call_util.h"
#include "server/kernel_request.h"
#include "server/layer_builder.h"
#include "server/auth.h"
#include "server/logging.h"
#include "server/metrics.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace nt::server {

namespace {

// Tiles handed from engine threads to the RPC thread; bounded so a slow client slows the engine
// instead of growing memory.
class TileQueue {
 public:
  // `depth` (may be null) follows the number of queued tiles, for the metrics.
  TileQueue(size_t capacity, Gauge* depth) : capacity_(capacity), depth_(depth) {}
  ~TileQueue() {
    if (depth_) depth_->Add(-double(q_.size()));
  }

  // Blocks while full; false once closed.
  bool Push(nt::v1::KernelResponse&& r) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return closed_ || q_.size() < capacity_; });
    if (closed_) return false;
    q_.push_back(std::move(r));
    if (depth_) depth_->Increment();
    not_empty_.notify_one();
    return true;
  }
  // Waits up to `timeout`; nullopt on timeout or when finished and drained.
  std::optional<nt::v1::KernelResponse> Pop(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait_for(lock, timeout, [&] { return closed_ || done_ || !q_.empty(); });
    if (q_.empty()) return std::nullopt;
    nt::v1::KernelResponse r = std::move(q_.front());
    q_.pop_front();
    if (depth_) depth_->Decrement();
    not_full_.notify_one();
    return r;
  }
  // Producer finished: consumers drain what is left.
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    not_empty_.notify_all();
  }
  // Consumer gave up: producers stop.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_full_.notify_all();
    not_empty_.notify_all();
  }
  bool finished_and_empty() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_ && q_.empty();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<nt::v1::KernelResponse> q_;
  size_t capacity_;
  Gauge* depth_;
  bool closed_ = false, done_ = false;
};

void FillArrays(const KernelPlan& plan, google::protobuf::RepeatedPtrField<nt::v1::ArrayInfo>* out) {
  for (const ArraySpec& a : plan.arrays) {
    nt::v1::ArrayInfo* info = out->Add();
    info->set_name(a.name);
    for (int64_t d : a.shape) info->add_shape(d);
    info->set_tiled_axes(a.tiled_axes);
  }
}

absl::Status CheckBudget(const KernelPlan& plan, int64_t queue_bytes, int64_t budget) {
  const int64_t need = plan.working_bytes + queue_bytes;
  if (need > budget) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request needs about ", need >> 20, " MiB of server memory (tiles of ",
                     plan.tile_size, " rows), more than the budget of ", budget >> 20,
                     " MiB; send fewer or smaller inputs, or a smaller tile_size"));
  }
  return absl::OkStatus();
}

}  // namespace

KernelServiceImpl::KernelServiceImpl(const ServerOptions& options, ServerMetrics* metrics,
                                     const TokenAuthenticator* auth)
    : options_(options),
      metrics_(metrics),
      auth_(auth),
      predict_cache_(options.memory_budget_bytes / 4),
      tensor_store_(options.upload_budget_bytes, std::chrono::seconds(options.upload_ttl_seconds)) {
  if (metrics_) {
    metrics_->memory_budget_bytes.Set(double(options_.memory_budget_bytes));
    metrics_->SetScrapeHook([this] {
      metrics_->memory_reserved_bytes.Set(double(reserved_.load()));
      metrics_->upload_store_bytes.Set(double(tensor_store_.bytes()));
      metrics_->upload_store_tensors.Set(double(tensor_store_.count()));
    });
  }
}

KernelServiceImpl::~KernelServiceImpl() {
  if (metrics_) metrics_->SetScrapeHook(nullptr);  // The hook reads this service.
}

template <typename Fn>
grpc::Status KernelServiceImpl::Serve(grpc::ServerContext* context, const char* method, int64_t request_bytes,
                                      Fn&& fn) {
  ActiveCall active(&active_);
  RequestTimer timer(metrics_, method);
  if (metrics_) metrics_->request_bytes.Increment(double(request_bytes));
  auto finish = [&](grpc::Status st) {
    timer.Finish(GrpcCodeName(st.error_code()));
    return st;
  };
  if (auth_) {
    const auto& md = context->client_metadata();
    const auto it = md.find("authorization");
    const absl::string_view value = it == md.end() ? absl::string_view()
                                                   : absl::string_view(it->second.data(), it->second.size());
    if (absl::Status st = auth_->Check(value); !st.ok()) {
      if (metrics_) metrics_->auth_failures.Increment();
      return finish(ToGrpcStatus(st));
    }
  }
  if (options_.max_concurrent_requests > 0 && active_.load() > options_.max_concurrent_requests) {
    return finish(Exhausted(absl::StrCat("the server is handling ", options_.max_concurrent_requests,
                                         " requests, its limit (--max_concurrent_requests); retry later or on "
                                         "another server")));
  }
  if (options_.max_request_seconds <= 0) return finish(fn());
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(options_.max_request_seconds));
  {
    absl::MutexLock lock(&deadlines_mu_);
    deadlines_[context] = deadline;
  }
  grpc::Status st = fn();
  {
    absl::MutexLock lock(&deadlines_mu_);
    deadlines_.erase(context);
  }
  if (st.error_code() == grpc::StatusCode::CANCELLED && std::chrono::steady_clock::now() >= deadline &&
      !context->IsCancelled()) {
    st = grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                      absl::StrCat("the request ran longer than the server's limit of ",
                                   options_.max_request_seconds,
                                   " s (--max_request_seconds); split it into smaller requests (tile_begin, "
                                   "tile_end) or fewer inputs"));
  }
  return finish(st);
}

template <typename Req, typename Resp>
grpc::Status KernelServiceImpl::ServeUnary(grpc::ServerContext* context, const char* method, const Req* request,
                                           Resp* response,
                                           grpc::Status (KernelServiceImpl::*impl)(grpc::ServerContext*,
                                                                                   const Req*, Resp*)) {
  return Serve(context, method, request->ByteSizeLong(), [&] {
    grpc::Status st = (this->*impl)(context, request, response);
    CountSent(response->ByteSizeLong());
    return st;
  });
}

bool KernelServiceImpl::Stopped(grpc::ServerContext* context) const {
  if (context->IsCancelled()) return true;
  if (options_.max_request_seconds <= 0) return false;
  absl::MutexLock lock(&deadlines_mu_);
  const auto it = deadlines_.find(context);
  return it != deadlines_.end() && std::chrono::steady_clock::now() >= it->second;
}

void KernelServiceImpl::CountSent(int64_t bytes, int64_t tiles) {
  if (!metrics_) return;
  metrics_->response_bytes.Increment(double(bytes));
  if (tiles) metrics_->tiles.Increment(double(tiles));
}

grpc::Status KernelServiceImpl::Describe(grpc::ServerContext* c, const nt::v1::DescribeRequest* q,
                                         nt::v1::DescribeResponse* r) {
  return ServeUnary(c, "Describe", q, r, &KernelServiceImpl::DescribeImpl);
}
grpc::Status KernelServiceImpl::ComputeKernel(grpc::ServerContext* c, const nt::v1::KernelRequest* q,
                                              grpc::ServerWriter<nt::v1::KernelResponse>* w) {
  return Serve(c, "ComputeKernel", q->ByteSizeLong(), [&] { return ComputeKernelImpl(c, q, w); });
}
grpc::Status KernelServiceImpl::Predict(grpc::ServerContext* c, const nt::v1::PredictRequest* q,
                                        grpc::ServerWriter<nt::v1::PredictResponse>* w) {
  return Serve(c, "Predict", q->ByteSizeLong(), [&] { return PredictImpl(c, q, w); });
}
grpc::Status KernelServiceImpl::Init(grpc::ServerContext* c, const nt::v1::InitRequest* q,
                                     nt::v1::InitResponse* r) {
  return ServeUnary(c, "Init", q, r, &KernelServiceImpl::InitImpl);
}
grpc::Status KernelServiceImpl::Apply(grpc::ServerContext* c, const nt::v1::ApplyRequest* q,
                                      nt::v1::ApplyResponse* r) {
  return ServeUnary(c, "Apply", q, r, &KernelServiceImpl::ApplyImpl);
}
grpc::Status KernelServiceImpl::EmpiricalKernel(grpc::ServerContext* c, const nt::v1::EmpiricalKernelRequest* q,
                                                nt::v1::EmpiricalKernelResponse* r) {
  return ServeUnary(c, "EmpiricalKernel", q, r, &KernelServiceImpl::EmpiricalKernelImpl);
}
grpc::Status KernelServiceImpl::MonteCarloKernel(grpc::ServerContext* c, const nt::v1::MonteCarloKernelRequest* q,
                                                 grpc::ServerWriter<nt::v1::MonteCarloKernelResponse>* w) {
  return Serve(c, "MonteCarloKernel", q->ByteSizeLong(), [&] { return MonteCarloKernelImpl(c, q, w); });
}
grpc::Status KernelServiceImpl::UploadTensor(grpc::ServerContext* c, grpc::ServerReader<nt::v1::TensorChunk>* q,
                                             nt::v1::UploadTensorResponse* r) {
  return Serve(c, "UploadTensor", 0, [&] { return UploadTensorImpl(c, q, r); });
}
grpc::Status KernelServiceImpl::ReleaseTensor(grpc::ServerContext* c, const nt::v1::ReleaseTensorRequest* q,
                                              nt::v1::ReleaseTensorResponse* r) {
  return ServeUnary(c, "ReleaseTensor", q, r, &KernelServiceImpl::ReleaseTensorImpl);
}

bool KernelServiceImpl::Reserve(int64_t bytes) {
  int64_t cur = reserved_.load();
  while (true) {
    if (cur + bytes > options_.memory_budget_bytes) return false;
    if (reserved_.compare_exchange_weak(cur, cur + bytes)) return true;
  }
}

grpc::Status KernelServiceImpl::DescribeImpl(grpc::ServerContext*, const nt::v1::DescribeRequest* req,
                                         nt::v1::DescribeResponse* resp) {
  if (!req->has_architecture())
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "architecture: is required");
  auto net = BuildLayer(req->architecture());
  if (!net.ok()) return ToGrpcStatus(net.status());
  if (req->x1_shape().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "x1_shape: is required");
  }
  Shape s1(req->x1_shape().begin(), req->x1_shape().end());
  Shape s2(req->x2_shape().begin(), req->x2_shape().end());
  const KernelOptions o = KernelOptionsFrom(req->get(), req->has_diagonal_batch(), req->diagonal_batch(),
                                      req->has_diagonal_spatial(), req->diagonal_spatial(), req->tile_size());
  auto plan = PlanKernelForShapes(**net, s1, s2.empty() ? nullptr : &s2, o, Concurrency(options_));
  if (!plan.ok()) return ToGrpcStatus(plan.status());
  for (int64_t d : plan->meta.shape1) resp->add_output_shape1(d);
  for (int64_t d : plan->meta.shape2) resp->add_output_shape2(d);
  FillArrays(*plan, resp->mutable_arrays());
  resp->set_diagonal_batch(plan->diagonal_batch);
  resp->set_diagonal_spatial(plan->diagonal_spatial);
  resp->set_layout(plan->layout);
  resp->set_tile_size(plan->tile_size);
  resp->set_num_tiles(plan->num_tiles);
  resp->set_estimated_flops(plan->estimated_flops);
  resp->set_estimated_memory_bytes(plan->working_bytes);
  resp->set_output_bytes(plan->output_bytes);
  return grpc::Status::OK;
}

grpc::Status KernelServiceImpl::ComputeKernelImpl(grpc::ServerContext* context, const nt::v1::KernelRequest* req,
                                              grpc::ServerWriter<nt::v1::KernelResponse>* writer) {
  const auto start = std::chrono::steady_clock::now();
  auto decoded = DecodeKernelRequest(*req, &tensor_store_, Concurrency(options_), options_.max_message_bytes);
  if (!decoded.ok()) return ToGrpcStatus(decoded.status());
  DecodedKernelRequest& d = *decoded;
  const KernelPlan* plan = &d.plan;
  const Layer* net = d.net.get();
  KernelOptions& o = d.options;
  const nt::v1::DType dtype = d.dtype;
  const double largest_block = d.largest_block_bytes;
  // Blocks waiting in the queue, each also held once serialised.
  const int64_t queue_bytes = static_cast<int64_t>(double(options_.tile_queue_depth) * largest_block * 2);
  if (absl::Status st = CheckBudget(*plan, queue_bytes, options_.memory_budget_bytes); !st.ok()) {
    return ToGrpcStatus(st);
  }
  const int64_t reservation = plan->working_bytes + queue_bytes;
  if (!Reserve(reservation)) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("the server's memory budget is taken by other requests (",
                                     reservation >> 20, " MiB needed); retry later"));
  }
  struct Release {
    KernelServiceImpl* s;
    int64_t b;
    ~Release() { s->Release(b); }
  } release{this, reservation};

  nt::v1::KernelResponse header;
  FillArrays(*plan, header.mutable_header()->mutable_arrays());
  header.mutable_header()->set_dtype(dtype);
  header.mutable_header()->set_num_tiles(plan->num_tile_messages);
  header.mutable_header()->set_diagonal_spatial(plan->diagonal_spatial);
  header.mutable_header()->set_tile_size(plan->tile_size);
  header.mutable_header()->set_total_tiles(plan->num_tiles);
  header.mutable_header()->set_tile_begin(plan->tile_begin);
  header.mutable_header()->set_tile_end(plan->tile_end);
  if (!writer->Write(header)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");

  std::atomic<bool> cancelled{false};
  o.cancelled = &cancelled;
  TileQueue queue(static_cast<size_t>(std::max<int64_t>(1, options_.tile_queue_depth)),
                  metrics_ ? &metrics_->tile_queue_depth : nullptr);
  int64_t tiles_sent = 0;
  absl::Status engine_status;
  std::thread engine([&] {
    engine_status = ComputeKernelTiles(*net, *d.x1, d.x2.get(), *plan, o, [&](TileBlock&& b) {
      nt::v1::KernelResponse r;
      nt::v1::KernelTile* t = r.mutable_tile();
      t->set_name(b.name);
      t->set_row_offset(b.row);
      t->set_col_offset(b.col);
      t->set_mirror(b.mirror);
      EncodeTensor(b.block, dtype, t->mutable_block());
      if (!queue.Push(std::move(r))) return absl::CancelledError("the client stopped reading");
      return absl::OkStatus();
    });
    queue.Finish();
  });
  bool client_gone = false;
  while (!queue.finished_and_empty()) {
    if (Stopped(context)) {
      client_gone = true;
      break;
    }
    auto r = queue.Pop(std::chrono::milliseconds(50));
    if (!r) continue;
    if (!writer->Write(*r)) {
      client_gone = true;
      break;
    }
    CountSent(r->ByteSizeLong(), 1);
    ++tiles_sent;
  }
  if (client_gone) {
    cancelled = true;
    queue.Close();
  }
  engine.join();
  if (client_gone) {
    LogInfo(absl::StrCat("ComputeKernel cancelled by the client after ", tiles_sent, " tiles"));
    return grpc::Status(grpc::StatusCode::CANCELLED,
                        "the client cancelled the request or its deadline expired");
  }
  if (!engine_status.ok()) return ToGrpcStatus(engine_status);

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nt::v1::KernelResponse summary;
  nt::v1::KernelSummary* s = summary.mutable_summary();
  FillArrays(*plan, s->mutable_arrays());
  const Kernel& m = plan->meta;
  s->set_x1_is_x2(plan->x1_is_x2);
  s->set_is_gaussian(m.is_gaussian);
  s->set_is_reversed(false);
  s->set_diagonal_batch(plan->diagonal_batch);
  s->set_diagonal_spatial(m.diagonal_spatial);
  for (int64_t d : m.shape1) s->add_shape1(d);
  for (int64_t d : m.shape2) s->add_shape2(d);
  s->set_batch_axis(m.batch_axis);
  s->set_channel_axis(m.channel_axis);
  s->set_num_tiles(tiles_sent);
  s->set_compute_seconds(seconds);
  writer->Write(summary);
  LogInfo(absl::StrCat("ComputeKernel ", plan->layout, ": ", tiles_sent, " tiles in ", seconds, " s"));
  return grpc::Status::OK;
}

}  // namespace nt::server
