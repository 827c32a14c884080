// The float32 engine (nt_core_f32: the core's sources compiled with Real = float) reproduces the golden
// cases to float32 accuracy. This file is compiled against nt_core_f32 only, so it builds its networks
// from the cases' JSON with the engine's own stax factories (the server's builder is float64).
#include <array>
#include <cmath>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/abrelu.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace nt_f32 {
namespace {

using nlohmann::json;
static_assert(sizeof(Real) == 4, "this test must be built against nt_core_f32");

std::vector<int64_t> Ints(const json& args, const char* key) {
  std::vector<int64_t> out;
  if (args.contains(key) && !args[key].is_null()) {
    for (const json& v : args[key]) out.push_back(v.get<int64_t>());
  }
  return out;
}

double Num(const json& args, const char* key, double def) {
  return args.contains(key) && !args[key].is_null() ? args[key].get<double>() : def;
}

std::optional<double> OptNum(const json& args, const char* key) {
  if (!args.contains(key) || args[key].is_null()) return std::nullopt;
  return args[key].get<double>();
}

std::string Str(const json& args, const char* key, const std::string& def) {
  return args.contains(key) && !args[key].is_null() ? args[key].get<std::string>() : def;
}

std::array<double, 2> S(const json& args) {
  const std::vector<int64_t> s = Ints(args, "s");
  return s.size() == 2 ? std::array<double, 2>{double(s[0]), double(s[1])} : std::array<double, 2>{1, 1};
}

// The layers of the golden cases this builder knows; nullopt for the others (the case is skipped).
std::optional<stax::Net> Build(const json& l) {
  const std::string name = l["layer"];
  const json args = l.contains("args") ? l["args"] : json::object();
  if (name == "serial" || name == "parallel") {
    std::vector<stax::Net> children;
    for (const json& c : l["layers"]) {
      auto n = Build(c);
      if (!n) return std::nullopt;
      children.push_back(*n);
    }
    return name == "serial" ? stax::serial(children) : stax::parallel(children);
  }
  if (name == "repeat") {
    auto n = Build(l["layers"][0]);
    if (!n) return std::nullopt;
    return stax::repeat(*n, args["n"].get<int>());
  }
  if (name == "Dense") {
    return stax::Dense(args["out_dim"].get<int64_t>(), Num(args, "W_std", 1), OptNum(args, "b_std"), 0, -1,
                       Str(args, "parameterization", "ntk"), S(args));
  }
  if (name == "Conv" || name == "ConvTranspose" || name == "ConvLocal") {
    auto f = name == "Conv" ? stax::Conv : name == "ConvTranspose" ? stax::ConvTranspose : stax::ConvLocal;
    return f(args["out_chan"].get<int64_t>(), Ints(args, "filter_shape"), Ints(args, "strides"),
             Str(args, "padding", "VALID"), Num(args, "W_std", 1), OptNum(args, "b_std"), {},
             Str(args, "parameterization", "ntk"), S(args));
  }
  if (name == "AvgPool") {
    return stax::AvgPool(Ints(args, "window_shape"), Ints(args, "strides"), Str(args, "padding", "VALID"),
                         args.value("normalize_edges", false));
  }
  if (name == "SumPool") {
    return stax::SumPool(Ints(args, "window_shape"), Ints(args, "strides"), Str(args, "padding", "VALID"));
  }
  if (name == "GlobalAvgPool") return stax::GlobalAvgPool();
  if (name == "GlobalSumPool") return stax::GlobalSumPool();
  if (name == "Flatten") return stax::Flatten();
  if (name == "Identity") return stax::Identity();
  if (name == "FanOut") return stax::FanOut(args["num"].get<int>());
  if (name == "FanInSum") return stax::FanInSum();
  if (name == "Relu") return stax::Relu();
  if (name == "Abs") return stax::Abs();
  if (name == "ABRelu") return stax::ABRelu(Num(args, "a", 0), Num(args, "b", 1));
  if (name == "LeakyRelu") return stax::LeakyRelu(Num(args, "alpha", 0));
  if (name == "Erf") return stax::Erf(Num(args, "a", 1), Num(args, "b", 1), Num(args, "c", 0));
  if (name == "Sin") return stax::Sin(Num(args, "a", 1), Num(args, "b", 1), Num(args, "c", 0));
  if (name == "Cos") return stax::Cos(Num(args, "a", 1), Num(args, "b", 1), Num(args, "c", 0));
  if (name == "Gelu") return stax::Gelu(args.value("approximate", false));
  return std::nullopt;
}

Array ToArray(const json& j) {
  Shape shape;
  for (const json& d : j["shape"]) shape.push_back(d.get<int64_t>());
  Array a(shape);
  const json& data = j["data"];
  for (int64_t i = 0; i < a.size(); ++i) a[i] = static_cast<Real>(data[i].get<double>());
  return a;
}

class Float32EngineTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Float32EngineTest, MatchesGoldenToFloat32Accuracy) {
  std::ifstream in(std::string(NT_GOLDEN_DIR_DEFAULT) + "/" + GetParam() + ".json");
  ASSERT_TRUE(in.good()) << GetParam();
  const json c = json::parse(in);
  if (c["kind"] != "kernel" || c["method"] != "exact") GTEST_SKIP() << "not an exact kernel case";
  auto net = Build(c["architecture"]);
  if (!net) GTEST_SKIP() << "a layer outside this test's builder";
  const Array x1 = ToArray(c["inputs"]["x1"]);
  std::optional<Array> x2;
  if (!c["inputs"]["x2"].is_null()) x2 = ToArray(c["inputs"]["x2"]);
  KernelOptions o;
  o.diagonal_batch = c["options"].value("diagonal_batch", true);
  o.diagonal_spatial = c["options"].value("diagonal_spatial", false);
  std::vector<std::string> get = c["options"]["get"].get<std::vector<std::string>>();
  auto r = net->kernel_fn(x1, x2 ? &*x2 : nullptr, get, o);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& [key, expected_json] : c["expected"].items()) {
    const Array expected = ToArray(expected_json);
    const Array* got = r->Find(key);
    ASSERT_NE(got, nullptr) << key;
    ASSERT_EQ(got->shape(), expected.shape()) << key;
    double max_abs = 0;
    for (int64_t i = 0; i < expected.size(); ++i) max_abs = std::max(max_abs, std::abs(double(expected[i])));
    // float32 rounding through a few layers; sqrt(q11 q22 - q12^2) near correlation 1 amplifies it to
    // about sqrt(eps_f32) ~ 3e-4 of the scale.
    for (int64_t i = 0; i < expected.size(); ++i) {
      ASSERT_NEAR((*got)[i], expected[i], 1e-3 * std::abs(double(expected[i])) + 1e-3 * max_abs)
          << GetParam() << " " << key << "[" << i << "]";
    }
  }
}

