// C++ client of nt.v1.KernelService: Describe, ComputeKernel (tiles assembled into whole arrays or .npy
// files, one kernel spread over several servers), UploadTensor / ReleaseTensor and the grpc.health.v1
// check; bearer tokens and TLS.
#ifndef NT_CLIENT_CPP_CLIENT_H_
#define NT_CLIENT_CPP_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/cpp/npy.h"
#include "nt/v1/service.grpc.pb.h"

namespace nt::client {

inline constexpr char kDefaultServerAddress[] = "localhost:50051";
inline constexpr int kMaxMessageBytes = 256 * 1024 * 1024;

// $NT_SERVER when set and non-empty (possibly a list, see ResolveAddresses), else localhost:50051.
std::string DefaultServerAddress();

// Same code (the numeric values agree) and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// NpyArray <-> nt.v1.Tensor (dtype "<f8" <-> FLOAT64, "<f4" <-> FLOAT32, "|b1" <-> BOOL,
// "<i8" <-> INT64; DTYPE_UNSPECIFIED reads as FLOAT64).
absl::StatusOr<nt::v1::Tensor> TensorFromNpy(const NpyArray& array);
absl::StatusOr<NpyArray> NpyFromTensor(const nt::v1::Tensor& tensor);

struct KernelProgress {
  // Tile messages placed so far, over every stream (a range retried elsewhere counts again from zero).
  int64_t tiles_done = 0;
  // Tile messages of the whole kernel: from the header (0 until it arrives). Spread over several streams,
  // the sum of the headers of the tile ranges seen so far, extrapolated to the ranges not yet started.
  int64_t num_tiles = 0;
  int64_t bytes_received = 0;  // Block payload bytes so far.
  double elapsed_seconds = 0;  // Since the call started.
  std::string endpoint;        // Address of the stream the last tile came from (empty for a header).
  int64_t retries = 0;         // Tile ranges that failed and went back to the queue.
};
// Calls are serialised (never two at once), also when several endpoints deliver tiles.
using ProgressCallback = std::function<void(const KernelProgress&)>;

// How a kernel was spread over the endpoints.
struct DistributionStats {
  int64_t ranges = 0;                    // Tile ranges the kernel was cut into (1: one stream).
  int64_t retries = 0;                   // Ranges that failed and were computed again.
  std::map<std::string, int64_t> tiles;  // Tile messages placed, per endpoint address.
  std::vector<std::string> given_up;     // Endpoints dropped after failures.
  int64_t uploads = 0;                   // Tensors uploaded (UploadTensor), over all endpoints.
};

struct KernelResult {
  std::map<std::string, NpyArray> arrays;  // "nngp", "ntk", "cov1", "cov2" as requested.
  // Instead of `arrays` when assembled into files (ComputeKernelToFiles): array name -> .npy path.
  std::map<std::string, std::string> files;
  // The header; over several tile ranges, the first one's with num_tiles the total of all ranges and
  // tile_begin / tile_end the whole kernel.
  nt::v1::KernelHeader header;
  // Over several tile ranges: the first one's, with num_tiles and compute_seconds summed.
  nt::v1::KernelSummary summary;
  DistributionStats stats;
};

// Puts ComputeKernel streams back together: Start(header) per stream, AddTile() per tile,
// Finish(summary) once. A mirrored tile is also written at the transposed position as it arrives; the
// header's diagonal_spatial says whether the trailing axes come in (s, s') pairs that the transpose swaps.
//
// Several streams of one kernel (tile ranges of it, e.g. from several servers) may feed one assembler,
// from several threads at once: every header must agree with the first on the arrays, dtype and
// diagonal_spatial. Start() and AddTile() are thread-safe; a stream's tiles must follow its Start().
class KernelAssembler {
 public:
  KernelAssembler();
  ~KernelAssembler();
  KernelAssembler(const KernelAssembler&) = delete;
  KernelAssembler& operator=(const KernelAssembler&) = delete;

