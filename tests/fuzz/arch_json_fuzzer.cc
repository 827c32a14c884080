// libFuzzer: bytes -> the client's JSON architecture parser (client/cpp/arch_json.h). A parsed layer must
// serialise back and parse again; it then goes through the server's layer builder (BuildLayer), so
// structured architectures reach the builder's validation too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "client/cpp/arch_json.h"
#include "server/layer_builder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto layer = nt::client::LayerFromJson(text);
  if (!layer.ok()) return 0;
  auto json = nt::client::LayerToJson(*layer);
  if (json.ok() && !nt::client::LayerFromJson(*json).ok()) __builtin_trap();  // Round trip must parse.
  (void)nt::server::BuildLayer(*layer);
  return 0;
}
