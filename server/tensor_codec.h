// nt.v1.Tensor (shape + dtype + raw little-endian row-major bytes) <-> core Array.
#ifndef NT_SERVER_TENSOR_CODEC_H_
#define NT_SERVER_TENSOR_CODEC_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "nt/v1/tensor.pb.h"
#include "server/tensor_store.h"

namespace nt::server {

// Decodes a float64/float32 tensor; `field` names the request field in error messages. With
// `allow_integers`, also INT64 and BOOL tensors (e.g. Aggregate's edge lists), as float64 values. A
// tensor given by handle is looked up in `store` (null: handles are refused for this field).
absl::StatusOr<Array> DecodeTensor(const nt::v1::Tensor& t, const std::string& field,
                                   bool allow_integers = false, TensorStore* store = nullptr);
// The same, shared: a tensor given by handle is not copied (the pointer keeps the stored tensor alive,
// also if it is released meanwhile); for inputs of hundreds of MB, a copy is a serial pause before the
// first tile.
absl::StatusOr<std::shared_ptr<const Array>> DecodeSharedTensor(const nt::v1::Tensor& t,
                                                                const std::string& field,
                                                                bool allow_integers = false,
                                                                TensorStore* store = nullptr);
// Encodes as FLOAT64 or FLOAT32 (anything else: FLOAT64).
void EncodeTensor(const Array& a, nt::v1::DType dtype, nt::v1::Tensor* out);

}  // namespace nt::server

#endif  // NT_SERVER_TENSOR_CODEC_H_
