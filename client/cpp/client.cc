#include "client/cpp/client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"

namespace nt::client {
namespace {

absl::StatusOr<std::string> DtypeString(nt::v1::DType dtype) {
  switch (dtype) {
    case nt::v1::DTYPE_UNSPECIFIED:
    case nt::v1::FLOAT64:
      return std::string("<f8");
    case nt::v1::FLOAT32:
      return std::string("<f4");
    case nt::v1::BOOL:
      return std::string("|b1");
    case nt::v1::INT64:
      return std::string("<i8");
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown tensor dtype ", dtype));
  }
}

std::string ShapeOf(const google::protobuf::RepeatedField<int64_t>& shape) {
  return ShapeString(std::vector<int64_t>(shape.begin(), shape.end()));
}

absl::Status StreamError(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed ComputeKernel stream: ", what));
}

// Where each trailing element of a batch cell goes when the cell is mirrored. In the full-spatial
// layout (S1, S1, S2, S2, ...) the two axes of every pair swap; empty means the trailing axes stay
// as they are (diagonal-spatial layout, or none).
absl::StatusOr<std::vector<int64_t>> MirrorPermutation(const nt::v1::ArrayInfo& info, bool diagonal_spatial) {
  const int trailing = info.shape_size() - 2;
  if (diagonal_spatial || trailing == 0) return std::vector<int64_t>();
  const std::vector<int64_t> dims(info.shape().begin() + 2, info.shape().end());
  bool pairs = trailing % 2 == 0;
  for (int k = 0; pairs && k < trailing; k += 2) pairs = dims[k] == dims[k + 1];
  if (!pairs) {
    return StreamError(absl::StrCat("mirrored array ", info.name(), " of shape ", ShapeOf(info.shape()),
                                    " has no (s, s') axis pairs (full-spatial layout)"));
  }
  int64_t inner = 1;
  for (int64_t d : dims) inner *= d;
  std::vector<int64_t> perm(static_cast<size_t>(inner));
  std::vector<int64_t> index(trailing, 0);
  for (int64_t t = 0; t < inner; ++t) {
    int64_t dst = 0;
    for (int k = 0; k < trailing; ++k) dst = dst * dims[k] + index[k ^ 1];  // k ^ 1: pair partner.
    perm[t] = dst;
    for (int k = trailing - 1; k >= 0; --k) {  // Next multi-index, row-major.
      if (++index[k] < dims[k]) break;
      index[k] = 0;
    }
  }
  return perm;
}

}  // namespace

std::string DefaultServerAddress() {
  const char* env = std::getenv("NT_SERVER");
  return (env != nullptr && *env != '\0') ? std::string(env) : std::string(kDefaultServerAddress);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<nt::v1::Tensor> TensorFromNpy(const NpyArray& array) {
  absl::Status s = ValidateNpyArray(array);
  if (!s.ok()) return s;
  nt::v1::Tensor tensor;
  for (int64_t d : array.shape) tensor.add_shape(d);
  if (array.dtype == "<f8") {
    tensor.set_dtype(nt::v1::FLOAT64);
  } else if (array.dtype == "<f4") {
    tensor.set_dtype(nt::v1::FLOAT32);
  } else if (array.dtype == "|b1") {
    tensor.set_dtype(nt::v1::BOOL);
  } else {
    tensor.set_dtype(nt::v1::INT64);
  }
  tensor.set_data(array.bytes.data(), array.bytes.size());
  return tensor;
}

absl::StatusOr<NpyArray> NpyFromTensor(const nt::v1::Tensor& tensor) {
  absl::StatusOr<std::string> dtype = DtypeString(tensor.dtype());
  if (!dtype.ok()) return dtype.status();
  NpyArray array{std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end()), *dtype,
                 std::vector<char>(tensor.data().begin(), tensor.data().end())};
  absl::Status s = ValidateNpyArray(array);
  if (!s.ok()) return s;
  return array;
}

// ---- KernelAssembler ----

absl::Status KernelAssembler::Start(const nt::v1::KernelHeader& header) {
  if (started_) return StreamError("second header");
  started_ = true;
  header_ = header;
  if (header.dtype() != nt::v1::DTYPE_UNSPECIFIED && header.dtype() != nt::v1::FLOAT64 &&
      header.dtype() != nt::v1::FLOAT32) {
    return StreamError(absl::StrCat("kernel dtype ", nt::v1::DType_Name(header.dtype())));
  }
  dtype_ = header.dtype() == nt::v1::FLOAT32 ? "<f4" : "<f8";
  for (const nt::v1::ArrayInfo& info : header.arrays()) {
    if (slots_.count(info.name())) return StreamError(absl::StrCat("array ", info.name(), " twice"));
    const int rank = info.shape_size();
    const int tiled = info.tiled_axes();
    if (tiled < 0 || tiled > 2 || tiled > rank) {
      return StreamError(absl::StrCat("array ", info.name(), " of shape ", ShapeOf(info.shape()),
                                      " has tiled_axes ", tiled));
    }
    for (int64_t d : info.shape()) {
      if (d < 0) return StreamError(absl::StrCat("negative dimension in ", info.name()));
    }
    Slot slot;
    slot.info = info;
    slot.array = NpyArray::Zeros(std::vector<int64_t>(info.shape().begin(), info.shape().end()), dtype_);
    if (tiled >= 1) slot.rows = info.shape(0);
    if (tiled == 2) slot.cols = info.shape(1);
    for (int k = tiled; k < rank; ++k) slot.inner *= info.shape(k);
    slot.covered.assign(static_cast<size_t>(slot.rows * slot.cols), false);
    slots_.emplace(info.name(), std::move(slot));
  }
  return absl::OkStatus();
}

absl::Status KernelAssembler::AddTile(const nt::v1::KernelTile& tile) {
  if (!started_) return StreamError("tile before the header");
  auto it = slots_.find(tile.name());
  if (it == slots_.end()) {
    return StreamError(absl::StrCat("tile of array '", tile.name(), "' not in the header"));
  }
  Slot& slot = it->second;
  const nt::v1::Tensor& block = tile.block();
  const int tiled = slot.info.tiled_axes();
  const int rank = slot.info.shape_size();
  const std::string where = absl::StrCat("tile of ", tile.name(), " at (", tile.row_offset(), ", ",
                                         tile.col_offset(), ") with block shape ", ShapeOf(block.shape()));
  absl::StatusOr<std::string> block_dtype = DtypeString(block.dtype());
  if (!block_dtype.ok() || *block_dtype != dtype_) {
    return StreamError(absl::StrCat(where, ": dtype differs from the header's"));
  }
  if (block.shape_size() != rank) return StreamError(absl::StrCat(where, ": wrong rank"));
  for (int k = tiled; k < rank; ++k) {
    if (block.shape(k) != slot.info.shape(k)) {
      return StreamError(absl::StrCat(where, ": trailing axes must be whole"));
    }
  }
  const int64_t br = tiled >= 1 ? block.shape(0) : 1;
  const int64_t bc = tiled == 2 ? block.shape(1) : 1;
  const int64_t r0 = tiled >= 1 ? tile.row_offset() : 0;
  const int64_t c0 = tiled == 2 ? tile.col_offset() : 0;
  if ((tiled < 1 && tile.row_offset() != 0) || (tiled < 2 && tile.col_offset() != 0) || br < 0 || bc < 0 ||
      r0 < 0 || c0 < 0 || r0 + br > slot.rows || c0 + bc > slot.cols) {
    return StreamError(absl::StrCat(where, ": outside the array of shape ", ShapeOf(slot.info.shape())));
  }
  const size_t item = NpyItemSize(dtype_);
  const size_t row_bytes = static_cast<size_t>(bc * slot.inner) * item;
  if (block.data().size() != static_cast<size_t>(br) * row_bytes) {
    return StreamError(absl::StrCat(where, ": ", block.data().size(), " data bytes"));
  }
  std::vector<int64_t> perm;
  if (tile.mirror()) {
    if (tiled != 2 || c0 + bc > slot.rows || r0 + br > slot.cols) {
      return StreamError(absl::StrCat(where, ": mirror=true but the mirrored block does not fit"));
    }
    absl::StatusOr<std::vector<int64_t>> p = MirrorPermutation(slot.info, header_.diagonal_spatial());
    if (!p.ok()) return p.status();
    perm = *std::move(p);
  }
  char* data = slot.array.bytes.data();
  const char* src = block.data().data();
  // Each block row is one contiguous run of the destination row.
  for (int64_t i = 0; i < br; ++i) {
    const size_t dst = static_cast<size_t>(((r0 + i) * slot.cols + c0) * slot.inner) * item;
    std::memcpy(data + dst, src + i * row_bytes, row_bytes);
    for (int64_t j = 0; j < bc; ++j) slot.covered[(r0 + i) * slot.cols + c0 + j] = true;
  }
  if (tile.mirror()) {
    // Cell (i, j) of the block goes to (c0 + j, r0 + i). It is read from the message, not from the
    // array, so a diagonal tile mirrored onto itself needs no copy.
    const size_t cell_bytes = static_cast<size_t>(slot.inner) * item;
    for (int64_t i = 0; i < br; ++i) {
      for (int64_t j = 0; j < bc; ++j) {
        const int64_t dst_cell = (c0 + j) * slot.cols + (r0 + i);
        const char* from = src + static_cast<size_t>(i * bc + j) * cell_bytes;
        char* to = data + static_cast<size_t>(dst_cell) * cell_bytes;
        if (perm.empty()) {
          std::memcpy(to, from, cell_bytes);
        } else {
          for (int64_t t = 0; t < slot.inner; ++t) {
            std::memcpy(to + perm[t] * item, from + t * item, item);
          }
        }
        slot.covered[dst_cell] = true;
      }
    }
  }
  ++tiles_done_;
  return absl::OkStatus();
}

absl::StatusOr<KernelResult> KernelAssembler::Finish(const nt::v1::KernelSummary& summary) {
  if (!started_) return StreamError("summary before the header");
  if (tiles_done_ != header_.num_tiles()) {
    return StreamError(
        absl::StrCat("received ", tiles_done_, " tiles, the header announced ", header_.num_tiles()));
  }
  KernelResult result;
  for (auto& [name, slot] : slots_) {
    for (size_t cell = 0; cell < slot.covered.size(); ++cell) {
      if (!slot.covered[cell]) {
        const int64_t row = static_cast<int64_t>(cell) / slot.cols;
        const int64_t col = static_cast<int64_t>(cell) % slot.cols;
        return StreamError(absl::StrCat("no tile covers ", name, "[", row,
                                        slot.info.tiled_axes() == 2 ? absl::StrCat(", ", col) : "", "]"));
      }
    }
    result.arrays.emplace(name, std::move(slot.array));
  }
  slots_.clear();
  result.header = std::move(header_);
  result.summary = summary;
  return result;
}

// ---- KernelClient ----

const char* HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    case HealthStatus::kUnknown:
      break;
  }
  return "UNKNOWN";
}

namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  // Kernel tiles and large inputs exceed gRPC's 4 MB default.
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace

KernelClient::KernelClient(ClientOptions options) : options_(std::move(options)) {
  address_ = options_.address.empty() ? DefaultServerAddress() : options_.address;
  channel_ = MakeChannel(address_);
  stub_ = nt::v1::KernelService::NewStub(channel_);
}

KernelClient::KernelClient(const std::string& address)
    : KernelClient(ClientOptions{address, absl::InfiniteDuration()}) {}

KernelClient::KernelClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : address_(options.address), options_(std::move(options)), channel_(std::move(channel)) {
  stub_ = nt::v1::KernelService::NewStub(channel_);
}

void KernelClient::SetDeadline(grpc::ClientContext* context) const {
  if (options_.timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
}

absl::StatusOr<nt::v1::DescribeResponse> KernelClient::Describe(const nt::v1::DescribeRequest& request) {
  grpc::ClientContext context;
  SetDeadline(&context);
  nt::v1::DescribeResponse response;
  grpc::Status status = stub_->Describe(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<KernelResult> KernelClient::ComputeKernel(const nt::v1::KernelRequest& request,
                                                         const ProgressCallback& progress) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext context;
  SetDeadline(&context);
  std::unique_ptr<grpc::ClientReader<nt::v1::KernelResponse>> reader =
      stub_->ComputeKernel(&context, request);
  KernelAssembler assembler;
  KernelProgress state;
  absl::Status local = absl::OkStatus();
  bool have_summary = false;
  nt::v1::KernelSummary summary;
  nt::v1::KernelResponse response;
  auto report = [&]() {
    if (!progress) return;
    state.tiles_done = assembler.tiles_done();
    state.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress(state);
  };
  while (reader->Read(&response)) {
    switch (response.payload_case()) {
      case nt::v1::KernelResponse::kHeader:
        local = assembler.Start(response.header());
        state.num_tiles = response.header().num_tiles();
        if (local.ok()) report();
        break;
      case nt::v1::KernelResponse::kTile:
        if (have_summary) {
          local = StreamError("tile after the summary");
          break;
        }
        state.bytes_received += static_cast<int64_t>(response.tile().block().data().size());
        local = assembler.AddTile(response.tile());
        if (local.ok()) report();
        break;
      case nt::v1::KernelResponse::kSummary:
        if (have_summary) local = StreamError("second summary");
        have_summary = true;
        summary = response.summary();
        break;
      default:
        local = StreamError("empty message");
        break;
    }
    if (!local.ok()) {
      // Stop the server's work; Finish() then reports CANCELLED, which the local error explains.
      context.TryCancel();
      while (reader->Read(&response)) {
      }
      reader->Finish();
      return local;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!have_summary) return StreamError("the stream ended without a summary");
  return assembler.Finish(summary);
}

absl::StatusOr<HealthStatus> KernelClient::Health(const std::string& service) {
  // grpc.health.v1.HealthCheckRequest{string service = 1} encoded by hand: the C++ libraries ship no
  // generated health messages, and a private copy could clash with one linked in elsewhere.
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back(0x0a);
    for (uint64_t n = service.size();; n >>= 7) {
      if (n < 0x80) {
        request_bytes.push_back(static_cast<char>(n));
        break;
      }
      request_bytes.push_back(static_cast<char>((n & 0x7f) | 0x80));
    }
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  // A health probe should not hang on an unreachable server.
  const absl::Duration timeout =
      options_.timeout == absl::InfiniteDuration() ? absl::Seconds(10) : options_.timeout;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::GenericStub stub(channel_);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return FromGrpcStatus(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("cannot read the health response");
  std::string bytes;
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse{ServingStatus status = 1}: find field 1 (varint); absent means UNKNOWN.
  size_t pos = 0;
  auto varint = [&bytes, &pos]() {
    uint64_t v = 0;
    for (int shift = 0; pos < bytes.size() && shift < 64; shift += 7) {
      const auto byte = static_cast<unsigned char>(bytes[pos++]);
      v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) break;
    }
    return v;
  };
  uint64_t value = 0;
  while (pos < bytes.size()) {
    const uint64_t key = varint();
    switch (key & 7) {
      case 0: {
        const uint64_t v = varint();
        if ((key >> 3) == 1) value = v;
        break;
      }
      case 1:
        pos += 8;
        break;
      case 2:
        pos += varint();
        break;
      case 5:
        pos += 4;
        break;
      default:
        return absl::InternalError("malformed health response");
    }
  }
  if (value > 3) return HealthStatus::kUnknown;
  return static_cast<HealthStatus>(value);
}

}  // namespace nt::client
