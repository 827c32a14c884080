#include <google/protobuf/util/message_differencer.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "client/cpp/arch_json.h"
#include "gtest/gtest.h"

#ifndef NT_GOLDEN_DIR
#error "NT_GOLDEN_DIR must name shared/golden/cases"
#endif

namespace nt::client {
namespace {

using json = nlohmann::json;
using google::protobuf::util::MessageDifferencer;

nt::v1::Layer MustParse(const std::string& text) {
  absl::StatusOr<nt::v1::Layer> layer = LayerFromJson(text);
  EXPECT_TRUE(layer.ok()) << layer.status() << "\n" << text;
  return layer.ok() ? *layer : nt::v1::Layer();
}

std::vector<std::filesystem::path> GoldenCases() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(NT_GOLDEN_DIR)) {
    if (e.path().extension() == ".json") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every non-null upstream argument survives the conversion: equal, or a scalar that became a
// one-element list (LayerNorm(axis=-1)).
void ExpectSameArgs(const json& original, const json& converted, const std::string& where) {
  ASSERT_EQ(original["layer"], converted["layer"]) << where;
  if (original.contains("layers")) {
    ASSERT_EQ(original["layers"].size(), converted["layers"].size()) << where;
    for (size_t i = 0; i < original["layers"].size(); ++i) {
      ExpectSameArgs(original["layers"][i], converted["layers"][i],
                     where + ".layers[" + std::to_string(i) + "]");
    }
  }
  if (!original.contains("args")) return;
  for (auto it = original["args"].begin(); it != original["args"].end(); ++it) {
    if (it.value().is_null()) {
      EXPECT_FALSE(converted["args"].contains(it.key())) << where << " " << it.key();
      continue;
    }
    ASSERT_TRUE(converted["args"].contains(it.key())) << where << " lost " << it.key();
    const json& got = converted["args"][it.key()];
    EXPECT_TRUE(got == it.value() || got == json::array({it.value()}))
        << where << " " << it.key() << ": " << it.value().dump() << " -> " << got.dump();
  }
}

TEST(ArchJsonTest, EveryGoldenArchitectureConvertsAndRoundTrips) {
  const std::vector<std::filesystem::path> cases = GoldenCases();
  ASSERT_FALSE(cases.empty()) << "no cases in " << NT_GOLDEN_DIR;
  for (const auto& path : cases) {
    SCOPED_TRACE(path.filename().string());
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    const json doc = json::parse(ss.str());
    absl::StatusOr<nt::v1::Layer> layer = LayerFromJsonValue(doc["architecture"]);
    ASSERT_TRUE(layer.ok()) << layer.status();

    absl::StatusOr<json> back = LayerToJsonValue(*layer);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameArgs(doc["architecture"], *back, "architecture");

    absl::StatusOr<nt::v1::Layer> again = LayerFromJsonValue(*back);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(MessageDifferencer::Equals(*layer, *again)) << back->dump();
    absl::StatusOr<std::string> text1 = LayerToJson(*layer);
    absl::StatusOr<std::string> text2 = LayerToJson(*again);
    ASSERT_TRUE(text1.ok() && text2.ok());
    EXPECT_EQ(*text1, *text2);

    // The file form (case file with an "architecture" member) reads the same.
    absl::StatusOr<nt::v1::Layer> from_file = LayerFromJsonFile(path.string());
    ASSERT_TRUE(from_file.ok()) << from_file.status();
    EXPECT_TRUE(MessageDifferencer::Equals(*layer, *from_file));
  }
}

TEST(ArchJsonTest, DenseAndNullArguments) {
  nt::v1::Layer l = MustParse(R"({"layer": "Dense", "args": {"out_dim": 128, "W_std": 1.5,
      "b_std": null, "parameterization": "standard", "s": [1, 2]}})");
  ASSERT_TRUE(l.has_dense());
  EXPECT_EQ(l.dense().out_dim(), 128);
  EXPECT_EQ(l.dense().w_std(), 1.5);
  EXPECT_FALSE(l.dense().has_b_std());
  EXPECT_EQ(l.dense().parameterization(), "standard");
  EXPECT_EQ(l.dense().s_size(), 2);
  EXPECT_EQ(l.dense().s(1), 2);