// ABRelu's single-precision pair map against its double map on the same float inputs, from correlation
// -1 to 1 (where T and Tdot are smallest and cancellation would show), zero vectors and scaled inputs.
TEST(Float32ABReluTest, SinglePrecisionMapMatchesTheDoubleMap) {
  std::vector<float> q11, q12, q22;
  for (double c = -1; c <= 1.0; c += 1.0 / 512) {
    for (double e : {0.0, 1e-6, 1e-3}) {  // Correlations next to +-1 as well.
      const double cc = c < 0 ? std::min(c + e, 1.0) : std::max(c - e, -1.0);
      for (auto [v1, v2] : {std::pair{1.0, 1.0}, {0.3, 2.5}, {1e-20, 4e-20}, {3e15, 1e15}}) {
        q11.push_back(static_cast<float>(v1));
        q22.push_back(static_cast<float>(v2));
        q12.push_back(static_cast<float>(cc * std::sqrt(double(q11.back()) * double(q22.back()))));
      }
    }
  }
  for (auto [v1, v12, v2] : {std::array<float, 3>{0, 0, 0}, {0, 0, 1}, {2, 0, 0}}) {
    q11.push_back(v1);
    q12.push_back(v12);
    q22.push_back(v2);
  }
  const int64_t n = static_cast<int64_t>(q11.size());
  for (auto [a, b] : {std::pair{0.0, 1.0}, {0.1, 1.0}, {-1.0, 1.0}, {-0.3, 2.0}, {1.5, 0.5}}) {
    ABReluLayer layer(a, b, false);
    std::vector<float> t(n), tdot(n), t_only(n);
    layer.PairMapReal(q11.data(), q12.data(), q22.data(), n, t.data(), tdot.data());
    layer.PairMapReal(q11.data(), q12.data(), q22.data(), n, t_only.data(), nullptr);
    for (int64_t i = 0; i < n; ++i) {
      const double d11 = q11[i], d12 = q12[i], d22 = q22[i];
      double want, want_dot;
      layer.PairMap(&d11, &d12, &d22, 1, &want, &want_dot);
      const double scale = std::sqrt(d11 * d22);  // T's size at correlation 0; Tdot's is 1.
      const std::string at = absl::StrCat("a=", a, " b=", b, " at (", d11, ", ", d12, ", ", d22, ")");
      EXPECT_NEAR(t[i], want, 1e-6 * std::abs(want) + 1e-7 * scale) << at;
      EXPECT_NEAR(tdot[i], want_dot, 1e-6 * std::abs(want_dot) + 1e-7) << at;
      EXPECT_EQ(t_only[i], t[i]) << at;
    }
  }
}

std::vector<std::string> Cases() {
  std::vector<std::string> names;
  for (const char* n : {"fc_relu",
                        "fc_deep_relu",
                        "fc_erf",
                        "fc_abrelu",
                        "fc_leaky_relu",
                        "fc_abs",
                        "fc_gelu",
                        "fc_sin",
                        "fc_cos",
                        "fc_identity",
                        "fc_repeat",
                        "fc_residual_fanin_sum",
                        "fc_standard_param",
                        "fc_standard_param_s",
                        "conv1d_avgpool_same_normalize_edges",
                        "conv1d_avgpool_same_valid",
                        "conv1d_circular_spatial_output",
                        "conv1d_convlocal",
                        "conv1d_convlocal_spatial_output",
                        "conv1d_diagonal_spatial",
                        "conv1d_same_flatten",
                        "conv1d_standard_param",
                        "conv1d_sumpool_circular_gsp",
                        "conv1d_transpose_circular",
                        "conv1d_transpose_same",
                        "conv1d_transpose_valid",
                        "conv1d_valid_stride_gap",
                        "conv2d_circular_avgpool_gap",
                        "conv2d_convlocal",
                        "conv2d_diagonal_spatial",
                        "conv2d_gelu_sumpool",
                        "conv2d_same_spatial_output",
                        "conv2d_transpose",
                        "conv2d_valid_strides_flatten"}) {
    names.push_back(n);
  }
  return names;
}

INSTANTIATE_TEST_SUITE_P(Golden, Float32EngineTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace nt_f32
