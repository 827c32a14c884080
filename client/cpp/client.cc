#include "client/cpp/client.h"

#include <arpa/inet.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

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

struct KernelAssembler::Slot {
  nt::v1::ArrayInfo info;
  NpyArray array;                             // In memory,
  std::unique_ptr<NpyFileWriter> file;        // or in a .npy file.
  int64_t rows = 1;                           // Extent of tiled axis 0 (1 when there is none).
  int64_t cols = 1;                           // Extent of tiled axis 1 (1 unless tiled_axes == 2).
  int64_t inner = 1;                          // Elements per batch cell (product of the trailing axes).
  absl::StatusOr<std::vector<int64_t>> perm;  // Mirror permutation of a cell (tiled_axes == 2).
  // Coverage, in squares of grain x grain batch cells (the header's tile size while every tile is
  // aligned to it, else 1), so that kernels larger than memory need no bit per cell.
  int64_t grain = 1;
  int64_t grid_rows = 1, grid_cols = 1;
  std::vector<bool> covered;
};

KernelAssembler::KernelAssembler() = default;
KernelAssembler::~KernelAssembler() = default;

void KernelAssembler::WriteToFiles(std::string path_template) { path_template_ = std::move(path_template); }

int64_t KernelAssembler::tiles_done() const { return tiles_done_.load(); }

int64_t KernelAssembler::num_tiles() const {
  std::lock_guard<std::mutex> lock(mu_);
  return header_.num_tiles();
}

std::string KernelFilePath(const std::string& path_template, const std::string& name) {
  const size_t at = path_template.find("{name}");
  if (at != std::string::npos) {
    std::string path = path_template;
    for (size_t p = at; p != std::string::npos; p = path.find("{name}", p + name.size())) {
      path.replace(p, 6, name);
    }
    return path;
  }
  std::string stem = path_template;
  if (absl::EndsWith(stem, ".npy")) stem.resize(stem.size() - 4);
  return absl::StrCat(stem, ".", name, ".npy");
}

namespace {

bool SameArrays(const nt::v1::KernelHeader& a, const nt::v1::KernelHeader& b) {
  if (a.arrays_size() != b.arrays_size()) return false;
  for (int k = 0; k < a.arrays_size(); ++k) {
    const nt::v1::ArrayInfo &x = a.arrays(k), &y = b.arrays(k);
    if (x.name() != y.name() || x.tiled_axes() != y.tiled_axes() ||
        !std::equal(x.shape().begin(), x.shape().end(), y.shape().begin(), y.shape().end())) {
      return false;
    }
  }
  const auto dtype = [](nt::v1::DType d) { return d == nt::v1::DTYPE_UNSPECIFIED ? nt::v1::FLOAT64 : d; };
  return dtype(a.dtype()) == dtype(b.dtype()) && a.diagonal_spatial() == b.diagonal_spatial() &&
         a.tile_size() == b.tile_size() && a.total_tiles() == b.total_tiles();
}

}  // namespace

absl::Status KernelAssembler::Start(const nt::v1::KernelHeader& header) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) {
    if (!SameArrays(header, header_)) {
      return StreamError("the streams of one kernel disagree on its arrays, dtype, layout or tiles");
    }
    ++streams_;
    ranges_.emplace_back(header.tile_begin(), header.tile_end());
    return absl::OkStatus();
  }
  return StartLocked(header);
}

absl::Status KernelAssembler::StartLocked(const nt::v1::KernelHeader& header) {
  started_ = true;
  streams_ = 1;
  header_ = header;
  ranges_.emplace_back(header.tile_begin(), header.tile_end());
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
    if (info.name().empty() || info.name().find('/') != std::string::npos) {
      return StreamError(absl::StrCat("array name '", info.name(), "'"));
    }
    auto slot = std::make_unique<Slot>();
    slot->info = info;
    const std::vector<int64_t> shape(info.shape().begin(), info.shape().end());
    if (path_template_.empty()) {
      slot->array = NpyArray::Zeros(shape, dtype_);
    } else {
      absl::StatusOr<std::unique_ptr<NpyFileWriter>> file =
          NpyFileWriter::Create(KernelFilePath(path_template_, info.name()), shape, dtype_);
      if (!file.ok()) return file.status();
      slot->file = *std::move(file);
    }
    if (tiled >= 1) slot->rows = info.shape(0);
    if (tiled == 2) slot->cols = info.shape(1);
    for (int k = tiled; k < rank; ++k) slot->inner *= info.shape(k);
    slot->perm = tiled == 2 ? MirrorPermutation(info, header.diagonal_spatial()) : std::vector<int64_t>();
    slot->grain = header.tile_size() > 0 ? header.tile_size() : 1;
    slot->grid_rows = (slot->rows + slot->grain - 1) / slot->grain;
    slot->grid_cols = (slot->cols + slot->grain - 1) / slot->grain;
    slot->covered.assign(static_cast<size_t>(slot->grid_rows * slot->grid_cols), false);
    slots_.emplace(info.name(), std::move(slot));
  }
  return absl::OkStatus();
}