  nt::v1::Layer relu = MustParse(R"({"layer": "Relu"})");
  EXPECT_TRUE(relu.has_relu());
  nt::v1::Layer sig = MustParse(R"({"layer": "Sigmoid_like", "args": {}})");
  EXPECT_TRUE(sig.has_sigmoid_like());
  nt::v1::Layer ab = MustParse(R"({"layer": "ABRelu", "args": {"a": -0.5, "b": 2}})");
  EXPECT_EQ(ab.ab_relu().b(), 2.0);
}

TEST(ArchJsonTest, CombinatorsAndEnums) {
  nt::v1::Layer l = MustParse(R"({"layer": "serial", "layers": [
      {"layer": "Conv", "args": {"out_chan": 8, "filter_shape": [3, 3], "padding": "same",
                                  "dimension_numbers": ["NCHW", "OIHW", "NHWC"]}},
      {"layer": "repeat", "args": {"n": 3}, "layers": [{"layer": "Relu", "args": {}}]},
      {"layer": "parallel", "layers": [{"layer": "Identity"}, {"layer": "Erf"}]},
      {"layer": "GlobalSelfAttention", "args": {"n_chan_out": 4, "n_chan_key": 4,
          "n_chan_val": 4, "n_heads": 2, "attention_mechanism": "relu", "pos_emb_type": "SUM"}}
  ]})");
  ASSERT_TRUE(l.has_serial());
  ASSERT_EQ(l.serial().layers_size(), 4);
  const nt::v1::Conv& conv = l.serial().layers(0).conv();
  EXPECT_EQ(conv.padding(), nt::v1::SAME);
  EXPECT_EQ(conv.dimension_numbers().lhs_spec(), "NCHW");
  EXPECT_EQ(conv.dimension_numbers().rhs_spec(), "OIHW");
  EXPECT_EQ(conv.dimension_numbers().out_spec(), "NHWC");
  const nt::v1::Repeat& rep = l.serial().layers(1).repeat();
  EXPECT_EQ(rep.n(), 3);
  EXPECT_TRUE(rep.layer().has_relu());
  EXPECT_EQ(l.serial().layers(2).parallel().layers_size(), 2);
  const nt::v1::GlobalSelfAttention& att = l.serial().layers(3).global_self_attention();
  EXPECT_EQ(att.attention_mechanism(), nt::v1::RELU);
  EXPECT_EQ(att.pos_emb_type(), nt::v1::SUM);

  absl::StatusOr<std::string> text = LayerToJson(l);
  ASSERT_TRUE(text.ok());
  const json j = json::parse(*text);
  EXPECT_EQ(j["layers"][0]["args"]["padding"], "SAME");
  EXPECT_EQ(j["layers"][0]["args"]["dimension_numbers"], json({"NCHW", "OIHW", "NHWC"}));
  EXPECT_EQ(j["layers"][1]["args"]["n"], 3);
  EXPECT_EQ(j["layers"][1]["layers"][0]["layer"], "Relu");
}

