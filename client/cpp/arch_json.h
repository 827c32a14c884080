// The JSON architecture form of /work/shared/golden/FORMAT.md <-> nt.v1.Layer.
//
//   {"layer": "<stax name>", "args": {<upstream keyword arguments>}}
//   {"layer": "serial" | "parallel", "layers": [...]}
//   {"layer": "repeat", "args": {"n": 3}, "layers": [L]}
//
// The conversion is generic over architecture.proto: a layer name selects the Layer oneof field whose
// message type has that name, and argument names are that message's field names. JSON null leaves a
// field unset (upstream None / default); enum strings are matched upper-cased; a scalar given for a
// repeated field is a one-element list (LayerNorm(axis=-1)). Argument shapes with their own JSON form:
//   Index idx:               [{"slice": [start, stop, step]}, 0, "...", ...]  (slice entries may be null)
//   DotGeneral lhs / rhs:    {"shape": [...], "data": [...]}                 -> float64 Tensor
//   DotGeneral dimension_numbers: [[lhs_contracting, rhs_contracting], [lhs_batch, rhs_batch]]
//   Conv* dimension_numbers: ["NHWC", "HWIO", "NHWC"]
//   Aggregate aggregate_axis: an int or a list (Axes)
// Doubles that JSON cannot hold are written as the strings "inf", "-inf" and "nan" (and read back).
#ifndef NT_CLIENT_CPP_ARCH_JSON_H_
#define NT_CLIENT_CPP_ARCH_JSON_H_

#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "nt/v1/architecture.pb.h"

namespace nt::client {

// Errors are InvalidArgument naming the position in the tree, the layer and the argument.
absl::StatusOr<nt::v1::Layer> LayerFromJsonValue(const nlohmann::json& json);
absl::StatusOr<nt::v1::Layer> LayerFromJson(const std::string& text);
// Reads a file holding a layer object, or any object with an "architecture" member holding one
// (a golden case file).
absl::StatusOr<nt::v1::Layer> LayerFromJsonFile(const std::string& path);

// Inverse of LayerFromJson: only arguments that are set are written. `indent` < 0: one line.
absl::StatusOr<nlohmann::json> LayerToJsonValue(const nt::v1::Layer& layer);
absl::StatusOr<std::string> LayerToJson(const nt::v1::Layer& layer, int indent = -1);

}  // namespace nt::client

#endif  // NT_CLIENT_CPP_ARCH_JSON_H_