absl::Status KernelAssembler::Write(Slot& slot, int64_t byte_offset, const char* src, size_t size) {
  if (slot.file) return slot.file->Write(byte_offset, src, size);
  std::memcpy(slot.array.bytes.data() + byte_offset, src, size);
  return absl::OkStatus();
}

// Marks batch cells [r0, r0 + nr) x [c0, c0 + nc) written; mu_ held.
void KernelAssembler::Cover(Slot& slot, int64_t r0, int64_t c0, int64_t nr, int64_t nc) {
  if (nr <= 0 || nc <= 0) return;
  int64_t g = slot.grain;
  const auto aligned = [g](int64_t start, int64_t n, int64_t extent) {
    return start % g == 0 && (n % g == 0 || start + n == extent);
  };
  if (g > 1 && !(aligned(r0, nr, slot.rows) && aligned(c0, nc, slot.cols))) {
    // A tile off the grid: fall back to one bit per batch cell.
    std::vector<bool> fine(static_cast<size_t>(slot.rows * slot.cols), false);
    for (int64_t i = 0; i < slot.rows; ++i) {
      for (int64_t j = 0; j < slot.cols; ++j) {
        fine[i * slot.cols + j] = slot.covered[(i / g) * slot.grid_cols + j / g];
      }
    }
    slot.covered = std::move(fine);
    slot.grain = g = 1;
    slot.grid_rows = slot.rows;
    slot.grid_cols = slot.cols;
  }
  for (int64_t i = r0 / g; i < (r0 + nr + g - 1) / g; ++i) {
    for (int64_t j = c0 / g; j < (c0 + nc + g - 1) / g; ++j) slot.covered[i * slot.grid_cols + j] = true;
  }
}

absl::Status KernelAssembler::AddTile(const nt::v1::KernelTile& tile) {
  Slot* found = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return StreamError("tile before the header");
    auto it = slots_.find(tile.name());
    if (it == slots_.end()) {
      return StreamError(absl::StrCat("tile of array '", tile.name(), "' not in the header"));
    }
    found = it->second.get();
  }
  // The slot's layout is fixed after the first Start(); only its coverage changes (under mu_).
  Slot& slot = *found;
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
  const size_t cell_bytes = static_cast<size_t>(slot.inner) * item;
  const size_t row_bytes = static_cast<size_t>(bc) * cell_bytes;
  if (block.data().size() != static_cast<size_t>(br) * row_bytes) {
    return StreamError(absl::StrCat(where, ": ", block.data().size(), " data bytes"));
  }
  if (tile.mirror()) {
    if (tiled != 2 || c0 + bc > slot.rows || r0 + br > slot.cols) {
      return StreamError(absl::StrCat(where, ": mirror=true but the mirrored block does not fit"));
    }
    if (!slot.perm.ok()) return slot.perm.status();
  }
  const char* src = tile.block().data().data();
  // Each block row is one contiguous run of the destination row.
  for (int64_t i = 0; i < br; ++i) {
    const int64_t dst = ((r0 + i) * slot.cols + c0) * static_cast<int64_t>(cell_bytes);
    absl::Status s = Write(slot, dst, src + i * row_bytes, row_bytes);
    if (!s.ok()) return s;
  }
  if (tile.mirror()) {
    // Cell (i, j) of the block goes to (c0 + j, r0 + i), its trailing axes permuted: block column j
    // becomes one contiguous run of destination row c0 + j. It is read from the message, not from the
    // array, so a diagonal tile mirrored onto itself needs no copy.
    const std::vector<int64_t>& perm = *slot.perm;
    std::vector<char> run(static_cast<size_t>(br) * cell_bytes);
    for (int64_t j = 0; j < bc; ++j) {
      for (int64_t i = 0; i < br; ++i) {
        const char* from = src + static_cast<size_t>(i * bc + j) * cell_bytes;
        char* to = run.data() + static_cast<size_t>(i) * cell_bytes;
        if (perm.empty()) {
          std::memcpy(to, from, cell_bytes);
        } else {
          for (int64_t t = 0; t < slot.inner; ++t) std::memcpy(to + perm[t] * item, from + t * item, item);
        }
      }
      const int64_t dst = ((c0 + j) * slot.cols + r0) * static_cast<int64_t>(cell_bytes);
      absl::Status s = Write(slot, dst, run.data(), run.size());
      if (!s.ok()) return s;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    Cover(slot, r0, c0, br, bc);
    if (tile.mirror()) Cover(slot, c0, r0, bc, br);
  }
  ++tiles_done_;
  return absl::OkStatus();
}