TEST(ArchJsonTest, IndexItems) {
  nt::v1::Layer l = MustParse(R"({"layer": "Index", "args": {"idx":
      [{"slice": [null, null, null]}, 0, "...", {"slice": [1, 6, 2]}, {"slice": [-3, null, null]}]}})");
  const nt::v1::Index& idx = l.index();
  ASSERT_EQ(idx.idx_size(), 5);
  EXPECT_TRUE(idx.idx(0).has_slice());
  EXPECT_FALSE(idx.idx(0).slice().has_start());
  EXPECT_FALSE(idx.idx(0).slice().has_stop());
  EXPECT_FALSE(idx.idx(0).slice().has_step());
  EXPECT_EQ(idx.idx(1).item_case(), nt::v1::IndexItem::kIndex);
  EXPECT_EQ(idx.idx(1).index(), 0);
  EXPECT_TRUE(idx.idx(2).ellipsis());
  EXPECT_EQ(idx.idx(3).slice().start(), 1);
  EXPECT_EQ(idx.idx(3).slice().stop(), 6);
  EXPECT_EQ(idx.idx(3).slice().step(), 2);
  EXPECT_EQ(idx.idx(4).slice().start(), -3);
  EXPECT_FALSE(idx.idx(4).slice().has_stop());

  const json j = LayerToJsonValue(l).value();
  EXPECT_EQ(j["args"]["idx"][0], json({{"slice", {nullptr, nullptr, nullptr}}}));
  EXPECT_EQ(j["args"]["idx"][1], 0);
  EXPECT_EQ(j["args"]["idx"][2], "...");
}

TEST(ArchJsonTest, DotGeneralTensorsAndDimensionNumbers) {
  nt::v1::Layer l = MustParse(R"({"layer": "DotGeneral", "args": {
      "rhs": {"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6.5]},
      "dimension_numbers": [[[1, 2], [0, 1]], [[], []]]}})");
  const nt::v1::DotGeneral& d = l.dot_general();
  EXPECT_FALSE(d.has_lhs());
  ASSERT_TRUE(d.has_rhs());
  EXPECT_EQ(d.rhs().dtype(), nt::v1::FLOAT64);
  ASSERT_EQ(d.rhs().shape_size(), 2);
  EXPECT_EQ(d.rhs().shape(1), 3);
  ASSERT_EQ(d.rhs().data().size(), 6 * sizeof(double));
  double last;
  std::memcpy(&last, d.rhs().data().data() + 5 * sizeof(double), sizeof(double));
  EXPECT_EQ(last, 6.5);
  EXPECT_EQ(d.dimension_numbers().lhs_contracting_size(), 2);
  EXPECT_EQ(d.dimension_numbers().rhs_contracting(1), 1);
  EXPECT_EQ(d.dimension_numbers().lhs_batch_size(), 0);

  nt::v1::Layer s = MustParse(R"({"layer": "DotGeneral", "args": {"lhs": {"shape": [], "data": [1.7]}}})");
  EXPECT_EQ(s.dot_general().lhs().shape_size(), 0);
  EXPECT_EQ(s.dot_general().lhs().data().size(), sizeof(double));

  const json j = LayerToJsonValue(l).value();
  EXPECT_EQ(j["args"]["rhs"]["shape"], json({2, 3}));
  EXPECT_EQ(j["args"]["rhs"]["data"][5], 6.5);
  EXPECT_EQ(j["args"]["dimension_numbers"], json::parse("[[[1, 2], [0, 1]], [[], []]]"));

  EXPECT_FALSE(LayerFromJson(R"({"layer": "DotGeneral", "args": {
      "rhs": {"shape": [2], "data": [1, 2, 3]}}})")
                   .ok());
}

