// The least a gRPC client can spend on target 4 against this server, whatever its language: x uploaded as
// ready-made TensorChunk messages (each chunk copied once, into its slice), the ComputeKernel stream
// drained as raw byte buffers (each message copied once out of its slices into one reused buffer:
// nothing parsed, nothing placed), the upload released. bench/run shows it next to the Python client.
//
//   grpc_floor --server=HOST:PORT --request=FILE --x=FILE --rows=N --cols=D [--runs=K]
//
// FILE: a serialized KernelRequest whose x1 carries only a shape (replaced by the upload's handle);
// --x: the float64 values, row-major, as written by numpy's tofile(). Prints one JSON line with the best
// of K runs (after one warm-up): {"with_upload": s, "by_handle": s, "upload": s, "bytes": n}.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "nt/v1/service.grpc.pb.h"

namespace {

constexpr size_t kChunkBytes = 960 << 10;  // As the Python client (ntclient.connection).

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool Flag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// One generic (bytes in, bytes out) call on a completion queue, driven step by step.
class RawCall {
 public:
  RawCall(grpc::GenericStub& stub, const std::string& method) {
    call_ = stub.PrepareCall(&context_, method, &cq_);
    call_->StartCall(this);
    Wait();
  }
  bool Write(const grpc::ByteBuffer& message) {
    call_->Write(message, this);
    return Wait();
  }
  void WritesDone() {
    call_->WritesDone(this);
    Wait();
  }
  bool Read(grpc::ByteBuffer* message) {
    call_->Read(message, this);
    return Wait();
  }
  grpc::Status Finish() {
    grpc::Status status;
    call_->Finish(&status, this);
    Wait();
    return status;
  }