absl::StatusOr<KernelResult> KernelAssembler::Finish(const nt::v1::KernelSummary& summary) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!started_) return StreamError("summary before the header");
  if (streams_ == 1 && tiles_done_ != header_.num_tiles()) {
    return StreamError(
        absl::StrCat("received ", tiles_done_.load(), " tiles, the header announced ", header_.num_tiles()));
  }
  // Whether the tile ranges of the headers cover the whole kernel (servers without ranges send none).
  bool whole = header_.total_tiles() == 0;
  if (!whole) {
    std::vector<std::pair<int64_t, int64_t>> r = ranges_;
    std::sort(r.begin(), r.end());
    int64_t reached = 0;
    for (const auto& [b, e] : r) {
      if (b > reached) break;
      reached = std::max(reached, e);
    }
    whole = reached >= header_.total_tiles();
  }
  KernelResult result;
  for (auto& [name, slot] : slots_) {
    for (size_t cell = 0; whole && cell < slot->covered.size(); ++cell) {
      if (!slot->covered[cell]) {
        const int64_t row = static_cast<int64_t>(cell) / slot->grid_cols * slot->grain;
        const int64_t col = static_cast<int64_t>(cell) % slot->grid_cols * slot->grain;
        return StreamError(absl::StrCat("no tile covers ", name, "[", row,
                                        slot->info.tiled_axes() == 2 ? absl::StrCat(", ", col) : "", "]"));
      }
    }
  }
  for (auto& [name, slot] : slots_) {
    if (slot->file) {
      absl::Status s = slot->file->Close();
      if (!s.ok()) return s;
      result.files.emplace(name, slot->file->path());
    } else {
      result.arrays.emplace(name, std::move(slot->array));
    }
  }
  slots_.clear();
  result.header = std::move(header_);
  result.summary = summary;
  result.stats.ranges = static_cast<int64_t>(ranges_.size());
  return result;
}

// ---- Addresses ----

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

absl::StatusOr<std::vector<ResolvedAddress>> ResolveAddresses(const std::string& spec) {
  std::vector<ResolvedAddress> out;
  for (absl::string_view raw : absl::StrSplit(spec, ',')) {
    const absl::string_view item = absl::StripAsciiWhitespace(raw);
    if (item.empty()) continue;
    if (!absl::StartsWith(item, "dns:")) {
      out.push_back({std::string(item), ""});
      continue;
    }
    absl::string_view target = item.substr(4);
    if (absl::StartsWith(target, "///")) {
      target.remove_prefix(3);
    } else if (absl::StartsWith(target, "//")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "address item '", item, "': DNS authorities are not supported; expected dns:///name:port"));
    }
    const size_t colon = target.rfind(':');
    absl::string_view host = colon == absl::string_view::npos ? "" : target.substr(0, colon);
    const absl::string_view port = colon == absl::string_view::npos ? "" : target.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty() || port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit)) {
      return absl::InvalidArgumentError(absl::StrCat("address item '", item, "': expected dns:///name:port"));
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const std::string host_s(host), port_s(port);
    const int rc = getaddrinfo(host_s.c_str(), port_s.c_str(), &hints, &found);
    if (rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot resolve '", host, "' (", item, "): ", gai_strerror(rc)));
    }
    std::vector<std::string> addresses;
    for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
      char ip[INET6_ADDRSTRLEN] = {0};
      std::string address;
      if (a->ai_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
        address = absl::StrCat(ip, ":", port);
      } else if (a->ai_family == AF_INET6) {
        inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr, ip, sizeof(ip));
        address = absl::StrCat("[", ip, "]:", port);
      } else {
        continue;
      }
      if (std::find(addresses.begin(), addresses.end(), address) == addresses.end())
        addresses.push_back(address);
    }
    freeaddrinfo(found);
    if (addresses.empty())
      return absl::UnavailableError(absl::StrCat("'", host, "' has no addresses (", item, ")"));
    std::sort(addresses.begin(), addresses.end());
    for (std::string& a : addresses) out.push_back({std::move(a), host_s});
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("no server address in '", spec, "'"));
  return out;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream s;
  s << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  return s.str();
}

// ---- KernelClient ----

struct KernelClient::Endpoint {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<nt::v1::KernelService::Stub> stub;
};

