// KernelServiceImpl::EmpiricalKernel and ::MonteCarloKernel: finite-width kernels over the service, a thin
// adapter over core/empirical.h.
#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/empirical.h"
#include "server/call_util.h"
#include "server/kernel_service.h"
#include "server/layer_builder.h"
#include "server/params_codec.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"
#include "tbb/task_arena.h"

namespace nt::server {

namespace {

// What a request asks of the empirical kernel, decoded and checked.
struct Decoded {
  LayerPtr net;
  Array x1;
  std::optional<Array> x2;
  std::optional<Array> pattern1, pattern2;
  bool nngp = true, ntk = true;
  EmpiricalOptions options;
};

absl::Status CheckFinite(const Array& x, const std::string& field, std::optional<double> mask_constant) {
  for (int64_t e = 0; e < x.size(); ++e) {
    const double v = x[e];
    const bool masked_nan = mask_constant && std::isnan(*mask_constant) && std::isnan(v);
    if (!std::isfinite(v) && !masked_nan) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": entry ", e, " is not finite (", v, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Decoded> Decode(const nt::v1::Layer* arch, const nt::v1::Tensor* x1, const nt::v1::Tensor* x2,
                               const google::protobuf::RepeatedPtrField<std::string>& get,
                               const nt::v1::EmpiricalOptions& eo, nt::v1::DType output_dtype,
                               TensorStore* store) {
  if (arch == nullptr) return absl::InvalidArgumentError("architecture: is required");
  if (x1 == nullptr) return absl::InvalidArgumentError("x1: is required");
  if (output_dtype != nt::v1::DTYPE_UNSPECIFIED && output_dtype != nt::v1::FLOAT64 &&
      output_dtype != nt::v1::FLOAT32) {
    return absl::InvalidArgumentError("output_dtype: must be FLOAT64 or FLOAT32");
  }
  Decoded d;
  if (!get.empty()) {
    d.nngp = d.ntk = false;
    for (const std::string& g : get) {
      const std::string v = absl::AsciiStrToLower(g);
      bool* flag = v == "nngp" ? &d.nngp : v == "ntk" ? &d.ntk : nullptr;
      if (flag == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("get: '", g, "' is not one of nngp, ntk"));
      }
      if (*flag) return absl::InvalidArgumentError(absl::StrCat("get: '", g, "' is requested twice"));
      *flag = true;
    }
  }
  auto net = BuildLayer(*arch);
  if (!net.ok()) return net.status();
  d.net = *net;
  if (eo.has_mask_constant()) d.options.mask_constant = eo.mask_constant();
  auto a1 = DecodeTensor(*x1, "x1", false, store);
  if (!a1.ok()) return a1.status();
  d.x1 = *std::move(a1);
  if (absl::Status st = CheckFinite(d.x1, "x1", d.options.mask_constant); !st.ok()) return st;
  if (x2 != nullptr) {
    auto a2 = DecodeTensor(*x2, "x2", false, store);
    if (!a2.ok()) return a2.status();
    d.x2 = *std::move(a2);
    if (absl::Status st = CheckFinite(*d.x2, "x2", d.options.mask_constant); !st.ok()) return st;
  }
  if (eo.has_trace_axes())
    d.options.trace_axes.assign(eo.trace_axes().axes().begin(), eo.trace_axes().axes().end());
  if (eo.has_diagonal_axes()) {
    d.options.diagonal_axes.assign(eo.diagonal_axes().axes().begin(), eo.diagonal_axes().axes().end());
  }
  if (eo.has_vmap_axes()) {
    d.options.vmap_in_axis = eo.vmap_axes().in_axis();
    d.options.vmap_out_axis = eo.vmap_axes().out_axis();
  }
  for (auto [has, t, out, field] :
       {std::make_tuple(eo.has_pattern1(), &eo.pattern1(), &d.pattern1, "options.pattern1"),
        std::make_tuple(eo.has_pattern2(), &eo.pattern2(), &d.pattern2, "options.pattern2")}) {
    if (!has) continue;
    auto p = DecodeTensor(*t, field, /*allow_integers=*/true, store);
    if (!p.ok()) return p.status();
    if (absl::Status st = CheckFinite(*p, field, std::nullopt); !st.ok()) return st;
    *out = *std::move(p);
  }
  if (d.pattern2 && !d.x2 &&
      !(d.pattern1 && d.pattern1->shape() == d.pattern2->shape() &&
        std::equal(d.pattern1->vec().begin(), d.pattern1->vec().end(), d.pattern2->vec().begin()))) {
    return absl::InvalidArgumentError("options.pattern2: without x2 it must be absent or equal pattern1");
  }
  d.options.pattern1 = d.pattern1 ? &*d.pattern1 : nullptr;
  d.options.pattern2 = d.pattern2 ? &*d.pattern2 : d.options.pattern1;
  return d;
}

// The result must fit one message.
absl::Status CheckMessageSize(const Decoded& d, int64_t max_message_bytes) {
  auto s1 = d.net->OutputShape(ShapeFlow::Single(d.x1.shape()));
  if (!s1.ok()) return s1.status();
  auto s2 = d.net->OutputShape(ShapeFlow::Single(d.x2 ? d.x2->shape() : d.x1.shape()));
  if (!s2.ok()) return s2.status();
  if (s1->is_list || s2->is_list) {
    return absl::UnimplementedError("the network returns a list of outputs; finish it with a FanIn layer");
  }
  auto shape = EmpiricalKernelShape(s1->single(), s2->single(), d.options);
  if (!shape.ok()) return shape.status();
  const double bytes = double(NumElements(*shape)) * 8 * ((d.nngp ? 1 : 0) + (d.ntk ? 1 : 0));
  if (bytes + 4096 > double(max_message_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("x1: the kernels of shape ", ShapeToString(*shape), " are ", bytes,
                     " bytes, more than the maximum message size of ", max_message_bytes,
                     "; trace more axes or send fewer inputs at a time"));
  }
  return absl::OkStatus();
}

// Decode and CheckMessageSize of an EmpiricalKernelRequest or MonteCarloKernelRequest.
template <typename Request>
absl::StatusOr<Decoded> DecodeRequest(const Request& req, int64_t max_message_bytes, TensorStore* store) {
  auto d = Decode(req.has_architecture() ? &req.architecture() : nullptr, req.has_x1() ? &req.x1() : nullptr,
                  req.has_x2() ? &req.x2() : nullptr, req.get(), req.options(), req.output_dtype(), store);
  if (!d.ok()) return d.status();
  if (absl::Status st = CheckMessageSize(*d, max_message_bytes); !st.ok()) return st;
  return d;
}

void EncodeKernel(const EmpiricalKernel& k, nt::v1::DType dtype, nt::v1::Tensor* nngp, nt::v1::Tensor* ntk) {
  const nt::v1::DType out = dtype == nt::v1::FLOAT32 ? nt::v1::FLOAT32 : nt::v1::FLOAT64;
  if (k.nngp) EncodeTensor(*k.nngp, out, nngp);
  if (k.ntk) EncodeTensor(*k.ntk, out, ntk);
}

}  // namespace

grpc::Status KernelServiceImpl::EmpiricalKernelImpl(grpc::ServerContext*,
                                                const nt::v1::EmpiricalKernelRequest* req,
                                                nt::v1::EmpiricalKernelResponse* resp) {
  auto d = DecodeRequest(*req, options_.max_message_bytes, &tensor_store_);
  if (!d.ok()) return ToGrpcStatus(d.status());
  auto params = DecodeParams(req->params(), "params");
  if (!params.ok()) return ToGrpcStatus(params.status());
  if (req->has_rng_seed()) d->options.rng = RngKey(req->rng_seed());
  d->options.memory_budget_bytes = double(options_.memory_budget_bytes);
  auto bytes = EmpiricalKernelBytes(*d->net, double(NumParamEntries(*params)), d->x1.shape(),
                                    d->x2 ? &d->x2->shape() : nullptr, d->ntk, d->options);
  if (!bytes.ok()) return ToGrpcStatus(bytes.status());
  const int64_t need = static_cast<int64_t>(*bytes);
  if (!Reserve(need)) {
    return BudgetTaken(need);
  }
  Reservation reservation{[this](int64_t b) { Release(b); }, need};
  auto k = EmpiricalKernelFn(*d->net, *params, d->x1, d->x2 ? &*d->x2 : nullptr, d->nngp, d->ntk, d->options);
  if (!k.ok()) return ToGrpcStatus(k.status());
  EncodeKernel(*k, req->output_dtype(), resp->mutable_nngp(), resp->mutable_ntk());
  if (!k->nngp) resp->clear_nngp();
  if (!k->ntk) resp->clear_ntk();
  return grpc::Status::OK;
}

grpc::Status KernelServiceImpl::MonteCarloKernelImpl(
    grpc::ServerContext* context, const nt::v1::MonteCarloKernelRequest* req,
    grpc::ServerWriter<nt::v1::MonteCarloKernelResponse>* writer) {
  auto d = DecodeRequest(*req, options_.max_message_bytes, &tensor_store_);
  if (!d.ok()) return ToGrpcStatus(d.status());
  MonteCarloOptions o;
  o.empirical = d->options;
  o.key = RngKey(req->seed());
  o.n_samples.assign(req->n_samples().begin(), req->n_samples().end());
  if (o.n_samples.empty()) o.n_samples = {1};
  constexpr int kMaxSamples = 1 << 20;
  for (int n : o.n_samples) {
    if (n <= 0 || n > kMaxSamples) {
      return Invalid(absl::StrCat("n_samples: must be in [1, ", kMaxSamples, "], got ", n));
    }
  }
  auto num_params = d->net->NumParams(ShapeFlow::Single(d->x1.shape()));
  if (!num_params.ok()) return ToGrpcStatus(num_params.status());
  // Samples run in parallel, each with its own parameters and Jacobians, plus the running sum.
  auto one = EmpiricalKernelBytes(*d->net, *num_params, d->x1.shape(), d->x2 ? &d->x2->shape() : nullptr,
                                  d->ntk, EmpiricalOptions{d->options.trace_axes, d->options.diagonal_axes});
  if (!one.ok()) return ToGrpcStatus(one.status());
  const double parallel = std::max(1, tbb::this_task_arena::max_concurrency());
  const double need_bytes = parallel * (*one + *num_params * 8) + *one;
  if (need_bytes > double(options_.memory_budget_bytes)) {
    return Exhausted(absl::StrCat("x1: Monte Carlo samples of this network need about ",
                                  int64_t(need_bytes) >> 20,
                                  " MiB, more than the server's memory budget; send fewer inputs at a time"));
  }
  const int64_t need = static_cast<int64_t>(need_bytes);
  if (!Reserve(need)) {
    return BudgetTaken(need);
  }
  Reservation reservation{[this](int64_t b) { Release(b); }, need};
  auto cancelled = [&]() -> absl::Status {
    if (Stopped(context)) return absl::CancelledError("the client cancelled the call");
    return absl::OkStatus();
  };
  absl::Status st = MonteCarloKernelFn(
      *d->net, d->x1, d->x2 ? &*d->x2 : nullptr, d->nngp, d->ntk, o,
      [&](int n, const ::nt::EmpiricalKernel& k) -> absl::Status {
        nt::v1::MonteCarloKernelResponse r;
        r.mutable_estimate()->set_n_samples(n);
        EncodeKernel(k, req->output_dtype(), r.mutable_estimate()->mutable_nngp(),
                     r.mutable_estimate()->mutable_ntk());
        if (!k.nngp) r.mutable_estimate()->clear_nngp();
        if (!k.ntk) r.mutable_estimate()->clear_ntk();
        if (!writer->Write(r)) return absl::CancelledError("the client went away");
        return cancelled();
      },
      [&](int done, int total) -> absl::Status {
        nt::v1::MonteCarloKernelResponse r;
        r.mutable_progress()->set_samples_done(done);
        r.mutable_progress()->set_samples_total(total);
        if (!writer->Write(r)) return absl::CancelledError("the client went away");
        return cancelled();
      });
  return ToGrpcStatus(st);
}

}  // namespace nt::server