 private:
  bool Wait() {
    void* tag = nullptr;
    bool ok = false;
    cq_.Next(&tag, &ok);
    return ok;
  }
  grpc::ClientContext context_;
  grpc::CompletionQueue cq_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
};

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// Uploads x in kChunkBytes TensorChunk messages; returns the handle (empty on failure).
std::string Upload(grpc::GenericStub& stub, const std::vector<double>& x, int64_t rows, int64_t cols) {
  RawCall call(stub, "/nt.v1.KernelService/UploadTensor");
  const char* data = reinterpret_cast<const char*>(x.data());
  const size_t total = x.size() * sizeof(double);
  for (size_t offset = 0; offset < total; offset += kChunkBytes) {
    nt::v1::TensorChunk head;
    if (offset == 0) {
      head.add_shape(rows);
      head.add_shape(cols);
      head.set_dtype(nt::v1::FLOAT64);
    }
    head.set_offset(static_cast<int64_t>(offset));
    std::string prefix = head.SerializeAsString();
    const size_t n = std::min(kChunkBytes, total - offset);
    prefix.push_back(static_cast<char>(3 << 3 | 2));  // TensorChunk.data, length-delimited.
    AppendVarint(&prefix, n);
    grpc::Slice slice(prefix.size() + n);
    std::memcpy(const_cast<uint8_t*>(slice.begin()), prefix.data(), prefix.size());
    std::memcpy(const_cast<uint8_t*>(slice.begin()) + prefix.size(), data + offset, n);
    if (!call.Write(grpc::ByteBuffer(&slice, 1))) break;
  }
  call.WritesDone();
  grpc::ByteBuffer reply;
  const bool got = call.Read(&reply);
  const grpc::Status status = call.Finish();
  if (!got || !status.ok()) {
    std::cerr << "grpc_floor: upload failed: " << status.error_message() << "\n";
    return "";
  }
  std::vector<grpc::Slice> slices;
  (void)reply.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  nt::v1::UploadTensorResponse response;
  response.ParseFromString(bytes);
  return response.handle();
}

// Drains one ComputeKernel stream; returns the bytes received (-1 on failure).
int64_t Drain(grpc::GenericStub& stub, const nt::v1::KernelRequest& request, std::vector<char>* buffer) {
  RawCall call(stub, "/nt.v1.KernelService/ComputeKernel");
  call.Write(Buffer(request.SerializeAsString()));
  call.WritesDone();
  int64_t bytes = 0;
  grpc::ByteBuffer message;
  while (call.Read(&message)) {
    std::vector<grpc::Slice> slices;
    (void)message.Dump(&slices);
    if (buffer->size() < message.Length()) buffer->resize(message.Length());
    size_t at = 0;
    for (const auto& s : slices) {
      std::memcpy(buffer->data() + at, s.begin(), s.size());
      at += s.size();
    }
    bytes += static_cast<int64_t>(at);
  }
  const grpc::Status status = call.Finish();
  if (!status.ok()) {
    std::cerr << "grpc_floor: ComputeKernel failed: " << status.error_message() << "\n";
    return -1;
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  // As the server (server/main.cc): freed receive buffers stay in the heap instead of being faulted in
  // again for every message.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  std::string server, request_path, x_path, rows_s, cols_s, runs_s = "3";
  for (int i = 1; i < argc; ++i) {
    if (!Flag(argv[i], "--server", &server) && !Flag(argv[i], "--request", &request_path) &&
        !Flag(argv[i], "--x", &x_path) && !Flag(argv[i], "--rows", &rows_s) &&
        !Flag(argv[i], "--cols", &cols_s) && !Flag(argv[i], "--runs", &runs_s)) {
      std::cerr << "grpc_floor: unknown argument " << argv[i] << "\n";
      return 2;
    }
  }
  const int64_t rows = std::atoll(rows_s.c_str()), cols = std::atoll(cols_s.c_str());
  const int runs = std::max(1, std::atoi(runs_s.c_str()));
  const std::string x_bytes = ReadFile(x_path);
  if (server.empty() || rows <= 0 || cols <= 0 || x_bytes.size() != size_t(rows * cols) * sizeof(double)) {
    std::cerr << "grpc_floor: need --server, --request, --x of --rows x --cols float64 values\n";
    return 2;
  }
  std::vector<double> x(rows * cols);
  std::memcpy(x.data(), x_bytes.data(), x_bytes.size());
  nt::v1::KernelRequest request;
  if (!request.ParseFromString(ReadFile(request_path))) {
    std::cerr << "grpc_floor: " << request_path << " is not a KernelRequest\n";
    return 2;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  grpc::GenericStub stub(grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
  auto service = nt::v1::KernelService::NewStub(
      grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));

  std::vector<char> buffer;
  double best_total = 1e300, best_kernel = 1e300, best_upload = 1e300;
  int64_t bytes = 0;
  for (int run = 0; run <= runs; ++run) {  // Run 0 warms up.
    const double t0 = Now();
    const std::string handle = Upload(stub, x, rows, cols);
    if (handle.empty()) return 1;
    const double t1 = Now();
    nt::v1::KernelRequest with_handle = request;
    with_handle.mutable_x1()->Clear();
    with_handle.mutable_x1()->set_handle(handle);
    bytes = Drain(stub, with_handle, &buffer);
    if (bytes < 0) return 1;
    const double t2 = Now();
    grpc::ClientContext context;
    nt::v1::ReleaseTensorRequest release;
    release.set_handle(handle);
    nt::v1::ReleaseTensorResponse released;
    (void)service->ReleaseTensor(&context, release, &released);
    const double t3 = Now();
    if (run == 0) continue;
    best_total = std::min(best_total, t3 - t0);
    best_kernel = std::min(best_kernel, t2 - t1);
    best_upload = std::min(best_upload, t1 - t0);
  }
  std::printf("{\"with_upload\": %.6f, \"by_handle\": %.6f, \"upload\": %.6f, \"bytes\": %lld}\n", best_total,
              best_kernel, best_upload, static_cast<long long>(bytes));
  return 0;
}