TEST(ArchJsonTest, AxisForms) {
  nt::v1::Layer ln = MustParse(R"({"layer": "LayerNorm", "args": {"axis": -1, "eps": 1e-12}})");
  ASSERT_EQ(ln.layer_norm().axis_size(), 1);
  EXPECT_EQ(ln.layer_norm().axis(0), -1);
  nt::v1::Layer ln2 = MustParse(R"({"layer": "LayerNorm", "args": {"axis": [1, 2, 3]}})");
  EXPECT_EQ(ln2.layer_norm().axis_size(), 3);

  nt::v1::Layer agg = MustParse(R"({"layer": "Aggregate", "args": {"aggregate_axis": 2,
      "implementation": "DENSE"}})");
  ASSERT_TRUE(agg.aggregate().has_aggregate_axis());
  EXPECT_EQ(agg.aggregate().aggregate_axis().axes(0), 2);
  EXPECT_EQ(agg.aggregate().implementation(), nt::v1::DENSE);
  nt::v1::Layer all = MustParse(R"({"layer": "Aggregate", "args": {"aggregate_axis": null}})");
  EXPECT_FALSE(all.aggregate().has_aggregate_axis());
  nt::v1::Layer none = MustParse(R"({"layer": "Aggregate", "args": {"aggregate_axis": []}})");
  EXPECT_TRUE(none.aggregate().has_aggregate_axis());
  EXPECT_EQ(none.aggregate().aggregate_axis().axes_size(), 0);
  // Set-and-empty (no axes) stays distinct from None through a round trip.
  absl::StatusOr<std::string> text = LayerToJson(none);
  ASSERT_TRUE(text.ok());
  nt::v1::Layer back = MustParse(*text);
  EXPECT_TRUE(back.aggregate().has_aggregate_axis());
}

TEST(ArchJsonTest, NonFiniteDoubles) {
  nt::v1::Layer l = MustParse(R"({"layer": "Erf", "args": {"a": "inf", "c": "-inf"}})");
  EXPECT_TRUE(std::isinf(l.erf().a()));
  const json j = LayerToJsonValue(l).value();
  EXPECT_EQ(j["args"]["a"], "inf");
  EXPECT_EQ(j["args"]["c"], "-inf");
}

void ExpectError(const std::string& text, const std::vector<std::string>& needles) {
  absl::StatusOr<nt::v1::Layer> l = LayerFromJson(text);
  ASSERT_FALSE(l.ok()) << text;
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& n : needles) {
    EXPECT_NE(l.status().message().find(n), absl::string_view::npos)
        << "'" << n << "' not in: " << l.status().message();
  }
}

TEST(ArchJsonTest, Errors) {
  ExpectError(R"({"layer": "Densee", "args": {}})", {"unknown layer", "Densee"});
  ExpectError(R"({"layer": "serial", "layers": [{"layer": "Relu"},
      {"layer": "Dense", "args": {"out_dim": 3, "bogus": 1}}]})",
              {"layers[1]", "Dense", "bogus", "unknown argument"});
  ExpectError(R"({"layer": "Dense", "args": {"out_dim": "wide"}})", {"out_dim", "integer"});
  ExpectError(R"({"layer": "Dense", "args": {"out_dim": 2.5}})", {"out_dim"});
  ExpectError(R"({"layer": "Conv", "args": {"padding": "FULL"}})", {"padding", "FULL", "SAME"});
  ExpectError(R"({"layer": "Relu", "args": {"do_stabilize": 1}})", {"do_stabilize"});
  ExpectError(R"({"layer": "repeat", "layers": [{"layer": "Relu"}]})", {"repeat", "'n'"});
  ExpectError(R"({"layer": "repeat", "args": {"n": 2}, "layers": []})", {"repeat"});
  ExpectError(R"({"layer": "serial", "args": {"n": 2}, "layers": []})", {"serial"});
  ExpectError(R"({"layer": "Relu", "layers": []})", {"Relu"});
  ExpectError(R"({"layer": "Relu", "arg": {}})", {"'arg'"});
  ExpectError(R"({"layer": "Index", "args": {"idx": ["::"]}})", {"idx", "..."});
  ExpectError(R"({"layer": "Index", "args": {"idx": [{"slice": [0, 1, 0]}]}})", {"step"});
  ExpectError(R"({"layer": "Serial", "args": {}})", {"unknown layer"});
  ExpectError(R"([1, 2])", {"layer object"});
  ExpectError(R"({"layer": )", {"invalid JSON"});
  EXPECT_EQ(LayerFromJsonFile("/nonexistent/model.json").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(LayerToJson(nt::v1::Layer()).ok());
}

}  // namespace
}  // namespace nt::client
