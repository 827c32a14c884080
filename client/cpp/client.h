// C++ client of nt.v1.KernelService: Describe, ComputeKernel (tiles assembled into whole arrays) and
// the grpc.health.v1 check.
#ifndef NT_CLIENT_CPP_CLIENT_H_
#define NT_CLIENT_CPP_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/npy.h"
#include "nt/v1/service.grpc.pb.h"

namespace nt::client {

inline constexpr char kDefaultServerAddress[] = "localhost:50051";
inline constexpr int kMaxMessageBytes = 256 * 1024 * 1024;

// $NT_SERVER when set and non-empty, else localhost:50051.
std::string DefaultServerAddress();

// Same code (the numeric values agree) and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// NpyArray <-> nt.v1.Tensor (dtype "<f8" <-> FLOAT64, "<f4" <-> FLOAT32, "|b1" <-> BOOL,
// "<i8" <-> INT64; DTYPE_UNSPECIFIED reads as FLOAT64).
absl::StatusOr<nt::v1::Tensor> TensorFromNpy(const NpyArray& array);
absl::StatusOr<NpyArray> NpyFromTensor(const nt::v1::Tensor& tensor);

struct KernelProgress {
  int64_t tiles_done = 0;
  int64_t num_tiles = 0;       // From the header; 0 until it arrives.
  int64_t bytes_received = 0;  // Block payload bytes so far.
  double elapsed_seconds = 0;  // Since the call started.
};
using ProgressCallback = std::function<void(const KernelProgress&)>;

struct KernelResult {
  std::map<std::string, NpyArray> arrays;  // "nngp", "ntk", "cov1", "cov2" as requested.
  nt::v1::KernelHeader header;
  nt::v1::KernelSummary summary;
};

// Puts a ComputeKernel stream back together: Start(header), AddTile() per tile, Finish(summary).
// A mirrored tile is also written at the transposed position as it arrives; the header's
// diagonal_spatial says whether the trailing axes come in (s, s') pairs that the transpose swaps.
class KernelAssembler {
 public:
  absl::Status Start(const nt::v1::KernelHeader& header);
  absl::Status AddTile(const nt::v1::KernelTile& tile);
  // Checks the tile count and that every batch cell was written, and moves the arrays out. The
  // assembler is spent afterwards.
  absl::StatusOr<KernelResult> Finish(const nt::v1::KernelSummary& summary);

  int64_t tiles_done() const { return tiles_done_; }
  int64_t num_tiles() const { return header_.num_tiles(); }

 private:
  struct Slot {
    nt::v1::ArrayInfo info;
    NpyArray array;
    int64_t rows = 1;           // Extent of tiled axis 0 (1 when there is none).
    int64_t cols = 1;           // Extent of tiled axis 1 (1 unless tiled_axes == 2).
    int64_t inner = 1;          // Elements per batch cell (product of the trailing axes).
    std::vector<bool> covered;  // rows * cols batch cells written so far.
  };

  bool started_ = false;
  nt::v1::KernelHeader header_;
  std::string dtype_;
  std::map<std::string, Slot> slots_;
  int64_t tiles_done_ = 0;
};

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
const char* HealthStatusName(HealthStatus status);

struct ClientOptions {
  std::string address;  // Empty: DefaultServerAddress().
  // Per-call deadline; infinite by default (large kernels can take long).
  absl::Duration timeout = absl::InfiniteDuration();
};

class KernelClient {
 public:
  explicit KernelClient(ClientOptions options = {});
  explicit KernelClient(const std::string& address);
  // For an existing channel (in-process servers in tests).
  KernelClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  const std::string& address() const { return address_; }

  absl::StatusOr<nt::v1::DescribeResponse> Describe(const nt::v1::DescribeRequest& request);
  // Streams the kernel; `progress` (optional) is called after the header and after every tile.
  absl::StatusOr<KernelResult> ComputeKernel(const nt::v1::KernelRequest& request,
                                             const ProgressCallback& progress = nullptr);
  // grpc.health.v1.Health/Check; `service` empty asks about the server as a whole.
  absl::StatusOr<HealthStatus> Health(const std::string& service = "");

 private:
  void SetDeadline(grpc::ClientContext* context) const;

  std::string address_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<nt::v1::KernelService::Stub> stub_;
};

}  // namespace nt::client

#endif  // NT_CLIENT_CPP_CLIENT_H_
