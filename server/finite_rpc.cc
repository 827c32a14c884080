// KernelServiceImpl::Init and ::Apply: init_fn and apply_fn of the finite network over the service.
#include <cmath>
#include <functional>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/stax.h"
#include "server/call_util.h"
#include "server/kernel_service.h"
#include "server/layer_builder.h"
#include "server/params_codec.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace nt::server {

grpc::Status KernelServiceImpl::InitImpl(grpc::ServerContext*, const nt::v1::InitRequest* req,
                                     nt::v1::InitResponse* resp) {
  if (!req->has_architecture()) return Invalid("architecture: is required");
  if (req->input_shape_size() == 0) return Invalid("input_shape: is required");
  Shape shape(req->input_shape().begin(), req->input_shape().end());
  for (int64_t d : shape) {
    if (d <= 0)
      return Invalid(absl::StrCat("input_shape: dimensions must be positive, got ", ShapeToString(shape)));
  }
  auto net = BuildLayer(req->architecture());
  if (!net.ok()) return ToGrpcStatus(net.status());
  const ShapeFlow in = ShapeFlow::Single(shape);
  auto count = (*net)->NumParams(in);
  if (!count.ok()) return ToGrpcStatus(count.status());
  // Parameters are drawn, then encoded once: twice their size, before anything is allocated.
  const double bytes = *count * 8;
  if (bytes + 1024 > double(options_.max_message_bytes)) {
    return Exhausted(absl::StrCat("architecture: the network has ", *count, " parameters (", bytes,
                                  " bytes), more than the maximum message size of ",
                                  options_.max_message_bytes));
  }
  const int64_t need = static_cast<int64_t>(2 * bytes);
  if (!Reserve(need)) {
    return BudgetTaken(need);
  }
  Reservation reservation{[this](int64_t b) { Release(b); }, need};
  auto out = (*net)->OutputShape(in);
  if (!out.ok()) return ToGrpcStatus(out.status());
  if (out->is_list) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "the network returns a list of outputs; finish it with a FanIn layer");
  }
  auto params = (*net)->Init(RngKey(req->seed()), in);
  if (!params.ok()) return ToGrpcStatus(params.status());
  for (int64_t d : out->single()) resp->add_output_shape(d);
  EncodeParams(*params, nt::v1::FLOAT64, resp->mutable_params());
  return grpc::Status::OK;
}

grpc::Status KernelServiceImpl::ApplyImpl(grpc::ServerContext*, const nt::v1::ApplyRequest* req,
                                      nt::v1::ApplyResponse* resp) {
  if (!req->has_architecture()) return Invalid("architecture: is required");
  if (!req->has_x()) return Invalid("x: is required");
  if (req->output_dtype() != nt::v1::DTYPE_UNSPECIFIED && req->output_dtype() != nt::v1::FLOAT64 &&
      req->output_dtype() != nt::v1::FLOAT32) {
    return Invalid("output_dtype: must be FLOAT64 or FLOAT32");
  }
  auto net = BuildLayer(req->architecture());
  if (!net.ok()) return ToGrpcStatus(net.status());
  auto x = DecodeTensor(req->x(), "x", false, &tensor_store_);
  if (!x.ok()) return ToGrpcStatus(x.status());
  for (int64_t e = 0; e < x->size(); ++e) {
    const double v = (*x)[e];
    const bool masked_nan = req->has_mask_constant() && std::isnan(req->mask_constant()) && std::isnan(v);
    if (!std::isfinite(v) && !masked_nan) {
      return Invalid(absl::StrCat("x: entry ", e, " is not finite (", v, ")"));
    }
  }
  auto out = (*net)->OutputShape(ShapeFlow::Single(x->shape()));
  if (!out.ok()) return ToGrpcStatus(out.status());
  if (out->is_list) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                        "the network returns a list of outputs; finish it with a FanIn layer");
  }
  const double out_bytes = double(NumElements(out->single())) * 8;
  if (out_bytes + 1024 > double(options_.max_message_bytes)) {
    return Exhausted(absl::StrCat("x: the output of shape ", ShapeToString(out->single()), " is ", out_bytes,
                                  " bytes, more than the maximum message size of ",
                                  options_.max_message_bytes, "; apply fewer inputs at a time"));
  }
  // Activations alive at once, about twice for the layers' temporaries, plus the masked copy of x.
  auto peak = (*net)->PeakActivations(ShapeFlow::Single(x->shape()));
  if (!peak.ok()) return ToGrpcStatus(peak.status());
  const double need_bytes = 2 * (*peak + double(x->size())) * 8;
  if (need_bytes > double(options_.memory_budget_bytes)) {
    return Exhausted(absl::StrCat("x: applying the network to inputs of shape ", ShapeToString(x->shape()),
                                  " needs about ", int64_t(need_bytes) >> 20,
                                  " MiB of activations, more than the server's memory budget; apply fewer "
                                  "inputs at a time"));
  }
  const int64_t need = static_cast<int64_t>(need_bytes);
  if (!Reserve(need)) {
    return BudgetTaken(need);
  }
  Reservation reservation{[this](int64_t b) { Release(b); }, need};
  auto params = DecodeParams(req->params(), "params");
  if (!params.ok()) return ToGrpcStatus(params.status());
  std::optional<Array> pattern;
  if (req->has_pattern()) {
    auto p = DecodeTensor(req->pattern(), "pattern", /*allow_integers=*/true, &tensor_store_);
    if (!p.ok()) return ToGrpcStatus(p.status());
    pattern = *std::move(p);
  }
  ApplyContext kwargs;
  kwargs.pattern = pattern ? &*pattern : nullptr;
  if (req->has_rng_seed()) kwargs.rng = RngKey(req->rng_seed());
  std::optional<double> mask_constant;
  if (req->has_mask_constant()) mask_constant = req->mask_constant();
  auto y = stax::Net(*net).apply_fn(*params, *x, mask_constant, kwargs);
  if (!y.ok()) return ToGrpcStatus(y.status());
  EncodeTensor(*y, req->output_dtype() == nt::v1::FLOAT32 ? nt::v1::FLOAT32 : nt::v1::FLOAT64,
               resp->mutable_y());
  return grpc::Status::OK;
}

}  // namespace nt::server
