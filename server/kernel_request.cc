#include "server/kernel_request.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/layer_builder.h"
#include "server/tensor_codec.h"

namespace nt::server {

KernelOptions KernelOptionsFrom(const google::protobuf::RepeatedPtrField<std::string>& get, bool has_db, bool db,
                                bool has_ds, bool ds, int64_t tile_size) {
  KernelOptions o;
  o.get.assign(get.begin(), get.end());
  if (has_db) o.diagonal_batch = db;
  if (has_ds) o.diagonal_spatial = ds;
  o.tile_size = tile_size;
  return o;
}

absl::StatusOr<DecodedKernelRequest> DecodeKernelRequest(const nt::v1::KernelRequest& req, TensorStore* store,
                                                         int concurrency, int64_t max_message_bytes) {
  if (!req.has_architecture()) return absl::InvalidArgumentError("architecture: is required");
  if (!req.has_x1()) return absl::InvalidArgumentError("x1: is required");
  if (req.output_dtype() != nt::v1::DTYPE_UNSPECIFIED && req.output_dtype() != nt::v1::FLOAT64 &&
      req.output_dtype() != nt::v1::FLOAT32) {
    return absl::InvalidArgumentError("output_dtype: must be FLOAT64 or FLOAT32");
  }
  if (req.tile_size() < 0) return absl::InvalidArgumentError("tile_size: must be >= 0");
  if (req.tile_begin() < 0 || req.tile_end() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tile_begin, tile_end: must be >= 0, got ", req.tile_begin(),
                                                   " and ", req.tile_end()));
  }
  DecodedKernelRequest d;
  // The architecture first, so that an unimplemented layer is named rather than its inputs.
  auto net = BuildLayer(req.architecture());
  if (!net.ok()) return net.status();
  d.net = *std::move(net);
  auto x1 = DecodeSharedTensor(req.x1(), "x1", false, store);
  if (!x1.ok()) return x1.status();
  d.x1 = *std::move(x1);
  if (req.has_x2()) {
    auto a = DecodeSharedTensor(req.x2(), "x2", false, store);
    if (!a.ok()) return a.status();
    d.x2 = *std::move(a);
  }
  KernelOptions& o = d.options;
  o = KernelOptionsFrom(req.get(), req.has_diagonal_batch(), req.diagonal_batch(), req.has_diagonal_spatial(),
                        req.diagonal_spatial(), req.tile_size());
  o.tile_begin = req.tile_begin();
  o.tile_end = req.tile_end() == 0 ? -1 : req.tile_end();
  if (req.has_mask_constant()) o.mask_constant = req.mask_constant();
  for (const bool first : {true, false}) {
    if (!(first ? req.has_pattern1() : req.has_pattern2())) continue;
    auto p = DecodeSharedTensor(first ? req.pattern1() : req.pattern2(), first ? "pattern1" : "pattern2",
                                /*allow_integers=*/true, store);
    if (!p.ok()) return p.status();
    (first ? o.pattern1 : o.pattern2) = *std::move(p);
  }
  auto plan = PlanKernel(*d.net, *d.x1, d.x2.get(), o, concurrency);
  if (!plan.ok()) return plan.status();
  d.plan = *std::move(plan);

  // Every message must fit the configured maximum.
  d.dtype = req.output_dtype() == nt::v1::FLOAT32 ? nt::v1::FLOAT32 : nt::v1::FLOAT64;
  const int64_t width = d.dtype == nt::v1::FLOAT32 ? 4 : 8;
  // Sizes in double: tile sizes come from the client, so products may not fit in 64 bits.
  for (const ArraySpec& a : d.plan.arrays) {
    double cells = 1;
    for (size_t i = a.tiled_axes; i < a.shape.size(); ++i) cells *= double(a.shape[i]);
    for (int i = 0; i < a.tiled_axes; ++i) cells *= double(std::min(d.plan.tile_size, a.shape[i]));
    d.largest_block_bytes = std::max(d.largest_block_bytes, cells * double(width));
  }
  if (d.largest_block_bytes + 1024 > double(max_message_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tile_size: a tile of ", d.plan.tile_size, " rows is ", d.largest_block_bytes,
        " bytes, more than the maximum message size of ", max_message_bytes, "; request a smaller tile_size"));
  }
  return d;
}

}  // namespace nt::server
