// Turns an nt.v1.Layer message into a core layer, applying upstream's defaults and validating every
// argument. Layers the engine does not implement yet are refused with UNIMPLEMENTED naming the layer.
#ifndef NT_SERVER_LAYER_BUILDER_H_
#define NT_SERVER_LAYER_BUILDER_H_

#include "absl/status/statusor.h"
#include "core/layer.h"
#include "nt/v1/architecture.pb.h"

namespace nt::server {

absl::StatusOr<LayerPtr> BuildLayer(const nt::v1::Layer& layer);

}  // namespace nt::server

#endif  // NT_SERVER_LAYER_BUILDER_H_
