// Every golden case through the core engine, in-process (issue: tiles of several sizes must agree).
#include <cstdlib>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "client/cpp/arch_json.h"
#include "core/kernel_fn.h"
#include "gtest/gtest.h"
#include "server/layer_builder.h"
#include "tests/golden_test_util.h"

namespace nt::testing {
namespace {

class GoldenCoreTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenCoreTest, MatchesGolden) {
  const nlohmann::json c = LoadCase(GetParam());
  if (c.at("kind") != "kernel") GTEST_SKIP() << "predict cases need nt.predict (not implemented yet)";
  auto proto = client::LayerFromJsonValue(c.at("architecture"));
  ASSERT_TRUE(proto.ok()) << proto.status();
  auto net = server::BuildLayer(*proto);
  if (!net.ok() && net.status().code() == absl::StatusCode::kUnimplemented) {
    GTEST_SKIP() << "skipped: " << net.status().message();
  }
  ASSERT_TRUE(net.ok()) << net.status();

  const nlohmann::json& in = c.at("inputs");
  const Array x1 = ArrayFromJson(in.at("x1"));
  std::optional<Array> x2;
  if (in.contains("x2") && !in.at("x2").is_null()) x2 = ArrayFromJson(in.at("x2"));
  const nlohmann::json& opt = c.at("options");
  KernelOptions o;
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
      EXPECT_EQ(CompareToGolden(c, name, array), "") << "tile_size " << tile;
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
