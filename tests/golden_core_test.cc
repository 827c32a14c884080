// Every golden case through the core engine, in-process (issue: tiles of several sizes must agree).
#include <cstdlib>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/cpp/arch_json.h"
#include "core/kernel_fn.h"
#include "core/predict.h"
#include "gtest/gtest.h"
#include "server/layer_builder.h"
#include "tests/golden_test_util.h"

namespace nt::testing {
namespace {

class GoldenCoreTest : public ::testing::TestWithParam<std::string> {};

// A predict case: the kernels from the architecture, then the ensemble's mean and covariance per time.
void RunPredictCase(const std::string& name, const nlohmann::json& c, const Layer& net) {
  const nlohmann::json& in = c.at("inputs");
  const nlohmann::json& opt = c.at("options");
  const Array x_train = ArrayFromJson(in.at("x_train")), x_test = ArrayFromJson(in.at("x_test"));
  KernelOptions both;
  both.get = {"nngp", "ntk"};
  auto dd = ComputeKernel(net, x_train, nullptr, both);
  auto td = ComputeKernel(net, x_test, &x_train, both);
  KernelOptions nngp_only;
  nngp_only.get = {"nngp"};
  auto tt = ComputeKernel(net, x_test, nullptr, nngp_only);
  ASSERT_TRUE(dd.ok() && td.ok() && tt.ok()) << dd.status() << td.status() << tt.status();
  predict::MseOptions o;
  o.learning_rate = opt.at("learning_rate").get<double>();
  o.diag_reg = opt.at("diag_reg").get<double>();
  o.diag_reg_absolute_scale = opt.at("diag_reg_absolute_scale").get<bool>();
  auto ens =
      predict::MseEnsemble::Create(*dd->Find("nngp"), *dd->Find("ntk"), ArrayFromJson(in.at("y_train")), o);
  ASSERT_TRUE(ens.ok()) << ens.status();
  nlohmann::json results;
  for (predict::Kind kind : {predict::Kind::kNngp, predict::Kind::kNtk}) {
    const std::string k = predict::KindName(kind);
    std::vector<Array> means, covs;
    for (const nlohmann::json& tj : opt.at("t")) {
      const std::optional<double> t = tj.is_string() ? std::nullopt : std::optional<double>(tj.get<double>());
      const predict::TestKernels test{td->Find(k), td->Find("nngp"), tt->Find("nngp")};
      auto p = (*ens)->Predict(kind, t, test, opt.at("compute_cov").get<bool>());
      ASSERT_TRUE(p.ok()) << p.status();
      means.push_back(p->mean);
      covs.push_back(*p->cov);
    }
    for (auto [part, parts] : {std::pair{"mean", &means}, {"cov", &covs}}) {
      Shape shape = parts->front().shape();
      shape.insert(shape.begin(), static_cast<int64_t>(parts->size()));
      Array stacked(shape);
      for (size_t i = 0; i < parts->size(); ++i) {
        std::copy((*parts)[i].data(), (*parts)[i].data() + (*parts)[i].size(),
                  stacked.data() + i * (*parts)[i].size());
      }
      const nlohmann::json expected_case = {
          {"expected", {{"x", c.at("expected").at(k).at(part)}}},
          {"rtol", c.at("rtol")},
          {"atol", c.at("atol").is_number() ? c.at("atol") : c.at("atol").at(k).at(part)}};
      EXPECT_EQ(CompareToGolden(expected_case, "x", stacked), "") << k << "." << part;
      results[k][part] = ArrayToJson(stacked);
    }
  }
  if (const char* dir = std::getenv("NT_RESULTS_DIR")) {
    std::ofstream(absl::StrCat(dir, "/", name, ".json")) << results.dump();
  }
}

TEST_P(GoldenCoreTest, MatchesGolden) {
  const nlohmann::json c = LoadCase(GetParam());
  auto proto = client::LayerFromJsonValue(c.at("architecture"));
  ASSERT_TRUE(proto.ok()) << proto.status();
  auto net = server::BuildLayer(*proto);
  if (!net.ok() && net.status().code() == absl::StatusCode::kUnimplemented) {
    GTEST_SKIP() << "skipped: " << net.status().message();
  }
  ASSERT_TRUE(net.ok()) << net.status();
  if (c.at("kind") == "predict") {
    RunPredictCase(GetParam(), c, **net);
    return;
  }

  const nlohmann::json& in = c.at("inputs");
  const Array x1 = ArrayFromJson(in.at("x1"));
  std::optional<Array> x2;
  if (in.contains("x2") && !in.at("x2").is_null()) x2 = ArrayFromJson(in.at("x2"));
  const nlohmann::json& opt = c.at("options");
  KernelOptions o;
  // Aggregate's pattern kwarg.
  for (const char* p : {"pattern1", "pattern2"}) {
    if (!in.contains(p) || in.at(p).is_null()) continue;
    (p[7] == '1' ? o.pattern1 : o.pattern2) = std::make_shared<const Array>(ArrayFromJson(in.at(p)));
  }
  o.get = opt.at("get").get<std::vector<std::string>>();
  if (opt.contains("diagonal_batch") && !opt["diagonal_batch"].is_null())
    o.diagonal_batch = opt["diagonal_batch"].get<bool>();
  if (opt.contains("diagonal_spatial") && !opt["diagonal_spatial"].is_null())
    o.diagonal_spatial = opt["diagonal_spatial"].get<bool>();

  nlohmann::json results;
  // Default tiles, and 1- and 2-row tiles so that tiling, mirroring and assembly are exercised.
  for (int64_t tile : {0, 1, 2}) {
    o.tile_size = tile;
    auto r = ComputeKernel(**net, x1, x2 ? &*x2 : nullptr, o);
    if (!r.ok() && r.status().code() == absl::StatusCode::kUnimplemented) {
      GTEST_SKIP() << "skipped: " << r.status().message();
    }
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& [name, array] : r->arrays) {
      EXPECT_EQ(CheckGoldenArray(GetParam(), c, name, array), "") << "tile_size " << tile;
      if (tile == 0) results[name] = ArrayToJson(array);
    }
    EXPECT_EQ(r->arrays.size(), c.at("expected").size());
  }
  if (const char* dir = std::getenv("NT_RESULTS_DIR")) {
    std::ofstream(absl::StrCat(dir, "/", GetParam(), ".json")) << results.dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenCoreTest, ::testing::ValuesIn(GoldenCaseNames()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace nt::testing

namespace nt::testing {
namespace {

// Guards against a missing case directory turning the suite above into zero tests.
TEST(GoldenCasesTest, AllCasesArePresent) {
  EXPECT_GE(GoldenCaseNames().size(), 75u)
      << "golden cases not found in " << GoldenDir() << " (set NT_GOLDEN_DIR)";
}

}  // namespace
}  // namespace nt::testing