  // Assemble into .npy files, written tile by tile (pwrite of row segments), instead of memory; for
  // kernels larger than memory. Call before the first Start(). See KernelFilePath for the file names.
  void WriteToFiles(std::string path_template);

  absl::Status Start(const nt::v1::KernelHeader& header);
  absl::Status AddTile(const nt::v1::KernelTile& tile);
  // Checks that every batch cell was written (when the headers' tile ranges cover the whole kernel;
  // a single partial range is returned as it is) and, after a single stream, the header's tile count;
  // then moves the arrays out (or closes the files). The assembler is spent afterwards.
  absl::StatusOr<KernelResult> Finish(const nt::v1::KernelSummary& summary);

  int64_t tiles_done() const;
  int64_t num_tiles() const;  // The first header's.

 private:
  struct Slot;
  absl::Status StartLocked(const nt::v1::KernelHeader& header);
  absl::Status Write(Slot& slot, int64_t byte_offset, const char* src, size_t size);
  void Cover(Slot& slot, int64_t r0, int64_t c0, int64_t rows, int64_t cols);

  mutable std::mutex mu_;
  bool started_ = false;
  int64_t streams_ = 0;
  std::vector<std::pair<int64_t, int64_t>> ranges_;  // [tile_begin, tile_end) of every header.
  nt::v1::KernelHeader header_;
  std::string dtype_;
  std::string path_template_;  // Non-empty: write .npy files.
  std::map<std::string, std::unique_ptr<Slot>> slots_;
  std::atomic<int64_t> tiles_done_{0};
};

// The .npy file of array `name` for a path template: "{name}" replaced by the name; without "{name}",
// "<template>.<name>.npy" (a trailing ".npy" of the template goes after the name: k.npy -> k.nngp.npy).
std::string KernelFilePath(const std::string& path_template, const std::string& name);

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
const char* HealthStatusName(HealthStatus status);

// One server of an address list. `tls_name` is the DNS name to verify the server's TLS certificate
// against when `address` is an IP that a dns:/// item resolved to (empty otherwise).
struct ResolvedAddress {
  std::string address;
  std::string tls_name;
};

// The endpoints of an address spec: comma-separated host:port items; an item dns:///name:port (also
// dns:name:port) stands for every address the name resolves to (getaddrinfo; a Kubernetes headless
// Service gives one per pod), sorted, each once, IPv6 as [ip]:port. InvalidArgument for an empty list or
// a malformed dns item, Unavailable when a name does not resolve.
absl::StatusOr<std::vector<ResolvedAddress>> ResolveAddresses(const std::string& spec);

// Requests larger than this are sent with their inputs of more than kInlineTensorBytes uploaded first.
inline constexpr int64_t kUploadThresholdBytes = 1 << 20;
inline constexpr int64_t kUploadChunkBytes = 256 << 10;
inline constexpr int64_t kInlineTensorBytes = 64 << 10;

struct ClientOptions {
  // host:port, or several comma-separated, also dns:///name:port for every address of a name.
  // Empty: DefaultServerAddress().
  std::string address;
  // Per-call deadline; infinite by default (large kernels can take long).
  absl::Duration timeout = absl::InfiniteDuration();
  // Sent as "authorization: Bearer <token>" on every call. Empty: $NT_TOKEN when set.
  std::string token;
  // TLS: the CA certificates (PEM) that server certificates must chain to. Empty: the contents of the
  // file named by $NT_TLS_CA when set; else plaintext, unless `tls` (then the system's roots).
  std::string root_certificates_pem;
  bool tls = false;
  // The client's own key and certificate chain (PEM), for servers that require client certificates.
  std::string private_key_pem;
  std::string certificate_chain_pem;
  // Name that server certificates must carry, for every endpoint (default: the host of the address, or
  // the name of a dns:/// item).
  std::string tls_server_name;
  // Requests larger than this upload their inputs of more than kInlineTensorBytes once per endpoint
  // (UploadTensor, kUploadChunkBytes chunks) and refer to them by handle.
  int64_t upload_threshold_bytes = kUploadThresholdBytes;
  // A kernel spread over several endpoints is cut into about this many tile ranges per endpoint.
  int ranges_per_endpoint = 4;
};

// Reads a whole (PEM) file.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

class KernelClient {
 public:
  explicit KernelClient(ClientOptions options = {});
  explicit KernelClient(const std::string& address);
  // For an existing channel (in-process servers in tests): one endpoint.
  KernelClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});
  ~KernelClient();

  // The address spec as given (or the default).
  const std::string& address() const { return address_; }
  // The resolved endpoint addresses, in order.
  std::vector<std::string> endpoints() const;
  // Whether the options were usable (address list, $NT_TLS_CA file); every call returns this error too.
  const absl::Status& status() const { return init_status_; }

  // On the first endpoint that answers (UNAVAILABLE moves on to the next).
  absl::StatusOr<nt::v1::DescribeResponse> Describe(const nt::v1::DescribeRequest& request);
  // Computes the kernel; `progress` (optional) is called after the header and after every tile. One
  // endpoint and a request no larger than upload_threshold_bytes: one stream. Otherwise the kernel is
  // spread over all endpoints: one Describe fixes tile_size, [0, num_tiles) is cut into about
  // ranges_per_endpoint ranges per endpoint, each endpoint's worker thread takes ranges from a queue; a
  // range that fails with UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
  // UNKNOWN or ABORTED goes back to the queue (for another endpoint); an endpoint is given up after
  // UNAVAILABLE or 3 failures in a row, and the call fails when none is left. Other errors fail the call.
  // Large inputs go by handle (uploaded once per endpoint, again after NOT_FOUND naming a handle, released
  // at the end). The result is bit-identical to one server's. A request that names its own tile range
  // (tile_begin / tile_end) or carries handles (which live on one server) goes to the first endpoint as
  // one stream; a partial range comes back with the other cells zero.
  absl::StatusOr<KernelResult> ComputeKernel(const nt::v1::KernelRequest& request,
                                             const ProgressCallback& progress = nullptr);
  // The same, assembled straight into .npy files tile by tile (KernelFilePath(path_template, name) per
  // array), for kernels larger than memory; the result has `files` instead of `arrays`.
  absl::StatusOr<KernelResult> ComputeKernelToFiles(const nt::v1::KernelRequest& request,
                                                    const std::string& path_template,
                                                    const ProgressCallback& progress = nullptr);
  // Uploads a tensor in kUploadChunkBytes chunks (UploadTensor) to endpoint `endpoint`; returns a Tensor
  // carrying only its handle, usable in place of the data in requests to that server.
  absl::StatusOr<nt::v1::Tensor> Upload(const NpyArray& array, int endpoint = 0);
  absl::StatusOr<nt::v1::Tensor> Upload(const nt::v1::Tensor& tensor, int endpoint = 0);
  // ReleaseTensor: true if the server still held it.
  absl::StatusOr<bool> Release(const std::string& handle, int endpoint = 0);
  // grpc.health.v1.Health/Check; `service` empty asks about the server as a whole. `endpoint` -1: the
  // first endpoint that answers.
  absl::StatusOr<HealthStatus> Health(const std::string& service = "", int endpoint = -1);

 private:
  struct Endpoint;
  class Distributor;

  void Prepare(grpc::ClientContext* context) const;
  absl::StatusOr<KernelResult> Compute(const nt::v1::KernelRequest& request, const std::string& path_template,
                                       const ProgressCallback& progress);
  absl::StatusOr<KernelResult> ComputeOneStream(const nt::v1::KernelRequest& request,
                                                const std::string& path_template,
                                                const ProgressCallback& progress);
  absl::StatusOr<HealthStatus> HealthOf(const Endpoint& endpoint, const std::string& service);

  std::string address_;
  ClientOptions options_;
  absl::Status init_status_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
};

}  // namespace nt::client

#endif  // NT_CLIENT_CPP_CLIENT_H_
