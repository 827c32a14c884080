// `nt`: command-line client of nt-server.
//
//   nt kernel   --arch model.json --x1 a.npy [--x2 b.npy] [--get nngp,ntk] [--out k.npz]
//               [--out-npy PREFIX] ...
//   nt describe --arch model.json --x1-shape 10,3072 [--x2-shape 5,3072] ...
//   nt health   [--service NAME]
//   nt arch     --arch model.json        (local: prints the architecture as parsed)
//
// Exit codes: 0 success; 1 the server (or writing the result) failed, the gRPC status code name and
// message are printed; 2 usage errors and unusable input files.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/cpp/arch_json.h"
#include "client/cpp/client.h"
#include "client/cpp/npy.h"
#include "google/protobuf/text_format.h"

namespace nt::client {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitServer = 1;
constexpr int kExitUsage = 2;

constexpr char kUsage[] = R"(usage:
  nt kernel   --arch FILE --x1 X1.npy [--x2 X2.npy] [--get nngp,ntk,cov1,cov2] [--out OUT.npz]
              [--out-npy PREFIX] [--print] [--diagonal-batch true|false]
              [--diagonal-spatial true|false] [--mask-constant VALUE|nan] [--pattern1 P1.npy]
              [--pattern2 P2.npy] [--tile-size N] [--float32] [--progress] [CONNECTION]
  nt describe --arch FILE --x1-shape N,D,... [--x2-shape N,D,...] [--get ...]
              [--diagonal-batch ...] [--diagonal-spatial ...] [--tile-size N] [CONNECTION]
  nt health   [--service NAME] [CONNECTION]
  nt arch     --arch FILE [--proto]

CONNECTION: [--server ADDRESSES] [--timeout SECONDS] [--token TOKEN] [--tls_ca CA.pem]
            [--tls_cert CERT.pem --tls_key KEY.pem] [--tls_server_name NAME]

--arch takes the JSON architecture form ({"layer": ..., "args": ...}) or a golden case file.
--server takes host:port, or several comma-separated; dns:///name:port stands for every address of
the name. A kernel is spread over all of them (tile ranges, retried elsewhere when a server fails).
It defaults to $NT_SERVER, else localhost:50051. --token (default $NT_TOKEN) is sent as a bearer
token; --tls_ca (default $NT_TLS_CA) switches to TLS; --tls_cert/--tls_key are the client's own
certificate for mutual TLS. --out-npy writes PREFIX.<name>.npy per array, tile by tile, for kernels
larger than memory. Dashes and underscores in flag names are interchangeable.
Exit codes: 0 ok, 1 server error, 2 usage error.
)";

// --name value / --name=value; boolean flags take no value (or =true / =false).
class Flags {
 public:
  Flags(std::set<std::string> valued, std::set<std::string> boolean)
      : valued_(std::move(valued)), boolean_(std::move(boolean)) {}

  absl::Status Parse(const std::vector<std::string>& args) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a.size() < 3 || a.compare(0, 2, "--") != 0) {
        return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
      }
      std::string name = a.substr(2), value;
      const size_t eq = name.find('=');
      const bool has_value = eq != std::string::npos;
      if (has_value) {
        value = name.substr(eq + 1);
        name.resize(eq);
      }
      std::replace(name.begin(), name.end(), '_', '-');
      if (boolean_.count(name)) {
        if (has_value && value != "true" && value != "false") {
          return absl::InvalidArgumentError(absl::StrCat("--", name, " takes true or false"));
        }
        values_[name] = has_value ? value : "true";
      } else if (valued_.count(name)) {
        if (!has_value) {
          if (i + 1 >= args.size()) {
            return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
          }
          value = args[++i];
        }
        values_[name] = value;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
      }
    }
    return absl::OkStatus();
  }

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  bool Bool(const std::string& name) const { return Get(name) == "true"; }

 private:
  std::set<std::string> valued_, boolean_;
  std::map<std::string, std::string> values_;
};

absl::StatusOr<bool> ParseBool(const std::string& flag, const std::string& v) {
  const std::string s = absl::AsciiStrToLower(v);
  if (s == "true" || s == "1" || s == "yes") return true;
  if (s == "false" || s == "0" || s == "no") return false;
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " takes true or false, got '", v, "'"));
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const std::string& flag, const std::string& v) {
  std::vector<int64_t> shape;
  for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " takes comma-separated sizes, got '", v, "'"));
    }
    shape.push_back(d);
  }
  if (shape.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return shape;
}

std::vector<std::string> ParseGet(const std::string& v) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
    out.push_back(absl::AsciiStrToLower(absl::StripAsciiWhitespace(part)));
  }
  return out;
}

