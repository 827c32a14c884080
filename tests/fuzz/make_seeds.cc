// Writes the seed corpora and dictionaries of the fuzzers (scripts/fuzz.sh) from valid requests: every
// golden case (architecture, inputs, options) and every examples/*.json architecture, plus a few
// hand-made variants (masks, float32 and integer tensors, tiles, handles).
//
//   nt_fuzz_seeds <golden cases dir> <examples dir> <out dir>
//
// Out: <out>/{kernel_request,describe,arch_json,tensor}/<name> and <out>/{arch_json,kernel_request}.dict.
#include <google/protobuf/descriptor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "client/cpp/arch_json.h"
#include "nt/v1/service.pb.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

int written = 0;

void Write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
  ++written;
}

double Number(const json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "inf") return std::numeric_limits<double>::infinity();
  }
  return 0;
}

// {"shape": [...], "data": [...]} -> Tensor of `dtype` (FLOAT64, FLOAT32, INT64 or BOOL).
nt::v1::Tensor ToTensor(const json& j, nt::v1::DType dtype = nt::v1::FLOAT64) {
  nt::v1::Tensor t;
  for (const json& d : j.at("shape")) t.add_shape(d.get<int64_t>());
  t.set_dtype(dtype);
  std::string* out = t.mutable_data();
  for (const json& v : j.at("data")) {
    const double x = Number(v);
    if (dtype == nt::v1::FLOAT32) {
      const float f = static_cast<float>(x);
      out->append(reinterpret_cast<const char*>(&f), 4);
    } else if (dtype == nt::v1::INT64) {
      const int64_t i = std::isfinite(x) ? static_cast<int64_t>(x) : 0;
      out->append(reinterpret_cast<const char*>(&i), 8);
    } else if (dtype == nt::v1::BOOL) {
      out->push_back(x != 0 ? 1 : 0);
    } else {
      out->append(reinterpret_cast<const char*>(&x), 8);
    }
  }
  return t;
}

nt::v1::Tensor Random(std::vector<int64_t> shape, unsigned seed) {
  json j;
  j["shape"] = shape;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<double> data;
  for (int64_t i = 0; i < n; ++i) data.push_back(std::sin(1.7 * double(i + 1) * double(seed + 1)));
  j["data"] = data;
  return ToTensor(j);
}

void Seeds(const std::string& name, const nt::v1::Layer& arch, const json& inputs, const json& options,
           const fs::path& out) {
  nt::v1::KernelRequest req;
  *req.mutable_architecture() = arch;
  if (inputs.contains("x1")) *req.mutable_x1() = ToTensor(inputs["x1"]);
  if (inputs.contains("x2") && !inputs["x2"].is_null()) *req.mutable_x2() = ToTensor(inputs["x2"]);
  for (const char* p : {"pattern1", "pattern2"}) {
    if (!inputs.contains(p) || inputs[p].is_null()) continue;
    *(std::string(p) == "pattern1" ? req.mutable_pattern1() : req.mutable_pattern2()) = ToTensor(inputs[p]);
  }
  if (options.contains("get") && !options["get"].is_null()) {
    const json& g = options["get"];
    if (g.is_string()) {
      req.add_get(g.get<std::string>());
    } else {
      for (const json& s : g) req.add_get(s.get<std::string>());
    }
  }
  if (options.contains("diagonal_batch") && options["diagonal_batch"].is_boolean()) {
    req.set_diagonal_batch(options["diagonal_batch"].get<bool>());
  }
  if (options.contains("diagonal_spatial") && options["diagonal_spatial"].is_boolean()) {
    req.set_diagonal_spatial(options["diagonal_spatial"].get<bool>());
  }
  Write(out / "kernel_request", name, req.SerializeAsString());

  // Variants: float32 output, explicit tiles, a tile range, a mask on NaN entries.
  nt::v1::KernelRequest v = req;
  v.set_output_dtype(nt::v1::FLOAT32);
  v.set_tile_size(1);
  v.set_tile_begin(1);
  v.set_tile_end(2);
  Write(out / "kernel_request", name + "_tiles", v.SerializeAsString());
  if (req.x1().data().size() >= 8) {
    v = req;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::memcpy(v.mutable_x1()->mutable_data()->data(), &nan, 8);
    v.set_mask_constant(nan);
    Write(out / "kernel_request", name + "_mask", v.SerializeAsString());
  }

  nt::v1::DescribeRequest d;
  *d.mutable_architecture() = arch;
  for (int64_t s : req.x1().shape()) d.add_x1_shape(s);
  for (int64_t s : req.x2().shape()) d.add_x2_shape(s);
  *d.mutable_get() = req.get();
  if (req.has_diagonal_batch()) d.set_diagonal_batch(req.diagonal_batch());
  if (req.has_diagonal_spatial()) d.set_diagonal_spatial(req.diagonal_spatial());
  Write(out / "describe", name, d.SerializeAsString());
  // Larger shapes of the same network (Describe plans without data).
  nt::v1::DescribeRequest big = d;
  if (big.x1_shape_size() > 0) big.set_x1_shape(0, 4096);
  for (int i = 1; i < big.x1_shape_size(); ++i) big.set_x1_shape(i, big.x1_shape(i) * 8);
  big.clear_x2_shape();
  Write(out / "describe", name + "_big", big.SerializeAsString());

  auto text = nt::client::LayerToJson(arch);
  if (text.ok()) Write(out / "arch_json", name + ".json", *text);

  if (inputs.contains("x1")) {
    Write(out / "tensor", name + "_f64", ToTensor(inputs["x1"]).SerializeAsString());
    Write(out / "tensor", name + "_f32", ToTensor(inputs["x1"], nt::v1::FLOAT32).SerializeAsString());
  }
  for (const char* p : {"pattern1"}) {
    if (!inputs.contains(p) || inputs[p].is_null()) continue;
    Write(out / "tensor", name + "_i64", ToTensor(inputs[p], nt::v1::INT64).SerializeAsString());
    Write(out / "tensor", name + "_bool", ToTensor(inputs[p], nt::v1::BOOL).SerializeAsString());
  }
}

