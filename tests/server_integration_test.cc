// A real nt-server process on a free loopback port, driven by the C++ client library.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cpp/arch_json.h"
#include "client/cpp/client.h"
#include "core/array.h"
#include "gtest/gtest.h"
#include "tests/server_process.h"
#include "tests/golden_test_util.h"

namespace nt::testing {
namespace {


nt::v1::Tensor ToTensor(const Array& a) {
  nt::v1::Tensor t;
  for (int64_t d : a.shape()) t.add_shape(d);
  t.set_dtype(nt::v1::FLOAT64);
  t.set_data(std::string(reinterpret_cast<const char*>(a.data()), a.size() * sizeof(double)));
  return t;
}

Array FromNpy(const client::NpyArray& a) {
  auto v = a.AsDoubles();
  return Array(Shape(a.shape.begin(), a.shape.end()), *v);
}

nt::v1::KernelRequest RequestFor(const nlohmann::json& c) {
  nt::v1::KernelRequest req;
  *req.mutable_architecture() = *client::LayerFromJsonValue(c.at("architecture"));
  const nlohmann::json& in = c.at("inputs");
  *req.mutable_x1() = ToTensor(ArrayFromJson(in.at("x1")));
  if (in.contains("x2") && !in.at("x2").is_null()) *req.mutable_x2() = ToTensor(ArrayFromJson(in.at("x2")));
  if (in.contains("pattern1") && !in.at("pattern1").is_null())
    *req.mutable_pattern1() = ToTensor(ArrayFromJson(in.at("pattern1")));
  if (in.contains("pattern2") && !in.at("pattern2").is_null())
    *req.mutable_pattern2() = ToTensor(ArrayFromJson(in.at("pattern2")));
  const nlohmann::json& opt = c.at("options");
  for (const auto& g : opt.at("get")) req.add_get(g.get<std::string>());
  if (opt.contains("diagonal_batch") && !opt["diagonal_batch"].is_null())
    req.set_diagonal_batch(opt["diagonal_batch"]);
  if (opt.contains("diagonal_spatial") && !opt["diagonal_spatial"].is_null())
    req.set_diagonal_spatial(opt["diagonal_spatial"]);
  return req;
}

TEST(ServerIntegrationTest, GoldenCasesThroughTheServer) {
  ServerProcess server({"--threads=2"});
  ASSERT_NE(server.port(), 0);
  client::KernelClient client(server.address());
  int computed = 0, kernel_cases = 0;
  std::vector<std::string> skipped;
  for (const std::string& name : GoldenCaseNames()) {
    const nlohmann::json c = LoadCase(name);
    if (c.at("kind") != "kernel") {
      skipped.push_back(name + " (predict)");
      continue;
    }
    ++kernel_cases;
    nt::v1::KernelRequest req = RequestFor(c);
    req.set_tile_size(2);  // Several tiles even for the small cases: exercises streaming and mirroring.
    auto r = client.ComputeKernel(req);
    if (!r.ok() && r.status().code() == absl::StatusCode::kUnimplemented) {
      skipped.push_back(absl::StrCat(name, " (", r.status().message(), ")"));
      continue;
    }
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    ASSERT_EQ(r->arrays.size(), c.at("expected").size()) << name;
    for (const auto& [key, array] : r->arrays) {
      EXPECT_EQ(CheckGoldenArray(name, c, key, FromNpy(array)), "") << name;
    }
    ++computed;
  }
  for (const std::string& s : skipped) std::cout << "[ skipped  ] " << s << "\n";
  EXPECT_EQ(computed, kernel_cases) << "every layer of the golden cases is implemented";
  EXPECT_EQ(server.Stop(), 0);
}

TEST(ServerIntegrationTest, BadRequestsGetClearErrorsAndTheServerStaysUp) {
  ServerProcess server({});
  client::KernelClient client(server.address());
  const nlohmann::json c = LoadCase("fc_relu");
  nt::v1::KernelRequest good = RequestFor(c);

  nt::v1::KernelRequest no_arch = good;
  no_arch.clear_architecture();
  auto r = client.ComputeKernel(no_arch);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("architecture"), absl::string_view::npos);

  nt::v1::KernelRequest bad_width = good;
  bad_width.mutable_architecture()->mutable_serial()->mutable_layers(0)->mutable_dense()->set_out_dim(0);
  r = client.ComputeKernel(bad_width);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("out_dim"), absl::string_view::npos) << r.status();

  nt::v1::KernelRequest nan = good;
  std::string data = nan.x1().data();
  const double v = std::nan("");
  std::memcpy(data.data() + 8, &v, 8);
  nan.mutable_x1()->set_data(data);
  r = client.ComputeKernel(nan);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("x1"), absl::string_view::npos) << r.status();

  nt::v1::KernelRequest conv = good;
  conv.mutable_architecture()->mutable_serial()->add_layers()->mutable_conv();
  r = client.ComputeKernel(conv);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("(Conv).out_chan: is required"), absl::string_view::npos) << r.status();

  nt::v1::KernelRequest attention = good;
  attention.mutable_architecture()->mutable_serial()->add_layers()->mutable_global_self_attention();
  r = client.ComputeKernel(attention);  // Without its required arguments.
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("GlobalSelfAttention"), absl::string_view::npos) << r.status();

  auto health = client.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::HealthStatus::kServing);
  auto ok = client.ComputeKernel(good);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(CompareToGolden(c, "nngp", FromNpy(ok->arrays.at("nngp"))), "");
  EXPECT_EQ(server.Stop(), 0);
}

TEST(ServerIntegrationTest, MemoryBudgetIsEnforcedBeforeWork) {
  ServerProcess server({"--memory_budget_mb=1"});
  client::KernelClient client(server.address());
  nt::v1::KernelRequest req = RequestFor(LoadCase("fc_relu"));
  *req.mutable_x1() = ToTensor(Array({20000, 5}, 0.5));
  req.clear_x2();
  auto r = client.ComputeKernel(req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("budget"), absl::string_view::npos);
  EXPECT_EQ(server.Stop(), 0);
}

}  // namespace
}  // namespace nt::testing
