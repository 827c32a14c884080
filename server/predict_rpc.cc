// KernelServiceImpl::Predict: nt.predict.gradient_descent_mse_ensemble over the service.
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/kernel_fn.h"
#include "core/predict.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/call_util.h"
#include "server/kernel_service.h"
#include "server/layer_builder.h"
#include "server/logging.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace nt::server {

namespace {

std::string Deterministic(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

grpc::Status KernelServiceImpl::PredictImpl(grpc::ServerContext* context, const nt::v1::PredictRequest* req,
                                        grpc::ServerWriter<nt::v1::PredictResponse>* writer) {
  const auto start = std::chrono::steady_clock::now();
  if (!req->has_architecture()) return Invalid("architecture: is required");
  if (!req->has_x_train()) return Invalid("x_train: is required");
  if (!req->has_y_train()) return Invalid("y_train: is required");
  if (req->output_dtype() != nt::v1::DTYPE_UNSPECIFIED && req->output_dtype() != nt::v1::FLOAT64 &&
      req->output_dtype() != nt::v1::FLOAT32) {
    return Invalid("output_dtype: must be FLOAT64 or FLOAT32");
  }
  // get: upstream's names, case-insensitive; default both.
  std::vector<predict::Kind> kinds;
  std::set<std::string> seen;
  for (const std::string& g : req->get()) {
    const std::string n = absl::AsciiStrToLower(g);
    if (n != "nngp" && n != "ntk") {
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("get: '", g, "' is not supported by predict; expected nngp and/or ntk"));
    }
    if (!seen.insert(n).second) return Invalid(absl::StrCat("get: '", n, "' is requested twice"));
    kinds.push_back(n == "nngp" ? predict::Kind::kNngp : predict::Kind::kNtk);
  }
  if (kinds.empty()) kinds = {predict::Kind::kNngp, predict::Kind::kNtk};
  std::vector<double> times(req->t().begin(), req->t().end());
  if (times.empty()) times.push_back(std::numeric_limits<double>::infinity());
  for (size_t i = 0; i < times.size(); ++i) {
    if (std::isnan(times[i]) || times[i] < 0) {
      return Invalid(absl::StrCat("t[", i, "]: must be >= 0 or +inf, got ", times[i]));
    }
  }
  const double lr = req->has_learning_rate() ? req->learning_rate() : 1.0;
  if (!std::isfinite(lr) || lr <= 0)
    return Invalid(absl::StrCat("learning_rate: must be positive, got ", lr));
  if (!std::isfinite(req->diag_reg()) || req->diag_reg() < 0) {
    return Invalid(absl::StrCat("diag_reg: must be >= 0, got ", req->diag_reg()));
  }

  auto net = BuildLayer(req->architecture());
  if (!net.ok()) return ToGrpcStatus(net.status());
  auto x_train = DecodeTensor(req->x_train(), "x_train", false, &tensor_store_);
  if (!x_train.ok()) return ToGrpcStatus(x_train.status());
  auto y_train = DecodeTensor(req->y_train(), "y_train", false, &tensor_store_);
  if (!y_train.ok()) return ToGrpcStatus(y_train.status());
  std::optional<Array> x_test;
  if (req->has_x_test()) {
    auto a = DecodeTensor(req->x_test(), "x_test", false, &tensor_store_);
    if (!a.ok()) return ToGrpcStatus(a.status());
    x_test = *std::move(a);
  }
  if (y_train->rank() != 2) {
    return Invalid(
        absl::StrCat("y_train: expected (N_train, K), got shape ", ShapeToString(y_train->shape())));
  }
  for (int64_t axis : req->trace_axes()) {
    if (axis != -1 && axis != y_train->rank() - 1) {
      return grpc::Status(
          grpc::StatusCode::UNIMPLEMENTED,
          absl::StrCat("trace_axes: only the last axis of y_train (-1) is supported, got ", axis));
    }
  }
  const int batch_axis = (**net).requirements().batch_axis.value_or(0);
  const int rank = x_train->rank();
  if (rank < 2)
    return Invalid(absl::StrCat("x_train: rank must be >= 2, got ", ShapeToString(x_train->shape())));
  const int64_t n_train = x_train->dim((batch_axis % rank + rank) % rank);
  if (y_train->dim(0) != n_train) {
    return Invalid(absl::StrCat("y_train: ", y_train->dim(0), " rows for ", n_train, " training inputs"));
  }

  // Kernels in-process, each within the memory budget.
  auto kernel = [&](const Array& x1, const Array* x2,
                    std::vector<std::string> get) -> absl::StatusOr<KernelResult> {
    KernelOptions o;
    o.get = std::move(get);
    auto plan = PlanKernel(**net, x1, x2, o, Concurrency(options_));
    if (!plan.ok()) return plan.status();
    const int64_t need = plan->working_bytes + plan->output_bytes;
    if (need > options_.memory_budget_bytes || !Reserve(need)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("a kernel of this prediction needs about ", need >> 20,
                       " MiB of server memory, more than is free of the budget of ",
                       options_.memory_budget_bytes >> 20, " MiB"));
    }
    auto r = nt::ComputeKernel(**net, x1, x2, o);
    Release(need);
    return r;
  };

