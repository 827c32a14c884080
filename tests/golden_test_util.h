// Shared by the golden-case tests: reading cases and comparing arrays with the golden tolerances.
#ifndef NT_TESTS_GOLDEN_TEST_UTIL_H_
#define NT_TESTS_GOLDEN_TEST_UTIL_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/array.h"
#include "nlohmann/json.hpp"

namespace nt::testing {

// Directory of the golden cases: $NT_GOLDEN_DIR, else the compiled-in default.
std::string GoldenDir();
std::vector<std::string> GoldenCaseNames();
nlohmann::json LoadCase(const std::string& name);

Array ArrayFromJson(const nlohmann::json& j);
nlohmann::json ArrayToJson(const Array& a);

// check.py's rule: |got - expected| <= atol + rtol |expected| (+ nsigma * stderr). Returns "" when
// every entry passes, else a description of the worst entry.
std::string CompareToGolden(const nlohmann::json& golden_case, const std::string& key, const Array& got);

// Arrays of golden cases that are provably wrong (tests/golden_disputes.txt): case name -> arrays.
std::map<std::string, std::set<std::string>> GoldenDisputes();

// CompareToGolden for array `key` of case `name`, except that a disputed array must disagree with the file
// (a corrected case is reported, so that its dispute is removed). "" when the array is as expected.
std::string CheckGoldenArray(const std::string& name, const nlohmann::json& golden_case,
                             const std::string& key, const Array& got);

}  // namespace nt::testing

#endif  // NT_TESTS_GOLDEN_TEST_UTIL_H_
