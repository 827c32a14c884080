// nt.v1.Params (nested tensors) <-> core Params.
#ifndef NT_SERVER_PARAMS_CODEC_H_
#define NT_SERVER_PARAMS_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/layer.h"
#include "nt/v1/service.pb.h"

namespace nt::server {

// `field` names the request field in error messages, e.g. "params.children[1].arrays[0]".
absl::StatusOr<Params> DecodeParams(const nt::v1::Params& p, const std::string& field);
void EncodeParams(const Params& p, nt::v1::DType dtype, nt::v1::Params* out);

}  // namespace nt::server

#endif  // NT_SERVER_PARAMS_CODEC_H_