int Fail(const absl::Status& status, int code) {
  std::cerr << "error: " << absl::StatusCodeToString(status.code()) << ": " << status.message() << "\n";
  return code;
}

int Usage(const std::string& message) {
  std::cerr << "nt: " << message << "\n\n" << kUsage;
  return kExitUsage;
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrFormat(u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
}

std::string HumanSeconds(double s) {
  if (s < 60) return absl::StrFormat("%.1fs", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return absl::StrFormat("%dh%02dm", static_cast<int>(s) / 3600, (static_cast<int>(s) / 60) % 60);
}

// Progress line on stderr: redrawn in place on a terminal, a line every few seconds otherwise.
class ProgressDisplay {
 public:
  explicit ProgressDisplay(bool tty) : tty_(tty) {}

  void Update(const KernelProgress& p) {
    const bool last = p.num_tiles > 0 && p.tiles_done == p.num_tiles;
    const double min_gap = tty_ ? 0.1 : 5.0;
    if (!last && p.elapsed_seconds - last_print_ < min_gap && drawn_) return;
    last_print_ = p.elapsed_seconds;
    drawn_ = true;
    const double pct = p.num_tiles > 0 ? 100.0 * p.tiles_done / p.num_tiles : 0.0;
    const double rate = p.elapsed_seconds > 0 ? p.tiles_done / p.elapsed_seconds : 0.0;
    std::string line = absl::StrFormat(
        "tiles %d/%d  %5.1f%%  %.2f tiles/s  %s received  %s", p.tiles_done, p.num_tiles, pct, rate,
        HumanBytes(static_cast<double>(p.bytes_received)), HumanSeconds(p.elapsed_seconds));
    if (rate > 0 && p.tiles_done < p.num_tiles) {
      absl::StrAppend(&line, "  ETA ", HumanSeconds((p.num_tiles - p.tiles_done) / rate));
    }
    if (tty_) {
      std::fprintf(stderr, "\r%-90s", line.c_str());
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

  void Done() {
    if (tty_ && drawn_) std::fputc('\n', stderr);
  }

 private:
  bool tty_;
  bool drawn_ = false;
  double last_print_ = 0;
};

// Nested-bracket printing of small arrays, like numpy.
void PrintArray(const NpyArray& a, const std::vector<double>& v, size_t axis, size_t* pos, int indent,
                std::string* out) {
  if (axis == a.shape.size()) {
    absl::StrAppend(out, absl::StrFormat("%.10g", v[(*pos)++]));
    return;
  }
  out->push_back('[');
  for (int64_t i = 0; i < a.shape[axis]; ++i) {
    if (i > 0) {
      if (axis + 1 == a.shape.size()) {
        out->append(", ");
      } else {
        out->append(",\n");
        out->append(indent + axis + 1, ' ');
      }
    }
    PrintArray(a, v, axis + 1, pos, indent, out);
  }
  out->push_back(']');
}

std::string DtypeName(const std::string& dtype) {
  if (dtype == "<f8") return "float64";
  if (dtype == "<f4") return "float32";
  if (dtype == "|b1") return "bool";
  return "int64";
}

absl::StatusOr<nt::v1::Tensor> LoadTensor(const std::string& path, bool as_float64) {
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  if (!a.ok()) return a.status();
  if (as_float64 && a->dtype != "<f8") {
    absl::StatusOr<std::vector<double>> d = a->AsDoubles();
    if (!d.ok()) return d.status();
    *a = NpyArray::FromDoubles(a->shape, *d);
  }
  return TensorFromNpy(*a);
}

// Flags shared by kernel and describe, applied to either request type.
template <typename Request>
absl::Status CommonOptions(const Flags& f, Request* r) {
  absl::StatusOr<nt::v1::Layer> arch = LayerFromJsonFile(f.Get("arch"));
  if (!arch.ok()) return arch.status();
  *r->mutable_architecture() = std::move(*arch);
  if (f.Has("get")) {
    for (const std::string& g : ParseGet(f.Get("get"))) r->add_get(g);
  }
  if (f.Has("diagonal-batch")) {
    absl::StatusOr<bool> b = ParseBool("diagonal-batch", f.Get("diagonal-batch"));
    if (!b.ok()) return b.status();
    r->set_diagonal_batch(*b);
  }
  if (f.Has("diagonal-spatial")) {
    absl::StatusOr<bool> b = ParseBool("diagonal-spatial", f.Get("diagonal-spatial"));
    if (!b.ok()) return b.status();
    r->set_diagonal_spatial(*b);
  }
  if (f.Has("tile-size")) {
    int64_t t;
    if (!absl::SimpleAtoi(f.Get("tile-size"), &t) || t < 0) {
      return absl::InvalidArgumentError("--tile-size takes a non-negative integer");
    }
    r->set_tile_size(t);
  }
  return absl::OkStatus();
}

// The connection flags every command that talks to a server takes.
std::set<std::string> WithConnectionFlags(std::set<std::string> flags) {
  flags.insert({"server", "timeout", "token", "tls-ca", "tls-cert", "tls-key", "tls-server-name"});
  return flags;
}

absl::StatusOr<ClientOptions> MakeClientOptions(const Flags& f) {
  ClientOptions options;
  options.address = f.Get("server");
  options.token = f.Get("token");
  options.tls_server_name = f.Get("tls-server-name");
  struct Pem {
    const char* flag;
    std::string* field;
  };
  for (const Pem& p :
       {Pem{"tls-ca", &options.root_certificates_pem}, Pem{"tls-cert", &options.certificate_chain_pem},
        Pem{"tls-key", &options.private_key_pem}}) {
    if (!f.Has(p.flag)) continue;
    absl::StatusOr<std::string> pem = ReadTextFile(f.Get(p.flag));
    if (!pem.ok())
      return absl::InvalidArgumentError(absl::StrCat("--", p.flag, ": ", pem.status().message()));
    *p.field = *std::move(pem);
  }
  if (f.Has("tls-cert") != f.Has("tls-key")) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (f.Has("timeout")) {
    double s;
    if (!absl::SimpleAtod(f.Get("timeout"), &s) || !(s > 0)) {
      return absl::InvalidArgumentError("--timeout takes a positive number of seconds");
    }
    options.timeout = absl::Seconds(s);
  }
  return options;
}

int RunKernel(const std::vector<std::string>& args) {
  Flags f(WithConnectionFlags({"arch", "x1", "x2", "get", "out", "out-npy", "diagonal-batch",
                               "diagonal-spatial", "mask-constant", "pattern1", "pattern2", "tile-size"}),
          {"float32", "print", "progress"});
  absl::Status s = f.Parse(args);
  if (!s.ok()) return Usage(std::string(s.message()));
  if (!f.Has("arch") || !f.Has("x1")) return Usage("kernel needs --arch and --x1");

  nt::v1::KernelRequest request;
  s = CommonOptions(f, &request);
  if (!s.ok()) return Fail(s, kExitUsage);
  absl::StatusOr<nt::v1::Tensor> x1 = LoadTensor(f.Get("x1"), /*as_float64=*/true);
  if (!x1.ok()) return Fail(x1.status(), kExitUsage);
  *request.mutable_x1() = std::move(*x1);
  if (f.Has("x2")) {
    absl::StatusOr<nt::v1::Tensor> x2 = LoadTensor(f.Get("x2"), true);
    if (!x2.ok()) return Fail(x2.status(), kExitUsage);
    *request.mutable_x2() = std::move(*x2);
  }
  for (const char* name : {"pattern1", "pattern2"}) {
    if (!f.Has(name)) continue;
    // Patterns keep their dtype: SPARSE aggregation takes integer edge lists.
    absl::StatusOr<nt::v1::Tensor> p = LoadTensor(f.Get(name), false);
    if (!p.ok()) return Fail(p.status(), kExitUsage);
    *(std::string(name) == "pattern1" ? request.mutable_pattern1() : request.mutable_pattern2()) =
        std::move(*p);
  }
  if (f.Has("mask-constant")) {
    double m;
    const std::string v = absl::AsciiStrToLower(f.Get("mask-constant"));
    if (v == "nan") {
      m = std::nan("");
    } else if (!absl::SimpleAtod(v, &m)) {
      return Usage("--mask-constant takes a number or nan");
    }
    request.set_mask_constant(m);
  }
  request.set_output_dtype(f.Bool("float32") ? nt::v1::FLOAT32 : nt::v1::FLOAT64);

  absl::StatusOr<ClientOptions> options = MakeClientOptions(f);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  KernelClient client(*options);
  if (!client.status().ok()) return Fail(client.status(), kExitUsage);
  const bool show_progress = f.Bool("progress") || isatty(STDERR_FILENO);
  ProgressDisplay display(isatty(STDERR_FILENO));
  ProgressCallback callback;
  if (show_progress) callback = [&display](const KernelProgress& p) { display.Update(p); };
  const bool to_files = f.Has("out-npy");
  if (to_files && f.Get("out-npy").empty()) return Usage("--out-npy needs a path prefix");
  absl::StatusOr<KernelResult> result = to_files
                                            ? client.ComputeKernelToFiles(request, f.Get("out-npy"), callback)
                                            : client.ComputeKernel(request, callback);
  if (show_progress) display.Done();
  if (!result.ok()) return Fail(result.status(), kExitServer);
  for (const auto& [name, path] : result->files) {
    std::cout << "wrote " << path << "\n";
    // --print and --out need the arrays themselves.
    if (!f.Bool("print") && !f.Has("out")) continue;
    absl::StatusOr<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return Fail(a.status(), kExitServer);
    result->arrays.emplace(name, *std::move(a));
  }

  const nt::v1::KernelSummary& sum = result->summary;
  for (const nt::v1::ArrayInfo& info : result->header.arrays()) {
    std::cout << info.name() << ": "
              << ShapeString(std::vector<int64_t>(info.shape().begin(), info.shape().end())) << " "
              << DtypeName(result->header.dtype() == nt::v1::FLOAT32 ? "<f4" : "<f8") << "\n";
  }
  std::cout << absl::StrFormat(
      "%d tiles in %.3fs (server); x1_is_x2=%s diagonal_batch=%s diagonal_spatial=%s "
      "is_gaussian=%s\n",
      sum.num_tiles(), sum.compute_seconds(), sum.x1_is_x2() ? "true" : "false",
      sum.diagonal_batch() ? "true" : "false", sum.diagonal_spatial() ? "true" : "false",
      sum.is_gaussian() ? "true" : "false");
  const DistributionStats& st = result->stats;
  if (client.endpoints().size() > 1 || st.ranges > 1) {
    std::vector<std::string> per;
    for (const auto& [address, n] : st.tiles) per.push_back(absl::StrCat(address, "=", n));
    std::cout << absl::StrFormat("%d tile ranges over %d endpoints (tiles: %s); %d retries", st.ranges,
                                 client.endpoints().size(), absl::StrJoin(per, " "), st.retries);
    if (!st.given_up.empty()) std::cout << "; given up: " << absl::StrJoin(st.given_up, " ");
    if (st.uploads > 0) std::cout << "; " << st.uploads << " uploads";
    std::cout << "\n";
  }
  if (f.Bool("print")) {
    constexpr int64_t kMaxPrinted = 10000;
    for (const auto& [name, array] : result->arrays) {
      if (array.num_elements() > kMaxPrinted) {
        std::cout << name << ": " << array.num_elements() << " elements, not printed\n";
        continue;
      }
      absl::StatusOr<std::vector<double>> values = array.AsDoubles();
      if (!values.ok()) return Fail(values.status(), kExitServer);
      std::string text;
      size_t pos = 0;
      const std::string prefix = name + " = ";
      PrintArray(array, *values, 0, &pos, static_cast<int>(prefix.size()), &text);
      std::cout << prefix << text << "\n";
    }
  }
  if (f.Has("out")) {
    s = WriteNpz(f.Get("out"), result->arrays);
    if (!s.ok()) return Fail(s, kExitServer);
    std::cout << "wrote " << f.Get("out") << "\n";
  }
  return kExitOk;
}

int RunDescribe(const std::vector<std::string>& args) {
  Flags f(WithConnectionFlags(
              {"arch", "x1-shape", "x2-shape", "get", "diagonal-batch", "diagonal-spatial", "tile-size"}),
          {});
  absl::Status s = f.Parse(args);
  if (!s.ok()) return Usage(std::string(s.message()));
  if (!f.Has("arch") || !f.Has("x1-shape")) return Usage("describe needs --arch and --x1-shape");
  nt::v1::DescribeRequest request;
  s = CommonOptions(f, &request);
  if (!s.ok()) return Fail(s, kExitUsage);
  for (const char* flag : {"x1-shape", "x2-shape"}) {
    if (!f.Has(flag)) continue;
    absl::StatusOr<std::vector<int64_t>> shape = ParseShape(flag, f.Get(flag));
    if (!shape.ok()) return Usage(std::string(shape.status().message()));
    auto* field = std::string(flag) == "x1-shape" ? request.mutable_x1_shape() : request.mutable_x2_shape();
    field->Add(shape->begin(), shape->end());
  }
  absl::StatusOr<ClientOptions> options = MakeClientOptions(f);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  KernelClient client(*options);
  if (!client.status().ok()) return Fail(client.status(), kExitUsage);
  absl::StatusOr<nt::v1::DescribeResponse> r = client.Describe(request);
  if (!r.ok()) return Fail(r.status(), kExitServer);
  auto shape = [](const google::protobuf::RepeatedField<int64_t>& s) {
    return ShapeString(std::vector<int64_t>(s.begin(), s.end()));
  };
  std::cout << "output_shape1:    " << shape(r->output_shape1()) << "\n";
  if (r->output_shape2_size() > 0) {
    std::cout << "output_shape2:    " << shape(r->output_shape2()) << "\n";
  }
  std::cout << "layout:           " << r->layout() << "\n"
            << "diagonal_batch:   " << (r->diagonal_batch() ? "true" : "false") << "\n"
            << "diagonal_spatial: " << (r->diagonal_spatial() ? "true" : "false") << "\n"
            << "arrays:\n";
  for (const nt::v1::ArrayInfo& a : r->arrays()) {
    std::cout << absl::StrFormat("  %-5s %s  tiled_axes=%d\n", a.name(), shape(a.shape()), a.tiled_axes());
  }
  std::cout << "tile_size:        " << r->tile_size() << "\n"
            << "num_tiles:        " << r->num_tiles() << "\n"
            << absl::StrFormat("estimated_flops:  %.3g\n", r->estimated_flops())
            << "estimated_memory: " << HumanBytes(static_cast<double>(r->estimated_memory_bytes())) << " ("
            << r->estimated_memory_bytes() << " bytes) on the server\n"
            << "output:           " << HumanBytes(static_cast<double>(r->output_bytes())) << " ("
            << r->output_bytes() << " bytes) on the client\n";
  return kExitOk;
}

int RunHealth(const std::vector<std::string>& args) {
  Flags f(WithConnectionFlags({"service"}), {});
  absl::Status s = f.Parse(args);
  if (!s.ok()) return Usage(std::string(s.message()));
  absl::StatusOr<ClientOptions> options = MakeClientOptions(f);
  if (!options.ok()) return Usage(std::string(options.status().message()));
  KernelClient client(*options);
  if (!client.status().ok()) return Fail(client.status(), kExitUsage);
  const std::vector<std::string> endpoints = client.endpoints();
  if (endpoints.size() == 1) {
    absl::StatusOr<HealthStatus> h = client.Health(f.Get("service"), 0);
    if (!h.ok()) return Fail(h.status(), kExitServer);
    std::cout << client.address() << ": " << HealthStatusName(*h) << "\n";
    return *h == HealthStatus::kServing ? kExitOk : kExitServer;
  }
  // Several servers: a line for each; healthy when all serve.
  int code = kExitOk;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    absl::StatusOr<HealthStatus> h = client.Health(f.Get("service"), static_cast<int>(i));
    if (!h.ok()) {
      std::cout << endpoints[i] << ": " << absl::StatusCodeToString(h.status().code()) << "\n";
      std::cerr << "error: " << endpoints[i] << ": " << absl::StatusCodeToString(h.status().code()) << ": "
                << h.status().message() << "\n";
      code = kExitServer;
      continue;
    }
    std::cout << endpoints[i] << ": " << HealthStatusName(*h) << "\n";
    if (*h != HealthStatus::kServing) code = kExitServer;
  }
  return code;
}

int RunArch(const std::vector<std::string>& args) {
  Flags f({"arch"}, {"proto"});
  absl::Status s = f.Parse(args);
  if (!s.ok()) return Usage(std::string(s.message()));
  if (!f.Has("arch")) return Usage("arch needs --arch");
  absl::StatusOr<nt::v1::Layer> layer = LayerFromJsonFile(f.Get("arch"));
  if (!layer.ok()) return Fail(layer.status(), kExitUsage);
  if (f.Bool("proto")) {
    std::string text;
    google::protobuf::TextFormat::PrintToString(*layer, &text);
    std::cout << text;
    return kExitOk;
  }
  absl::StatusOr<std::string> json = LayerToJson(*layer, 2);
  if (!json.ok()) return Fail(json.status(), kExitUsage);
  std::cout << *json << "\n";
  return kExitOk;
}

int Main(int argc, char** argv) {
  if (argc < 2) return Usage("missing command");
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "-h" || command == "--help" || command == "help") {
    std::cout << kUsage;
    return kExitOk;
  }
  for (const std::string& a : args) {
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return kExitOk;
    }
  }
  if (command == "kernel") return RunKernel(args);
  if (command == "describe") return RunDescribe(args);
  if (command == "health") return RunHealth(args);
  if (command == "arch") return RunArch(args);
  return Usage(absl::StrCat("unknown command '", command, "'"));
}

}  // namespace
}  // namespace nt::client

int main(int argc, char** argv) { return nt::client::Main(argc, argv); }