// Layer names (message types of the Layer oneof), argument names and enum values, as JSON strings.
void Dictionaries(const fs::path& out) {
  std::set<std::string> words = {"layer", "args",  "layers", "serial", "parallel", "repeat",
                                 "n",     "slice", "shape",  "data",   "inf",      "-inf",
                                 "nan",   "null",  "true",   "false",  "..."};
  std::set<std::string> enums;
  const google::protobuf::Descriptor* layer = nt::v1::Layer::descriptor();
  std::set<const google::protobuf::Descriptor*> seen;
  std::vector<const google::protobuf::Descriptor*> todo;
  for (int i = 0; i < layer->field_count(); ++i) {
    if (layer->field(i)->message_type()) todo.push_back(layer->field(i)->message_type());
  }
  while (!todo.empty()) {
    const google::protobuf::Descriptor* m = todo.back();
    todo.pop_back();
    if (!seen.insert(m).second) continue;
    words.insert(m->name());
    for (int i = 0; i < m->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* f = m->field(i);
      words.insert(f->name());
      if (f->message_type()) todo.push_back(f->message_type());
      if (f->enum_type()) {
        for (int k = 0; k < f->enum_type()->value_count(); ++k)
          enums.insert(f->enum_type()->value(k)->name());
      }
    }
  }
  std::ofstream a(out / "arch_json.dict");
  for (const std::string& w : words) a << json(json(w).dump()).dump() << "\n";
  for (const std::string& w : enums) a << json(json(w).dump()).dump() << "\n";
  std::ofstream k(out / "kernel_request.dict");
  for (const char* w : {"nngp", "ntk", "cov1", "cov2", "NNGP", "NTK"})
    k << json(std::string(w)).dump() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: nt_fuzz_seeds <golden cases dir> <examples dir> <out dir>\n";
    return 2;
  }
  const fs::path golden = argv[1], examples = argv[2], out = argv[3];
  fs::create_directories(out);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(golden)) {
    if (e.path().extension() == ".json") files.push_back(e.path());
  }
  for (const auto& e : fs::directory_iterator(examples)) {
    if (e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  int failed = 0;
  for (const fs::path& f : files) {
    std::ifstream in(f);
    json j;
    try {
      j = json::parse(in);
    } catch (const std::exception& e) {
      std::cerr << f << ": " << e.what() << "\n";
      ++failed;
      continue;
    }
    const bool is_case = j.contains("architecture");
    auto arch = nt::client::LayerFromJsonValue(is_case ? j["architecture"] : j);
    if (!arch.ok()) {
      std::cerr << f << ": " << arch.status() << "\n";
      ++failed;
      continue;
    }
    const std::string name = f.stem().string();
    json inputs = is_case && j.contains("inputs") ? j["inputs"] : json::object();
    const json options = is_case && j.contains("options") ? j["options"] : json::object();
    if (!inputs.contains("x1")) {
      // Predict cases (x_train) and plain architectures: a small input of a matching shape.
      if (inputs.contains("x_train")) {
        inputs["x1"] = inputs["x_train"];
        if (inputs.contains("x_test")) inputs["x2"] = inputs["x_test"];
      } else {
        json x1;
        x1["shape"] = {2, 3};
        x1["data"] = {0.1, -0.4, 1.2, 0.7, 0.3, -1.1};
        inputs["x1"] = x1;
      }
    }
    Seeds(name, *arch, inputs, options, out);
  }
  // Integer and degenerate tensors.
  nt::v1::Tensor t = Random({2, 2}, 3);
  t.set_dtype(nt::v1::INT64);
  Write(out / "tensor", "int64_2x2", t.SerializeAsString());
  t.Clear();
  t.add_shape(0);
  t.add_shape(5);
  Write(out / "tensor", "empty_0x5", t.SerializeAsString());
  t.Clear();
  t.set_handle("t0123456789abcdef");
  Write(out / "tensor", "handle", t.SerializeAsString());
  Write(out / "tensor", "scalar", Random({}, 1).SerializeAsString());
  Dictionaries(out);
  std::cout << "nt_fuzz_seeds: " << written << " seeds from " << files.size() << " files (" << failed
            << " unreadable) in " << out << "\n";
  return failed == 0 ? 0 : 1;
}
