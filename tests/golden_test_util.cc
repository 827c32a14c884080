#include "tests/golden_test_util.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace nt::testing {

std::string GoldenDir() {
  const char* env = std::getenv("NT_GOLDEN_DIR");
  return env && *env ? env : NT_GOLDEN_DIR_DEFAULT;
}

std::vector<std::string> GoldenCaseNames() {
  std::vector<std::string> names;
  if (DIR* d = opendir(GoldenDir().c_str())) {
    while (dirent* e = readdir(d)) {
      std::string f = e->d_name;
      if (f.size() > 5 && f.substr(f.size() - 5) == ".json") names.push_back(f.substr(0, f.size() - 5));
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

nlohmann::json LoadCase(const std::string& name) {
  std::ifstream in(GoldenDir() + "/" + name + ".json");
  return nlohmann::json::parse(in);
}

Array ArrayFromJson(const nlohmann::json& j) {
  Shape shape = j.at("shape").get<Shape>();
  std::vector<double> data = j.at("data").get<std::vector<double>>();
  return Array(shape, std::move(data));
}

nlohmann::json ArrayToJson(const Array& a) { return nlohmann::json{{"shape", a.shape()}, {"data", a.vec()}}; }

namespace {

double Tol(const nlohmann::json& spec, const std::string& key) {
  if (spec.is_number()) return spec.get<double>();
  if (spec.is_object() && spec.contains(key) && spec[key].is_number()) return spec[key].get<double>();
  return 0.0;
}

}  // namespace

std::string CompareToGolden(const nlohmann::json& c, const std::string& key, const Array& got) {
  const Array expected = ArrayFromJson(c.at("expected").at(key));
  if (got.shape() != expected.shape()) {
    return absl::StrCat(key, ": shape ", ShapeToString(got.shape()), " != expected ",
                        ShapeToString(expected.shape()));
  }
  const double rtol = Tol(c.value("rtol", nlohmann::json(0.0)), key);
  const double atol = Tol(c.value("atol", nlohmann::json(0.0)), key);
  const bool mc = c.value("method", "") == "monte-carlo";
  const double nsig = mc ? c.value("mc_nsigma", 0.0) : 0.0;
  std::vector<double> se;
  if (nsig > 0) se = c.at("mc_stderr").at(key).at("data").get<std::vector<double>>();
  double worst = 0;
  int64_t worst_i = -1;
  for (int64_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return absl::StrCat(key, "[", i, "] is not finite: ", got[i]);
    const double err = std::abs(got[i] - expected[i]);
    const double tol = atol + rtol * std::abs(expected[i]) + (nsig > 0 ? nsig * se[i] : 0.0);
    const double norm = tol > 0 ? err / tol : (err == 0 ? 0 : INFINITY);
    if (norm > worst) {
      worst = norm;
      worst_i = i;
    }
  }
  if (worst <= 1.0) return "";
  return absl::StrCat(key, "[", worst_i, "]: got ", got[worst_i], " expected ", expected[worst_i],
                      " (error/tolerance = ", worst, ")");
}

std::map<std::string, std::set<std::string>> GoldenDisputes() {
  std::map<std::string, std::set<std::string>> out;
  std::ifstream in(NT_GOLDEN_DISPUTES);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name, arrays;
    fields >> name >> arrays;
    for (absl::string_view a : absl::StrSplit(arrays, ',')) out[name].insert(std::string(a));
  }
  return out;
}

std::string CheckGoldenArray(const std::string& name, const nlohmann::json& c, const std::string& key,
                             const Array& got) {
  static const auto* disputes = new std::map<std::string, std::set<std::string>>(GoldenDisputes());
  const std::string diff = CompareToGolden(c, key, got);
  const auto it = disputes->find(name);
  if (it == disputes->end() || !it->second.count(key)) return diff;
  if (diff.empty()) {
    return absl::StrCat(key,
                        ": listed in tests/golden_disputes.txt but now matches the case; remove the dispute");
  }
  return "";
}

}  // namespace nt::testing