  const predict::MseOptions mse{lr, req->diag_reg(), req->diag_reg_absolute_scale()};
  const std::string arch = Deterministic(req->architecture());
  std::shared_ptr<TrainEntry> entry = predict_cache_.Find(arch, *x_train, *y_train, mse);
  const bool cached = entry != nullptr;
  if (!cached) {
    auto dd = kernel(*x_train, nullptr, {"nngp", "ntk"});
    if (!dd.ok()) return ToGrpcStatus(dd.status());
    auto ens = predict::MseEnsemble::Create(dd->Take("nngp"), dd->Take("ntk"), *y_train, mse);
    if (!ens.ok()) return ToGrpcStatus(ens.status());
    entry = std::make_shared<TrainEntry>();
    entry->architecture = arch;
    entry->x_train = *x_train;
    entry->y_train = *y_train;
    entry->options = mse;
    entry->ensemble = *std::move(ens);
    predict_cache_.Insert(entry);
  }
  std::optional<KernelResult> td, tt;
  if (x_test) {
    if (x_test->rank() != rank) {
      return Invalid(absl::StrCat("x_test: rank ", x_test->rank(), " differs from x_train's rank ", rank));
    }
    auto r = kernel(*x_test, &*x_train, {"nngp", "ntk"});
    if (!r.ok()) return ToGrpcStatus(r.status());
    td = *std::move(r);
    if (req->compute_cov()) {
      auto s = kernel(*x_test, nullptr, {"nngp"});
      if (!s.ok()) return ToGrpcStatus(s.status());
      tt = *std::move(s);
    }
  }
  const double kernel_seconds = Seconds(start);
  if (Stopped(context))
    return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");

  const int64_t points = x_test ? td->Find("nngp")->dim(0) : n_train;
  const int64_t outputs = y_train->dim(1);
  nt::v1::PredictResponse header;
  for (predict::Kind k : kinds) header.mutable_header()->add_get(predict::KindName(k));
  header.mutable_header()->set_num_times(static_cast<int64_t>(times.size()));
  header.mutable_header()->set_num_points(points);
  header.mutable_header()->set_num_outputs(outputs);
  header.mutable_header()->set_train_cached(cached);
  if (!writer->Write(header)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");

  const nt::v1::DType dtype = req->output_dtype() == nt::v1::FLOAT32 ? nt::v1::FLOAT32 : nt::v1::FLOAT64;
  const int64_t width = dtype == nt::v1::FLOAT32 ? 4 : 8;
  // Rows per block so that a block's mean and covariance fit in a message with room to spare.
  const int64_t row_bytes = width * (outputs + (req->compute_cov() ? points : 0));
  const int64_t rows_per_block =
      std::max<int64_t>(1, (options_.max_message_bytes / 2) / std::max<int64_t>(row_bytes, 1));
  const auto predict_start = std::chrono::steady_clock::now();
  int64_t blocks = 0;
  for (predict::Kind kind : kinds) {
    const predict::TestKernels test =
        x_test ? predict::TestKernels{td->Find(predict::KindName(kind)), td->Find("nngp"),
                                      tt ? tt->Find("nngp") : nullptr}
               : predict::TestKernels{};
    for (size_t ti = 0; ti < times.size(); ++ti) {
      const std::optional<double> t = std::isinf(times[ti]) ? std::nullopt : std::optional<double>(times[ti]);
      auto p = entry->ensemble->Predict(kind, t, test, req->compute_cov());
      if (!p.ok()) return ToGrpcStatus(p.status());
      for (int64_t r0 = 0; r0 < points; r0 += rows_per_block) {
        const int64_t r1 = std::min(points, r0 + rows_per_block);
        nt::v1::PredictResponse r;
        nt::v1::PredictBlock* b = r.mutable_block();
        b->set_get(predict::KindName(kind));
        b->set_time_index(static_cast<int64_t>(ti));
        b->set_t(times[ti]);
        b->set_row_offset(r0);
        EncodeTensor(SliceAxis(p->mean, 0, r0, r1), dtype, b->mutable_mean());
        if (p->cov) EncodeTensor(SliceAxis(*p->cov, 0, r0, r1), dtype, b->mutable_cov());
        if (Stopped(context) || !writer->Write(r)) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
        }
        ++blocks;
      }
    }
  }
  nt::v1::PredictResponse summary;
  summary.mutable_summary()->set_kernel_seconds(kernel_seconds);
  summary.mutable_summary()->set_predict_seconds(Seconds(predict_start));
  summary.mutable_summary()->set_cached_bytes(predict_cache_.bytes());
  writer->Write(summary);
  LogInfo(absl::StrCat("Predict ", n_train, " training points, ", points, " points, ", times.size(),
                       " times, ", kinds.size(), " kinds: ", blocks, " blocks in ", Seconds(start),
                       " s (kernels ", kernel_seconds, " s)", cached ? " (train-train kernels cached)" : ""));
  return grpc::Status::OK;
}

}  // namespace nt::server