namespace {

bool UsesTls(const ClientOptions& o) {
  return o.tls || !o.root_certificates_pem.empty() || !o.private_key_pem.empty() ||
         !o.certificate_chain_pem.empty();
}

std::shared_ptr<grpc::Channel> MakeChannel(const ResolvedAddress& address, const ClientOptions& options) {
  grpc::ChannelArguments args;
  // Kernel tiles and large inputs exceed gRPC's 4 MB default.
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Keep separate connections to separate endpoints even when they resolve alike.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (!UsesTls(options)) {
    return grpc::CreateCustomChannel(address.address, grpc::InsecureChannelCredentials(), args);
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = options.root_certificates_pem;
  ssl.pem_private_key = options.private_key_pem;
  ssl.pem_cert_chain = options.certificate_chain_pem;
  const std::string& name = !options.tls_server_name.empty() ? options.tls_server_name : address.tls_name;
  if (!name.empty()) args.SetSslTargetNameOverride(name);
  return grpc::CreateCustomChannel(address.address, grpc::SslCredentials(ssl), args);
}

bool Retryable(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

absl::Status WithContext(const absl::Status& s, absl::string_view prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

// Reads one ComputeKernel stream into `assembler`: the header (handed to on_header, which may refuse
// it), every tile (then on_tile), the summary. Checks the stream's own tile count. A local error cancels
// the call.
absl::Status ReadKernelStream(nt::v1::KernelService::Stub* stub, grpc::ClientContext* context,
                              const nt::v1::KernelRequest& request, KernelAssembler* assembler,
                              const std::function<absl::Status(const nt::v1::KernelHeader&)>& on_header,
                              const std::function<void(const nt::v1::KernelTile&)>& on_tile,
                              nt::v1::KernelHeader* header_out, nt::v1::KernelSummary* summary_out) {
  std::unique_ptr<grpc::ClientReader<nt::v1::KernelResponse>> reader = stub->ComputeKernel(context, request);
  absl::Status local = absl::OkStatus();
  bool have_header = false, have_summary = false;
  int64_t tiles = 0;
  nt::v1::KernelResponse response;
  while (reader->Read(&response)) {
    switch (response.payload_case()) {
      case nt::v1::KernelResponse::kHeader:
        if (have_header) {
          local = StreamError("second header");
          break;
        }
        have_header = true;
        *header_out = response.header();
        local = assembler->Start(response.header());
        if (local.ok() && on_header) local = on_header(response.header());
        break;
      case nt::v1::KernelResponse::kTile:
        if (!have_header) {
          local = StreamError("tile before the header");
        } else if (have_summary) {
          local = StreamError("tile after the summary");
        } else {
          local = assembler->AddTile(response.tile());
          ++tiles;
          if (local.ok() && on_tile) on_tile(response.tile());
        }
        break;
      case nt::v1::KernelResponse::kSummary:
        if (have_summary) local = StreamError("second summary");
        have_summary = true;
        *summary_out = response.summary();
        break;
      default:
        local = StreamError("empty message");
        break;
    }
    if (!local.ok()) {
      // Stop the server's work; Finish() then reports CANCELLED, which the local error explains.
      context->TryCancel();
      while (reader->Read(&response)) {
      }
      reader->Finish();
      return local;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!have_header) return StreamError("the stream ended without a header");
  if (!have_summary) return StreamError("the stream ended without a summary");
  if (tiles != header_out->num_tiles()) {
    return StreamError(
        absl::StrCat("received ", tiles, " tiles, the header announced ", header_out->num_tiles()));
  }
  return absl::OkStatus();
}

// The request's input tensors, by position: x1, x2, pattern1, pattern2.
constexpr int kNumInputs = 4;
bool HasInput(const nt::v1::KernelRequest& r, int k) {
  switch (k) {
    case 0:
      return r.has_x1();
    case 1:
      return r.has_x2();
    case 2:
      return r.has_pattern1();
    default:
      return r.has_pattern2();
  }
}
const nt::v1::Tensor& Input(const nt::v1::KernelRequest& r, int k) {
  return k == 0 ? r.x1() : k == 1 ? r.x2() : k == 2 ? r.pattern1() : r.pattern2();
}
nt::v1::Tensor* MutableInput(nt::v1::KernelRequest* r, int k) {
  return k == 0   ? r->mutable_x1()
         : k == 1 ? r->mutable_x2()
         : k == 2 ? r->mutable_pattern1()
                  : r->mutable_pattern2();
}

}  // namespace

KernelClient::KernelClient(ClientOptions options) : options_(std::move(options)) {
  address_ = options_.address.empty() ? DefaultServerAddress() : options_.address;
  if (options_.token.empty()) {
    if (const char* env = std::getenv("NT_TOKEN"); env != nullptr) options_.token = env;
  }
  if (options_.root_certificates_pem.empty()) {
    if (const char* env = std::getenv("NT_TLS_CA"); env != nullptr && *env != '\0') {
      absl::StatusOr<std::string> pem = ReadTextFile(env);
      if (!pem.ok()) {
        init_status_ = WithContext(pem.status(), "$NT_TLS_CA: ");
        return;
      }
      options_.root_certificates_pem = *std::move(pem);
    }
  }
  absl::StatusOr<std::vector<ResolvedAddress>> resolved = ResolveAddresses(address_);
  if (!resolved.ok()) {
    init_status_ = resolved.status();
    return;
  }
  for (const ResolvedAddress& a : *resolved) {
    auto e = std::make_unique<Endpoint>();
    e->address = a.address;
    e->channel = MakeChannel(a, options_);
    e->stub = nt::v1::KernelService::NewStub(e->channel);
    endpoints_.push_back(std::move(e));
  }
}

KernelClient::KernelClient(const std::string& address)
    : KernelClient(ClientOptions{address, absl::InfiniteDuration()}) {}

KernelClient::KernelClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : address_(options.address), options_(std::move(options)) {
  if (options_.token.empty()) {
    if (const char* env = std::getenv("NT_TOKEN"); env != nullptr) options_.token = env;
  }
  auto e = std::make_unique<Endpoint>();
  e->address = address_;
  e->channel = std::move(channel);
  e->stub = nt::v1::KernelService::NewStub(e->channel);
  endpoints_.push_back(std::move(e));
}

KernelClient::~KernelClient() = default;

std::vector<std::string> KernelClient::endpoints() const {
  std::vector<std::string> out;
  for (const auto& e : endpoints_) out.push_back(e->address);
  return out;
}

void KernelClient::Prepare(grpc::ClientContext* context) const {
  if (options_.timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  }
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
}

absl::StatusOr<nt::v1::DescribeResponse> KernelClient::Describe(const nt::v1::DescribeRequest& request) {
  if (!init_status_.ok()) return init_status_;
  absl::Status last;
  for (const auto& e : endpoints_) {
    grpc::ClientContext context;
    Prepare(&context);
    nt::v1::DescribeResponse response;
    grpc::Status status = e->stub->Describe(&context, request, &response);
    if (status.ok()) return response;
    last = FromGrpcStatus(status);
    if (last.code() != absl::StatusCode::kUnavailable) break;
  }
  return last;
}

absl::StatusOr<nt::v1::Tensor> KernelClient::Upload(const NpyArray& array, int endpoint) {
  absl::StatusOr<nt::v1::Tensor> tensor = TensorFromNpy(array);
  if (!tensor.ok()) return tensor.status();
  return Upload(*tensor, endpoint);
}

absl::StatusOr<nt::v1::Tensor> KernelClient::Upload(const nt::v1::Tensor& tensor, int endpoint) {
  if (!init_status_.ok()) return init_status_;
  if (endpoint < 0 || endpoint >= static_cast<int>(endpoints_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no endpoint ", endpoint, " (", endpoints_.size(), " endpoints)"));
  }
  if (!tensor.handle().empty()) {
    return absl::InvalidArgumentError("the tensor is a handle already (Tensor.handle)");
  }
  grpc::ClientContext context;
  Prepare(&context);
  nt::v1::UploadTensorResponse response;
  std::unique_ptr<grpc::ClientWriter<nt::v1::TensorChunk>> writer =
      endpoints_[endpoint]->stub->UploadTensor(&context, &response);
  const std::string& data = tensor.data();
  const size_t chunk = static_cast<size_t>(kUploadChunkBytes);
  nt::v1::TensorChunk first;
  *first.mutable_shape() = tensor.shape();
  first.set_dtype(tensor.dtype());
  first.set_data(data.data(), std::min(chunk, data.size()));
  bool ok = writer->Write(first);
  for (size_t offset = chunk; ok && offset < data.size(); offset += chunk) {
    nt::v1::TensorChunk c;
    c.set_data(data.data() + offset, std::min(chunk, data.size() - offset));
    c.set_offset(static_cast<int64_t>(offset));
    ok = writer->Write(c);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  nt::v1::Tensor out;
  out.set_handle(response.handle());
  return out;
}

absl::StatusOr<bool> KernelClient::Release(const std::string& handle, int endpoint) {
  if (!init_status_.ok()) return init_status_;
  if (endpoint < 0 || endpoint >= static_cast<int>(endpoints_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no endpoint ", endpoint, " (", endpoints_.size(), " endpoints)"));
  }
  grpc::ClientContext context;
  Prepare(&context);
  // Releasing is housekeeping: never wait long on it.
  const absl::Duration timeout = std::min(options_.timeout, absl::Seconds(10));
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  nt::v1::ReleaseTensorRequest request;
  request.set_handle(handle);
  nt::v1::ReleaseTensorResponse response;
  grpc::Status status = endpoints_[endpoint]->stub->ReleaseTensor(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.released();
}

absl::StatusOr<KernelResult> KernelClient::ComputeKernel(const nt::v1::KernelRequest& request,
                                                         const ProgressCallback& progress) {
  return Compute(request, "", progress);
}

absl::StatusOr<KernelResult> KernelClient::ComputeKernelToFiles(const nt::v1::KernelRequest& request,
                                                                const std::string& path_template,
                                                                const ProgressCallback& progress) {
  if (path_template.empty()) return absl::InvalidArgumentError("ComputeKernelToFiles: empty path template");
  return Compute(request, path_template, progress);
}

absl::StatusOr<KernelResult> KernelClient::ComputeOneStream(const nt::v1::KernelRequest& request,
                                                            const std::string& path_template,
                                                            const ProgressCallback& progress) {
  const auto start = std::chrono::steady_clock::now();
  const Endpoint& endpoint = *endpoints_[0];
  grpc::ClientContext context;
  Prepare(&context);
  KernelAssembler assembler;
  if (!path_template.empty()) assembler.WriteToFiles(path_template);
  KernelProgress state;
  state.endpoint = endpoint.address;
  auto report = [&]() {
    if (!progress) return;
    state.tiles_done = assembler.tiles_done();
    state.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress(state);
  };
  nt::v1::KernelHeader header;
  nt::v1::KernelSummary summary;
  absl::Status s = ReadKernelStream(
      endpoint.stub.get(), &context, request, &assembler,
      [&](const nt::v1::KernelHeader& h) {
        state.num_tiles = h.num_tiles();
        report();
        return absl::OkStatus();
      },
      [&](const nt::v1::KernelTile& t) {
        state.bytes_received += static_cast<int64_t>(t.block().data().size());
        report();
      },
      &header, &summary);
  if (!s.ok()) return s;
  absl::StatusOr<KernelResult> result = assembler.Finish(summary);
  if (result.ok()) result->stats.tiles[endpoint.address] = assembler.tiles_done();
  return result;
}

// One kernel over every endpoint (see ComputeKernel): tile ranges in a queue, one worker per endpoint.
class KernelClient::Distributor {
 public:
  Distributor(KernelClient* client, const ProgressCallback& progress, KernelAssembler* assembler)
      : client_(client),
        progress_(progress),
        assembler_(assembler),
        start_(std::chrono::steady_clock::now()) {}

  absl::StatusOr<KernelResult> Run(const nt::v1::KernelRequest& request,
                                   const nt::v1::DescribeResponse& plan) {
    const std::vector<std::unique_ptr<Endpoint>>& endpoints = client_->endpoints_;
    total_ = plan.num_tiles();
    base_ = request;
    base_.set_tile_size(plan.tile_size());  // One tile grid on every server.
    base_.clear_tile_begin();
    base_.clear_tile_end();
    // When the whole request is too large, every input but tiny ones goes by handle.
    const int64_t threshold = client_->options_.upload_threshold_bytes;
    const int64_t cutoff = static_cast<int64_t>(request.ByteSizeLong()) <= threshold
                               ? threshold
                               : std::min<int64_t>(threshold, kInlineTensorBytes);
    for (int k = 0; k < kNumInputs; ++k) {
      if (!HasInput(base_, k) || static_cast<int64_t>(Input(base_, k).ByteSizeLong()) <= cutoff) continue;
      large_.emplace_back(k, std::move(*MutableInput(&base_, k)));
      MutableInput(&base_, k)->Clear();
    }
    const int64_t n_ranges =
        std::max<int64_t>(1, std::min<int64_t>(total_, int64_t{client_->options_.ranges_per_endpoint} *
                                                           static_cast<int64_t>(endpoints.size())));
    for (int64_t i = 0; i < n_ranges; ++i) {
      const int64_t b = i * total_ / n_ranges, e = (i + 1) * total_ / n_ranges;
      if (e > b) queue_.emplace_back(b, e);
    }
    pending_ = static_cast<int64_t>(queue_.size());
    stats_.ranges = pending_;
    for (const auto& e : endpoints) stats_.tiles[e->address] = 0;
    live_ = static_cast<int>(endpoints.size());
    active_.assign(endpoints.size(), nullptr);
    std::vector<std::thread> threads;
    for (size_t i = 0; i < endpoints.size(); ++i) threads.emplace_back([this, i] { Worker(i); });
    for (std::thread& t : threads) t.join();
    for (const auto& [address, n] : stats_tiles_) stats_.tiles[address] = n;
    if (!error_.ok()) return error_;
    absl::StatusOr<KernelResult> result = assembler_->Finish(summary_);
    if (!result.ok()) return result.status();
    result->header.set_num_tiles(messages_);
    result->header.set_tile_begin(0);
    result->header.set_tile_end(total_);
    result->stats = stats_;
    return result;
  }

 private:
  // Runs range [begin, end) on endpoint i.
  absl::Status RunRange(size_t i, std::pair<int64_t, int64_t> range, std::vector<nt::v1::Tensor>* handles) {
    const Endpoint& endpoint = *client_->endpoints_[i];
    if (!large_.empty() && handles->empty()) {
      for (const auto& [k, tensor] : large_) {
        absl::StatusOr<nt::v1::Tensor> h = client_->Upload(tensor, static_cast<int>(i));
        if (!h.ok()) {
          for (const nt::v1::Tensor& done : *handles)
            client_->Release(done.handle(), static_cast<int>(i)).IgnoreError();
          handles->clear();
          return WithContext(h.status(), "UploadTensor: ");
        }
        handles->push_back(*std::move(h));
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.uploads;
      }
    }
    nt::v1::KernelRequest request = base_;
    request.set_tile_begin(range.first);
    request.set_tile_end(range.second);
    for (size_t u = 0; u < large_.size(); ++u) *MutableInput(&request, large_[u].first) = (*handles)[u];
    grpc::ClientContext context;
    client_->Prepare(&context);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (done_) return absl::CancelledError("the kernel computation ended");
      active_[i] = &context;
    }
    int64_t attempt_tiles = 0;
    nt::v1::KernelHeader header;
    nt::v1::KernelSummary summary;
    absl::Status s = ReadKernelStream(
        endpoint.stub.get(), &context, request, assembler_,
        [&](const nt::v1::KernelHeader& h) {
          if (h.total_tiles() != total_ || h.tile_size() != base_.tile_size() ||
              h.tile_begin() != range.first || h.tile_end() != range.second) {
            return StreamError(absl::StrCat(
                "the server at ", endpoint.address, " answered tiles [", h.tile_begin(), ", ", h.tile_end(),
                ") of ", h.total_tiles(), " (tile_size ", h.tile_size(), ") for [", range.first, ", ",
                range.second, ") of ", total_, " (tile_size ", base_.tile_size(), ")"));
          }
          std::lock_guard<std::mutex> lock(progress_mu_);
          range_messages_[range.first] = {range.second - range.first, h.num_tiles()};
          return absl::OkStatus();
        },
        [&](const nt::v1::KernelTile& t) {
          std::lock_guard<std::mutex> lock(progress_mu_);
          ++attempt_tiles;
          ++tiles_done_;
          ++stats_tiles_[endpoint.address];
          bytes_ += static_cast<int64_t>(t.block().data().size());
          Report(endpoint.address);
        },
        &header, &summary);
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_[i] = nullptr;
    }
    std::lock_guard<std::mutex> lock(progress_mu_);
    if (!s.ok()) {
      tiles_done_ -= attempt_tiles;  // The range starts again from zero elsewhere.
      return WithContext(s, absl::StrCat(endpoint.address, ": "));
    }
    messages_ += header.num_tiles();
    if (!have_summary_) {
      summary_ = summary;
      have_summary_ = true;
    } else {
      summary_.set_num_tiles(summary_.num_tiles() + summary.num_tiles());
      summary_.set_compute_seconds(summary_.compute_seconds() + summary.compute_seconds());
    }
    return absl::OkStatus();
  }

  // progress_mu_ held.
  void Report(const std::string& address) {
    if (!progress_) return;
    KernelProgress p;
    p.tiles_done = tiles_done_;
    int64_t known_tiles = 0, known_messages = 0;
    for (const auto& [begin, counts] : range_messages_) {
      known_tiles += counts.first;
      known_messages += counts.second;
    }
    p.num_tiles = known_messages;
    if (known_tiles > 0 && known_tiles < total_) {
      p.num_tiles +=
          static_cast<int64_t>(std::llround(double(total_ - known_tiles) * known_messages / known_tiles));
    }
    p.bytes_received = bytes_;
    p.elapsed_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    p.endpoint = address;
    p.retries = retries_.load();
    progress_(p);
  }

  void Fail(const absl::Status& s) {  // mu_ held.
    if (error_.ok()) error_ = s;
    done_ = true;
    for (grpc::ClientContext* c : active_) {
      if (c != nullptr) c->TryCancel();
    }
    cv_.notify_all();
  }

  void Worker(size_t i) {
    const std::string& address = client_->endpoints_[i]->address;
    std::vector<nt::v1::Tensor> handles;  // Of large_ on this endpoint, once uploaded.
    int failures = 0, lost_handles = 0;
    while (true) {
      std::pair<int64_t, int64_t> range;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return done_ || !queue_.empty(); });
        if (done_) break;
        range = queue_.front();
        queue_.pop_front();
      }
      const absl::Status s = RunRange(i, range, &handles);
      std::unique_lock<std::mutex> lock(mu_);
      if (s.ok()) {
        failures = lost_handles = 0;
        if (--pending_ == 0) {
          done_ = true;
          cv_.notify_all();
        }
        continue;
      }
      if (done_) break;  // Cancelled because the call failed elsewhere.
      if (s.code() == absl::StatusCode::kNotFound && absl::StrContains(s.message(), "handle") &&
          !large_.empty() && ++lost_handles <= 3) {
        handles.clear();  // Evicted or expired upload: upload again.
        queue_.push_front(range);
        cv_.notify_all();
        continue;
      }
      if (!Retryable(s.code())) {
        Fail(s);
        break;
      }
      ++failures;
      ++stats_.retries;
      ++retries_;
      queue_.push_back(range);  // Another endpoint (or this one, later) takes the range.
      cv_.notify_all();
      if (s.code() == absl::StatusCode::kUnavailable || failures >= kMaxConsecutiveFailures) {
        stats_.given_up.push_back(address);
        if (--live_ == 0) {
          Fail(absl::Status(s.code(), absl::StrCat("every endpoint failed (", client_->endpoints_.size(),
                                                   "); the last: ", s.message())));
        }
        break;
      }
      // Busy: back off before the next range.
      const double backoff = std::min(2.0, 0.1 * std::pow(2.0, failures));
      cv_.wait_for(lock, std::chrono::duration<double>(backoff), [&] { return done_; });
    }
    for (const nt::v1::Tensor& h : handles) client_->Release(h.handle(), static_cast<int>(i)).IgnoreError();
  }

  static constexpr int kMaxConsecutiveFailures = 3;

  KernelClient* client_;
  const ProgressCallback& progress_;
  KernelAssembler* assembler_;
  const std::chrono::steady_clock::time_point start_;
  int64_t total_ = 0;
  nt::v1::KernelRequest base_;
  std::vector<std::pair<int, nt::v1::Tensor>> large_;  // Inputs sent by handle: (position, tensor).

  std::mutex mu_;  // Queue, workers and stats_.
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, int64_t>> queue_;
  int64_t pending_ = 0;
  int live_ = 0;
  bool done_ = false;
  absl::Status error_;
  std::vector<grpc::ClientContext*> active_;
  DistributionStats stats_;
  std::atomic<int64_t> retries_{0};

  std::mutex progress_mu_;  // Progress, tile counts and the merged summary; serialises progress_.
  int64_t tiles_done_ = 0, bytes_ = 0, messages_ = 0;
  std::map<std::string, int64_t> stats_tiles_;
  std::map<int64_t, std::pair<int64_t, int64_t>> range_messages_;  // begin -> (tiles, messages).
  bool have_summary_ = false;
  nt::v1::KernelSummary summary_;
};

absl::StatusOr<KernelResult> KernelClient::Compute(const nt::v1::KernelRequest& request,
                                                   const std::string& path_template,
                                                   const ProgressCallback& progress) {
  if (!init_status_.ok()) return init_status_;
  bool handles = false;
  for (int k = 0; k < kNumInputs; ++k) handles |= HasInput(request, k) && !Input(request, k).handle().empty();
  // A caller's own tile range or uploads (which live on one server) keep to one stream.
  const bool one_stream = handles || request.tile_begin() != 0 || request.tile_end() != 0 ||
                          (endpoints_.size() == 1 &&
                           static_cast<int64_t>(request.ByteSizeLong()) <= options_.upload_threshold_bytes);
  if (one_stream) return ComputeOneStream(request, path_template, progress);

  nt::v1::DescribeRequest describe;
  *describe.mutable_architecture() = request.architecture();
  *describe.mutable_get() = request.get();
  describe.set_tile_size(request.tile_size());
  *describe.mutable_x1_shape() = request.x1().shape();
  if (request.has_x2()) *describe.mutable_x2_shape() = request.x2().shape();
  if (request.has_diagonal_batch()) describe.set_diagonal_batch(request.diagonal_batch());
  if (request.has_diagonal_spatial()) describe.set_diagonal_spatial(request.diagonal_spatial());
  absl::StatusOr<nt::v1::DescribeResponse> plan = Describe(describe);
  if (!plan.ok()) return plan.status();
  if (plan->num_tiles() <= 0) return ComputeOneStream(request, path_template, progress);
  KernelAssembler assembler;
  if (!path_template.empty()) assembler.WriteToFiles(path_template);
  Distributor distributor(this, progress, &assembler);
  return distributor.Run(request, *plan);
}

absl::StatusOr<HealthStatus> KernelClient::Health(const std::string& service, int endpoint) {
  if (!init_status_.ok()) return init_status_;
  if (endpoint >= static_cast<int>(endpoints_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no endpoint ", endpoint, " (", endpoints_.size(), " endpoints)"));
  }
  if (endpoint >= 0) return HealthOf(*endpoints_[endpoint], service);
  absl::StatusOr<HealthStatus> last = absl::UnavailableError("no endpoint");
  for (const auto& e : endpoints_) {
    last = HealthOf(*e, service);
    if (last.ok() || last.status().code() != absl::StatusCode::kUnavailable) break;
  }
  return last;
}

absl::StatusOr<HealthStatus> KernelClient::HealthOf(const Endpoint& endpoint, const std::string& service) {
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
  Prepare(&context);
  // A health probe should not hang on an unreachable server.
  const absl::Duration timeout =
      options_.timeout == absl::InfiniteDuration() ? absl::Seconds(10) : options_.timeout;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::GenericStub stub(endpoint.channel);
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
