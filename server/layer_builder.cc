#include "server/layer_builder.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/numerical_activation.h"
#include "core/stax.h"
#include "server/tensor_codec.h"

namespace nt::server {

namespace {

using stax::Net;

constexpr int kMaxDepth = 48;

// Error messages carry the path of the layer inside the architecture, e.g. "serial.layers[2] (Dense)".
std::string Where(const std::string& path, const std::string& name) {
  return absl::StrCat(path, " (", name, ")");
}

absl::Status Prefix(const absl::Status& st, const std::string& path) {
  return absl::Status(st.code(), absl::StrCat(path, ": ", st.message()));
}

absl::StatusOr<LayerPtr> Build(const nt::v1::Layer& l, const std::string& path, int depth);

absl::StatusOr<std::vector<Net>> BuildChildren(const google::protobuf::RepeatedPtrField<nt::v1::Layer>& ls,
                                               const std::string& path, int depth) {
  std::vector<Net> out;
  for (int i = 0; i < ls.size(); ++i) {
    auto c = Build(ls[i], absl::StrCat(path, ".layers[", i, "]"), depth + 1);
    if (!c.ok()) return c.status();
    out.emplace_back(*c);
  }
  return out;
}

absl::Status Invalid(const std::string& path, const std::string& layer, const std::string& field,
                     const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat(Where(path, layer), ".", field, ": ", msg));
}

// Factories validate their arguments; surface a failure now, before any work starts.
absl::StatusOr<LayerPtr> Finish(const Net& net, const std::string& path) {
  if (!net.status().ok()) return Prefix(net.status(), path);
  return net.layer();
}

std::string PaddingString(nt::v1::Padding p) {
  if (p == nt::v1::SAME) return "SAME";
  if (p == nt::v1::CIRCULAR) return "CIRCULAR";
  return "VALID";
}

// Pooling windows and strides: bounded like convolution filters.
absl::Status CheckWindows(const std::string& path, const std::string& name, const std::string& field,
                          const google::protobuf::RepeatedField<int64_t>& v) {
  if (v.size() > 8) return Invalid(path, name, field, "at most 8 spatial dimensions");
  for (int64_t x : v) {
    if (x < 1 || x > 4096)
      return Invalid(path, name, field, absl::StrCat("entries must be in [1, 4096], got ", x));
  }
  return absl::OkStatus();
}

// Axis arguments are small integers; anything else is a client error, not an int overflow.
absl::StatusOr<int> Axis(const std::string& path, const std::string& name, const std::string& field, bool has,
                         int64_t v, int def) {
  if (!has) return def;
  if (v < -64 || v > 64) return Invalid(path, name, field, absl::StrCat("must be in [-64, 64], got ", v));
  return static_cast<int>(v);
}

// Conv, ConvTranspose and ConvLocal share their fields.
template <typename M>
absl::StatusOr<LayerPtr> BuildConv(const M& c, const std::string& name, const std::string& path) {
  if (!c.has_out_chan()) return Invalid(path, name, "out_chan", "is required");
  if (c.out_chan() <= 0 || c.out_chan() > (int64_t{1} << 30))
    return Invalid(path, name, "out_chan", absl::StrCat("must be in [1, 2^30], got ", c.out_chan()));
  if (c.filter_shape_size() > 8) return Invalid(path, name, "filter_shape", "at most 8 spatial dimensions");
  // Bounds keep the per-axis tap tables small; real filters and strides are far smaller.
  for (int64_t f : c.filter_shape()) {
    if (f < 1 || f > 4096)
      return Invalid(path, name, "filter_shape", absl::StrCat("entries must be in [1, 4096], got ", f));
  }
  if (c.strides_size() != 0 && c.strides_size() != c.filter_shape_size())
    return Invalid(path, name, "strides",
                   absl::StrCat("must have one entry per filter dimension (", c.filter_shape_size(),
                                "), got ", c.strides_size()));
  for (int64_t st : c.strides()) {
    if (st < 1 || st > 4096)
      return Invalid(path, name, "strides", absl::StrCat("entries must be in [1, 4096], got ", st));
  }
  std::array<double, 2> s = {1.0, 1.0};
  if (c.s_size() != 0 && c.s_size() != 2) return Invalid(path, name, "s", "must have two entries (s0, s1)");
  if (c.s_size() == 2) s = {double(c.s(0)), double(c.s(1))};
  std::optional<double> b_std;
  if (c.has_b_std()) b_std = c.b_std();
  const std::string padding = PaddingString(c.padding());
  if (!nt::v1::Padding_IsValid(c.padding()))
    return Invalid(path, name, "padding", absl::StrCat("unknown value ", int(c.padding())));
  std::array<std::string, 3> dn;
  if (c.has_dimension_numbers()) {
    dn = {c.dimension_numbers().lhs_spec(), c.dimension_numbers().rhs_spec(),
          c.dimension_numbers().out_spec()};
  }
  std::vector<int64_t> filter(c.filter_shape().begin(), c.filter_shape().end());
  std::vector<int64_t> strides(c.strides().begin(), c.strides().end());
  const double w_std = c.has_w_std() ? c.w_std() : 1.0;
  const std::string param = c.has_parameterization() ? c.parameterization() : "ntk";
  const Net net =
      name == "Conv" ? stax::Conv(c.out_chan(), filter, strides, padding, w_std, b_std, dn, param, s)
      : name == "ConvTranspose"
          ? stax::ConvTranspose(c.out_chan(), filter, strides, padding, w_std, b_std, dn, param, s)
          : stax::ConvLocal(c.out_chan(), filter, strides, padding, w_std, b_std, dn, param, s);
  return Finish(net, Where(path, name));
}

absl::StatusOr<LayerPtr> Build(const nt::v1::Layer& l, const std::string& path, int depth) {
  // gRPC's protobuf parser already stops at 100 message levels (two per combinator level).
  if (depth > kMaxDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": architecture nested deeper than ", kMaxDepth, " levels"));
  }
  using K = nt::v1::Layer::KindCase;
  switch (l.kind_case()) {
    case K::KIND_NOT_SET:
      return absl::InvalidArgumentError(absl::StrCat(path, ": layer has no kind set"));
    case K::kSerial: {
      auto ch = BuildChildren(l.serial().layers(), path, depth);
      if (!ch.ok()) return ch.status();
      return stax::serial(*std::move(ch)).layer();
    }
    case K::kParallel: {
      auto ch = BuildChildren(l.parallel().layers(), path, depth);
      if (!ch.ok()) return ch.status();
      if (ch->empty()) return Invalid(path, "parallel", "layers", "needs at least one branch");
      return stax::parallel(*std::move(ch)).layer();
    }
    case K::kRepeat: {
      const auto& r = l.repeat();
      if (!r.has_n()) return Invalid(path, "repeat", "n", "is required");
      if (r.n() < 0 || r.n() > 100000)
        return Invalid(path, "repeat", "n", absl::StrCat("must be in [0, 100000], got ", r.n()));
      if (!r.has_layer()) return Invalid(path, "repeat", "layer", "is required");
      auto c = Build(r.layer(), absl::StrCat(path, ".layer"), depth + 1);
      if (!c.ok()) return c.status();
      return stax::repeat(Net(*c), static_cast<int>(r.n())).layer();
    }
    case K::kIdentity:
      return stax::Identity().layer();
    case K::kFanOut: {
      if (!l.fan_out().has_num()) return Invalid(path, "FanOut", "num", "is required");
      const int64_t num = l.fan_out().num();
      if (num < 1 || num > 4096)
        return Invalid(path, "FanOut", "num", absl::StrCat("must be in [1, 4096], got ", num));
      return stax::FanOut(static_cast<int>(num)).layer();
    }
    case K::kFanInSum:
      return stax::FanInSum().layer();
    case K::kFanInProd:
      return stax::FanInProd().layer();
    case K::kFanInConcat: {
      const auto& c = l.fan_in_concat();
      auto ax = Axis(path, "FanInConcat", "axis", c.has_axis(), c.axis(), -1);
      if (!ax.ok()) return ax.status();
      return stax::FanInConcat(*ax).layer();
    }
    case K::kLayerNorm: {
      const auto& n = l.layer_norm();
      std::vector<int> axis;
      for (int64_t a : n.axis()) {
        if (a < -64 || a > 64)
          return Invalid(path, "LayerNorm", "axis", absl::StrCat("must be in [-64, 64], got ", a));
        axis.push_back(static_cast<int>(a));
      }
      if (axis.empty()) axis = {-1};
      auto b = Axis(path, "LayerNorm", "batch_axis", n.has_batch_axis(), n.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, "LayerNorm", "channel_axis", n.has_channel_axis(), n.channel_axis(), -1);
      if (!c.ok()) return c.status();
      return Finish(stax::LayerNorm(axis, n.has_eps() ? n.eps() : 1e-12, *b, *c), Where(path, "LayerNorm"));
    }
    case K::kGlobalSelfAttention: {
      const auto& g = l.global_self_attention();
      const std::string name = "GlobalSelfAttention";
      GlobalSelfAttentionOptions o;
      // Finite widths of init_fn/apply_fn; bounded like convolution channels.
      for (auto [field, has, v, out] : {std::tuple<const char*, bool, int64_t, int64_t*>{
                                            "n_chan_out", g.has_n_chan_out(), g.n_chan_out(), &o.n_chan_out},
                                        {"n_chan_key", g.has_n_chan_key(), g.n_chan_key(), &o.n_chan_key},
                                        {"n_chan_val", g.has_n_chan_val(), g.n_chan_val(), &o.n_chan_val},
                                        {"n_heads", g.has_n_heads(), g.n_heads(), &o.n_heads}}) {
        if (!has) return Invalid(path, name, field, "is required");
        if (v < 1 || v > (int64_t{1} << 30))
          return Invalid(path, name, field, absl::StrCat("must be in [1, 2^30], got ", v));
        *out = v;
      }
      if (g.has_n_chan_pos_emb()) {
        if (g.n_chan_pos_emb() < 1 || g.n_chan_pos_emb() > (int64_t{1} << 30))
          return Invalid(path, name, "n_chan_pos_emb",
                         absl::StrCat("must be in [1, 2^30], got ", g.n_chan_pos_emb()));
        o.n_chan_pos_emb = g.n_chan_pos_emb();
      }
      if (!nt::v1::AttentionMechanism_IsValid(g.attention_mechanism()))
        return Invalid(path, name, "attention_mechanism",
                       absl::StrCat("unknown value ", int(g.attention_mechanism())));
      switch (g.attention_mechanism()) {
        case nt::v1::IDENTITY:
          o.attention_mechanism = AttentionMechanism::kIdentity;
          break;
        case nt::v1::ABS:
          o.attention_mechanism = AttentionMechanism::kAbs;
          break;
        case nt::v1::RELU:
          o.attention_mechanism = AttentionMechanism::kRelu;
          break;
        default:  // SOFTMAX, and the upstream default when unspecified.
          o.attention_mechanism = AttentionMechanism::kSoftmax;
      }
      if (!nt::v1::PositionalEmbedding_IsValid(g.pos_emb_type()))
        return Invalid(path, name, "pos_emb_type", absl::StrCat("unknown value ", int(g.pos_emb_type())));
      o.pos_emb_type = g.pos_emb_type() == nt::v1::SUM      ? PositionalEmbedding::kSum
                       : g.pos_emb_type() == nt::v1::CONCAT ? PositionalEmbedding::kConcat
                                                            : PositionalEmbedding::kNone;
      if (g.has_linear_scaling()) o.linear_scaling = g.linear_scaling();
      if (g.has_w_key_std()) o.W_key_std = g.w_key_std();
      if (g.has_w_value_std()) o.W_value_std = g.w_value_std();
      if (g.has_w_query_std()) o.W_query_std = g.w_query_std();
      if (g.has_w_out_std()) o.W_out_std = g.w_out_std();
      if (g.has_b_std()) o.b_std = g.b_std();
      if (g.has_pos_emb_p_norm()) o.pos_emb_p_norm = g.pos_emb_p_norm();
      if (g.has_pos_emb_decay_fn()) o.pos_emb_decay_fn = g.pos_emb_decay_fn();
      if (g.has_w_pos_emb_std()) o.W_pos_emb_std = g.w_pos_emb_std();
      o.val_pos_emb = g.val_pos_emb();
      auto b = Axis(path, name, "batch_axis", g.has_batch_axis(), g.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, name, "channel_axis", g.has_channel_axis(), g.channel_axis(), -1);
      if (!c.ok()) return c.status();
      o.batch_axis = *b;
      o.channel_axis = *c;
      return Finish(stax::GlobalSelfAttention(std::move(o)), Where(path, name));
    }
    case K::kDropout: {
      const auto& d = l.dropout();
      if (!d.has_rate()) return Invalid(path, "Dropout", "rate", "is required");
      return Finish(stax::Dropout(d.rate(), d.has_mode() ? d.mode() : "train"), Where(path, "Dropout"));
    }
    case K::kDotGeneral: {
      const auto& d = l.dot_general();
      std::optional<Array> lhs, rhs;
      for (const bool is_lhs : {true, false}) {
        if (!(is_lhs ? d.has_lhs() : d.has_rhs())) continue;
        auto t = DecodeTensor(is_lhs ? d.lhs() : d.rhs(),
                              absl::StrCat(Where(path, "DotGeneral"), is_lhs ? ".lhs" : ".rhs"));
        if (!t.ok()) return t.status();
        (is_lhs ? lhs : rhs) = *std::move(t);
      }
      std::array<std::vector<int>, 4> dn;
      const auto& n = d.dimension_numbers();
      const google::protobuf::RepeatedField<int64_t>* lists[4] = {&n.lhs_contracting(), &n.rhs_contracting(),
                                                                  &n.lhs_batch(), &n.rhs_batch()};
      for (int i = 0; i < 4; ++i) {
        for (int64_t a : *lists[i]) {
          if (a < 0 || a > 64) {
            return Invalid(path, "DotGeneral", "dimension_numbers",
                           absl::StrCat("dimensions must be in [0, 64], got ", a));
          }
          dn[i].push_back(static_cast<int>(a));
        }
      }
      auto b = Axis(path, "DotGeneral", "batch_axis", d.has_batch_axis(), d.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, "DotGeneral", "channel_axis", d.has_channel_axis(), d.channel_axis(), -1);
      if (!c.ok()) return c.status();
      // `precision` only selects XLA's matmul precision; we always compute in full precision.
      return Finish(stax::DotGeneral(std::move(lhs), std::move(rhs), dn, *b, *c), Where(path, "DotGeneral"));
    }
    case K::kAggregate: {
      const auto& a = l.aggregate();
      if (a.has_to_dense() && a.to_dense() != "p") {
        return absl::UnimplementedError(
            absl::StrCat(Where(path, "Aggregate"), ".to_dense: only the identity \"p\" is supported, got \"",
                         a.to_dense(), "\"; send the dense pattern instead"));
      }
      std::optional<std::vector<int>> axes;
      if (a.has_aggregate_axis()) {
        axes.emplace();
        for (int64_t x : a.aggregate_axis().axes()) {
          auto ax = Axis(path, "Aggregate", "aggregate_axis", true, x, 0);
          if (!ax.ok()) return ax.status();
          axes->push_back(*ax);
        }
      }
      auto b = Axis(path, "Aggregate", "batch_axis", a.has_batch_axis(), a.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, "Aggregate", "channel_axis", a.has_channel_axis(), a.channel_axis(), -1);
      if (!c.ok()) return c.status();
      return Finish(stax::Aggregate(axes, *b, *c, a.implementation() == nt::v1::SPARSE ? "SPARSE" : "DENSE"),
                    Where(path, "Aggregate"));
    }
    case K::kDense: {
      const auto& d = l.dense();
      if (!d.has_out_dim()) return Invalid(path, "Dense", "out_dim", "is required");
      if (d.out_dim() <= 0)
        return Invalid(path, "Dense", "out_dim", absl::StrCat("must be positive, got ", d.out_dim()));
      std::array<double, 2> s = {1.0, 1.0};
      if (d.s_size() != 0 && d.s_size() != 2)
        return Invalid(path, "Dense", "s", "must have two entries (s0, s1)");
      if (d.s_size() == 2) s = {double(d.s(0)), double(d.s(1))};
      std::optional<double> b_std;
      if (d.has_b_std()) b_std = d.b_std();
      return Finish(stax::Dense(d.out_dim(), d.has_w_std() ? d.w_std() : 1.0, b_std,
                                d.has_batch_axis() ? int(d.batch_axis()) : 0,
                                d.has_channel_axis() ? int(d.channel_axis()) : -1,
                                d.has_parameterization() ? d.parameterization() : "ntk", s),
                    Where(path, "Dense"));
    }
    case K::kConv:
      return BuildConv(l.conv(), "Conv", path);
    case K::kConvTranspose:
      return BuildConv(l.conv_transpose(), "ConvTranspose", path);
    case K::kConvLocal:
      return BuildConv(l.conv_local(), "ConvLocal", path);
    case K::kAvgPool:
    case K::kSumPool: {
      const bool avg = l.kind_case() == K::kAvgPool;
      const std::string name = avg ? "AvgPool" : "SumPool";
      const auto& w = avg ? l.avg_pool().window_shape() : l.sum_pool().window_shape();
      const auto& st = avg ? l.avg_pool().strides() : l.sum_pool().strides();
      if (absl::Status e = CheckWindows(path, name, "window_shape", w); !e.ok()) return e;
      if (absl::Status e = CheckWindows(path, name, "strides", st); !e.ok()) return e;
      const nt::v1::Padding pad = avg ? l.avg_pool().padding() : l.sum_pool().padding();
      if (!nt::v1::Padding_IsValid(pad))
        return Invalid(path, name, "padding", absl::StrCat("unknown value ", int(pad)));
      auto b =
          avg ? Axis(path, name, "batch_axis", l.avg_pool().has_batch_axis(), l.avg_pool().batch_axis(), 0)
              : Axis(path, name, "batch_axis", l.sum_pool().has_batch_axis(), l.sum_pool().batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = avg ? Axis(path, name, "channel_axis", l.avg_pool().has_channel_axis(),
                          l.avg_pool().channel_axis(), -1)
                   : Axis(path, name, "channel_axis", l.sum_pool().has_channel_axis(),
                          l.sum_pool().channel_axis(), -1);
      if (!c.ok()) return c.status();
      std::vector<int64_t> window(w.begin(), w.end()), strides(st.begin(), st.end());
      return Finish(
          avg ? stax::AvgPool(window, strides, PaddingString(pad), l.avg_pool().normalize_edges(), *b, *c)
              : stax::SumPool(window, strides, PaddingString(pad), *b, *c),
          Where(path, name));
    }
    case K::kGlobalAvgPool:
    case K::kGlobalSumPool: {
      const bool avg = l.kind_case() == K::kGlobalAvgPool;
      const std::string name = avg ? "GlobalAvgPool" : "GlobalSumPool";
      const bool has_b = avg ? l.global_avg_pool().has_batch_axis() : l.global_sum_pool().has_batch_axis();
      const int64_t bv = avg ? l.global_avg_pool().batch_axis() : l.global_sum_pool().batch_axis();
      const bool has_c =
          avg ? l.global_avg_pool().has_channel_axis() : l.global_sum_pool().has_channel_axis();
      const int64_t cv = avg ? l.global_avg_pool().channel_axis() : l.global_sum_pool().channel_axis();
      auto b = Axis(path, name, "batch_axis", has_b, bv, 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, name, "channel_axis", has_c, cv, -1);
      if (!c.ok()) return c.status();
      return Finish(avg ? stax::GlobalAvgPool(*b, *c) : stax::GlobalSumPool(*b, *c), Where(path, name));
    }
    case K::kFlatten: {
      const auto& f = l.flatten();
      auto b = Axis(path, "Flatten", "batch_axis", f.has_batch_axis(), f.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto bo = Axis(path, "Flatten", "batch_axis_out", f.has_batch_axis_out(), f.batch_axis_out(), 0);
      if (!bo.ok()) return bo.status();
      return Finish(stax::Flatten(*b, *bo), Where(path, "Flatten"));
    }
    case K::kImageResize: {
      const auto& r = l.image_resize();
      if (r.shape_size() == 0) return Invalid(path, "ImageResize", "shape", "is required");
      if (r.shape_size() > 10) return Invalid(path, "ImageResize", "shape", "at most 10 axes");
      for (int64_t v : r.shape()) {
        if (v != -1 && (v < 1 || v > (int64_t{1} << 20)))
          return Invalid(path, "ImageResize", "shape",
                         absl::StrCat("entries must be -1 or in [1, 2^20], got ", v));
      }
      if (!r.has_method()) return Invalid(path, "ImageResize", "method", "is required");
      auto b = Axis(path, "ImageResize", "batch_axis", r.has_batch_axis(), r.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, "ImageResize", "channel_axis", r.has_channel_axis(), r.channel_axis(), -1);
      if (!c.ok()) return c.status();
      return Finish(stax::ImageResize(std::vector<int64_t>(r.shape().begin(), r.shape().end()), r.method(),
                                      r.has_antialias() ? r.antialias() : true,
                                      r.has_precision() ? r.precision() : "HIGHEST", *b, *c),
                    Where(path, "ImageResize"));
    }
    case K::kIndex: {
      const auto& ix = l.index();
      if (ix.idx_size() == 0) return Invalid(path, "Index", "idx", "is required");
      if (ix.idx_size() > 64) return Invalid(path, "Index", "idx", "at most 64 items");
      std::vector<IndexItem> items;
      for (int i = 0; i < ix.idx_size(); ++i) {
        const auto& it = ix.idx(i);
        const std::string field = absl::StrCat("idx[", i, "]");
        switch (it.item_case()) {
          case nt::v1::IndexItem::kSlice: {
            const auto& sl = it.slice();
            if (sl.has_step() && sl.step() == 0)
              return Invalid(path, "Index", field + ".step", "must not be 0");
            items.push_back(
                IndexItem::Slice(sl.has_start() ? std::optional<int64_t>(sl.start()) : std::nullopt,
                                 sl.has_stop() ? std::optional<int64_t>(sl.stop()) : std::nullopt,
                                 sl.has_step() ? std::optional<int64_t>(sl.step()) : std::nullopt));
            break;
          }
          case nt::v1::IndexItem::kIndex:
            items.push_back(IndexItem::Int(it.index()));
            break;
          case nt::v1::IndexItem::kEllipsis:
            if (!it.ellipsis()) return Invalid(path, "Index", field + ".ellipsis", "must be true when set");
            items.push_back(IndexItem::Ellipsis());
            break;
          default:
            return Invalid(path, "Index", field, "has no item set (slice, index or ellipsis)");
        }
      }
      auto b = Axis(path, "Index", "batch_axis", ix.has_batch_axis(), ix.batch_axis(), 0);
      if (!b.ok()) return b.status();
      auto c = Axis(path, "Index", "channel_axis", ix.has_channel_axis(), ix.channel_axis(), -1);
      if (!c.ok()) return c.status();
      return Finish(stax::Index(std::move(items), *b, *c), Where(path, "Index"));
    }
    case K::kRelu:
      return stax::Relu(l.relu().do_stabilize()).layer();
    case K::kAbRelu: {
      const auto& a = l.ab_relu();
      if (!a.has_a()) return Invalid(path, "ABRelu", "a", "is required");
      if (!a.has_b()) return Invalid(path, "ABRelu", "b", "is required");
      return Finish(stax::ABRelu(a.a(), a.b(), a.do_stabilize()), Where(path, "ABRelu"));
    }
    case K::kLeakyRelu: {
      const auto& a = l.leaky_relu();
      if (!a.has_alpha()) return Invalid(path, "LeakyRelu", "alpha", "is required");
      return Finish(stax::LeakyRelu(a.alpha(), a.do_stabilize()), Where(path, "LeakyRelu"));
    }
    case K::kAbs:
      return stax::Abs(l.abs().do_stabilize()).layer();
    case K::kErf: {
      const auto& e = l.erf();
      return Finish(stax::Erf(e.has_a() ? e.a() : 1.0, e.has_b() ? e.b() : 1.0, e.has_c() ? e.c() : 0.0),
                    Where(path, "Erf"));
    }
    case K::kSigmoidLike:
      return stax::Sigmoid_like().layer();
    case K::kSin: {
      const auto& e = l.sin();
      return Finish(stax::Sin(e.has_a() ? e.a() : 1.0, e.has_b() ? e.b() : 1.0, e.has_c() ? e.c() : 0.0),
                    Where(path, "Sin"));
    }
    case K::kCos: {
      const auto& e = l.cos();
      return Finish(stax::Cos(e.has_a() ? e.a() : 1.0, e.has_b() ? e.b() : 1.0, e.has_c() ? e.c() : 0.0),
                    Where(path, "Cos"));
    }
    case K::kExp: {
      const auto& e = l.exp();
      return Finish(stax::Exp(e.has_a() ? e.a() : 1.0, e.has_b() ? e.b() : 1.0), Where(path, "Exp"));
    }
    case K::kGaussian: {
      const auto& e = l.gaussian();
      return Finish(stax::Gaussian(e.has_a() ? e.a() : 1.0, e.has_b() ? e.b() : -1.0),
                    Where(path, "Gaussian"));
    }
    case K::kRbf: {
      const auto& e = l.rbf();
      return Finish(stax::Rbf(e.has_gamma() ? e.gamma() : 1.0), Where(path, "Rbf"));
    }
    case K::kGelu:
      return stax::Gelu(l.gelu().approximate()).layer();
    case K::kGabor:
      return stax::Gabor().layer();
    case K::kMonomial:
    case K::kRectifiedMonomial:
    case K::kHermite: {
      const bool mono = l.kind_case() == K::kMonomial, rect = l.kind_case() == K::kRectifiedMonomial;
      const std::string name = mono ? "Monomial" : rect ? "RectifiedMonomial" : "Hermite";
      const bool has = mono   ? l.monomial().has_degree()
                       : rect ? l.rectified_monomial().has_degree()
                              : l.hermite().has_degree();
      if (!has) return Invalid(path, name, "degree", "is required");
      const int64_t d = mono   ? l.monomial().degree()
                        : rect ? l.rectified_monomial().degree()
                               : l.hermite().degree();
      if (d < 0) return Invalid(path, name, "degree", absl::StrCat("must be >= 0, got ", d));
      // The factories check their upper bounds; this only keeps the value inside an int.
      const int di = static_cast<int>(std::min<int64_t>(d, 1000000));
      const Net net = mono ? stax::Monomial(di) : rect ? stax::RectifiedMonomial(di) : stax::Hermite(di);
      return Finish(net, Where(path, name));
    }
    case K::kPolynomial: {
      const auto& e = l.polynomial();
      return Finish(stax::Polynomial(std::vector<double>(e.coef().begin(), e.coef().end())),
                    Where(path, "Polynomial"));
    }
    case K::kSign:
      return stax::Sign().layer();
    case K::kTanh:
    case K::kSoftplus:
    case K::kSwish: {
      const bool tanh = l.kind_case() == K::kTanh, softplus = l.kind_case() == K::kSoftplus;
      const std::string name = tanh ? "Tanh" : softplus ? "Softplus" : "Swish";
      const bool has = tanh ? l.tanh().has_deg() : softplus ? l.softplus().has_deg() : l.swish().has_deg();
      const int64_t d = tanh ? l.tanh().deg() : softplus ? l.softplus().deg() : l.swish().deg();
      if (has) {
        if (absl::Status st = ValidateQuadratureDegree(name, d); !st.ok())
          return Prefix(st, Where(path, name));
      }
      const int deg = has ? static_cast<int>(d) : stax::kDefaultQuadratureDegree;
      const Net net = tanh ? stax::Tanh(deg) : softplus ? stax::Softplus(deg) : stax::Swish(deg);
      return Finish(net, Where(path, name));
    }
    case K::kElementwiseNumerical: {
      const auto& e = l.elementwise_numerical();
      const std::string name = "ElementwiseNumerical";
      if (!e.has_fn()) return Invalid(path, name, "fn", "is required");
      if (!e.has_deg()) return Invalid(path, name, "deg", "is required");
      if (absl::Status st = ValidateQuadratureDegree(name, e.deg()); !st.ok())
        return Prefix(st, Where(path, name));
      std::optional<std::string> df;
      if (e.has_df()) df = e.df();
      return Finish(stax::ElementwiseNumerical(e.fn(), static_cast<int>(e.deg()), df), Where(path, name));
    }
    case K::kElementwise: {
      const auto& e = l.elementwise();
      std::optional<std::string> fn, nngp_fn, d_nngp_fn;
      if (e.has_fn()) fn = e.fn();
      if (e.has_nngp_fn()) nngp_fn = e.nngp_fn();
      if (e.has_d_nngp_fn()) d_nngp_fn = e.d_nngp_fn();
      return Finish(stax::Elementwise(fn, nngp_fn, d_nngp_fn), Where(path, "Elementwise"));
    }
    case K::kExpNormalized: {
      const auto& e = l.exp_normalized();
      return Finish(
          stax::ExpNormalized(e.has_gamma() ? e.gamma() : 1.0, e.has_shift() ? e.shift() : -1.0, e.do_clip()),
          Where(path, "ExpNormalized"));
    }
    default:
      break;
  }
  // Every other layer of the protocol: known, not implemented by this server yet.
  const auto* field = l.GetDescriptor()->FindFieldByNumber(static_cast<int>(l.kind_case()));
  const std::string name = field ? field->message_type()->name() : "unknown";
  return absl::UnimplementedError(
      absl::StrCat(path, ": layer ", name, " is not implemented by this server yet"));
}

}  // namespace

absl::StatusOr<LayerPtr> BuildLayer(const nt::v1::Layer& layer) { return Build(layer, "architecture", 0); }

}  // namespace nt::server
