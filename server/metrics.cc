#include "server/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace nt::server {
namespace {

void AtomicAdd(std::atomic<double>* a, double v) {
  double cur = a->load(std::memory_order_relaxed);
  while (!a->compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "metrics: %s\n", msg.c_str());
  std::abort();
}

bool ValidName(absl::string_view s, bool allow_colon) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok =
        absl::ascii_isalpha(c) || c == '_' || (allow_colon && c == ':') || (i > 0 && absl::ascii_isdigit(c));
    if (!ok) return false;
  }
  return true;
}

void ValidateFamily(absl::string_view name, const std::vector<std::string>& label_names, bool histogram) {
  if (!ValidName(name, /*allow_colon=*/true)) Die(absl::StrCat("invalid metric name '", name, "'"));
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& l = label_names[i];
    if (!ValidName(l, /*allow_colon=*/false) || absl::StartsWith(l, "__") || (histogram && l == "le")) {
      Die(absl::StrCat("invalid label name '", l, "' in metric '", name, "'"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == l) Die(absl::StrCat("duplicate label name '", l, "' in metric '", name, "'"));
    }
  }
}

// HELP text escapes backslash and newline; label values also escape the double quote.
std::string Escape(absl::string_view s, bool quote) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
  return out;
}

absl::string_view TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void AppendLine(const std::string& name, absl::string_view suffix, absl::string_view labels, double v,
                std::string* out) {
  absl::StrAppend(out, name, suffix, labels, " ", FormatMetricValue(v), "\n");
}

// An unlabelled value computed at render time.
class CallbackFamily : public MetricFamily {
 public:
  CallbackFamily(std::string name, std::string help, MetricType type, std::function<double()> fn)
      : MetricFamily(std::move(name), std::move(help), type, {}), fn_(std::move(fn)) {}

 protected:
  void RenderSamples(std::string* out) const override {
    const double v = fn_();
    if (!std::isnan(v)) AppendLine(name_, "", "", v, out);
  }

 private:
  std::function<double()> fn_;
};

}  // namespace

void Counter::Increment(double v) {
  if (!(v > 0)) return;
  AtomicAdd(&value_, v);
}

void Gauge::Add(double v) { AtomicAdd(&value_, v); }

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), buckets_(new std::atomic<uint64_t>[bounds->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  if (std::isnan(v)) return;
  // Bucket i counts bounds[i-1] < v <= bounds[i]; the last one is +Inf.
  const size_t i = std::lower_bound(bounds_->begin(), bounds_->end(), v) - bounds_->begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(&sum_, v);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.cumulative.resize(bounds_->size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = total;
  }
  s.count = total;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

const std::vector<double>& DefaultLatencyBuckets() {
  static const auto* const kBuckets = new std::vector<double>{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
  return *kBuckets;
}

MetricFamily::MetricFamily(std::string name, std::string help, MetricType type,
                           std::vector<std::string> label_names)
    : name_(std::move(name)), help_(std::move(help)), type_(type), label_names_(std::move(label_names)) {}

void MetricFamily::Render(std::string* out) const {
  absl::StrAppend(out, "# HELP ", name_, " ", Escape(help_, /*quote=*/false), "\n");
  absl::StrAppend(out, "# TYPE ", name_, " ", TypeName(type_), "\n");
  RenderSamples(out);
}

namespace metrics_internal {

std::string LabelPrefix(const std::vector<std::string>& names, const std::vector<std::string>& values) {
  if (names.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, names[i], "=\"", Escape(i < values.size() ? values[i] : "", /*quote=*/true), "\"");
  }
  return out;
}

void AppendSamples(const std::string& name, const std::string& label_prefix, const Counter& c,
                   std::string* out) {
  AppendLine(name, "", label_prefix.empty() ? "" : absl::StrCat(label_prefix, "}"), c.value(), out);
}

void AppendSamples(const std::string& name, const std::string& label_prefix, const Gauge& g,
                   std::string* out) {
  AppendLine(name, "", label_prefix.empty() ? "" : absl::StrCat(label_prefix, "}"), g.value(), out);
}

void AppendSamples(const std::string& name, const std::string& label_prefix, const Histogram& h,
                   std::string* out) {
  const Histogram::Snapshot s = h.Read();
  const std::string le_prefix = label_prefix.empty() ? "{le=\"" : absl::StrCat(label_prefix, ",le=\"");
  const std::vector<double>& bounds = h.bounds();
  for (size_t i = 0; i <= bounds.size(); ++i) {
    const std::string le = i < bounds.size() ? FormatMetricValue(bounds[i]) : "+Inf";
    AppendLine(name, "_bucket", absl::StrCat(le_prefix, le, "\"}"), static_cast<double>(s.cumulative[i]),
               out);
  }
  const std::string labels = label_prefix.empty() ? "" : absl::StrCat(label_prefix, "}");
  AppendLine(name, "_sum", labels, s.sum, out);
  AppendLine(name, "_count", labels, static_cast<double>(s.count), out);
}

}  // namespace metrics_internal

HistogramFamily::HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                                 std::vector<double> bounds)
    : FamilyOf<Histogram>(std::move(name), std::move(help), MetricType::kHistogram, std::move(label_names)),
      bounds_(std::move(bounds)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i - 1] < bounds_[i]))) {
      Die(absl::StrCat("histogram '", name_, "': bucket bounds must be finite and strictly increasing"));
    }
  }
}

CounterFamily& MetricsRegistry::AddCounter(absl::string_view name, absl::string_view help,
                                           std::vector<std::string> label_names) {
  ValidateFamily(name, label_names, /*histogram=*/false);
  auto family = std::make_unique<CounterFamily>(std::string(name), std::string(help), MetricType::kCounter,
                                                std::move(label_names));
  CounterFamily& ref = *family;
  Add(std::move(family));
  if (ref.label_names().empty()) ref.Get();  // Unlabelled: rendered as 0 from the start.
  return ref;
}

GaugeFamily& MetricsRegistry::AddGauge(absl::string_view name, absl::string_view help,
                                       std::vector<std::string> label_names) {
  ValidateFamily(name, label_names, /*histogram=*/false);
  auto family = std::make_unique<GaugeFamily>(std::string(name), std::string(help), MetricType::kGauge,
                                              std::move(label_names));
  GaugeFamily& ref = *family;
  Add(std::move(family));
  if (ref.label_names().empty()) ref.Get();
  return ref;
}

HistogramFamily& MetricsRegistry::AddHistogram(absl::string_view name, absl::string_view help,
                                               std::vector<std::string> label_names,
                                               std::vector<double> bounds) {
  ValidateFamily(name, label_names, /*histogram=*/true);
  auto family = std::make_unique<HistogramFamily>(std::string(name), std::string(help),
                                                  std::move(label_names), std::move(bounds));
  HistogramFamily& ref = *family;
  Add(std::move(family));
  if (ref.label_names().empty()) ref.Get();
  return ref;
}

void MetricsRegistry::AddCallback(absl::string_view name, absl::string_view help, MetricType type,
                                  std::function<double()> fn) {
  ValidateFamily(name, {}, /*histogram=*/false);
  if (type == MetricType::kHistogram) Die(absl::StrCat("callback metric '", name, "' cannot be a histogram"));
  Add(std::make_unique<CallbackFamily>(std::string(name), std::string(help), type, std::move(fn)));
}

void MetricsRegistry::Add(std::unique_ptr<MetricFamily> family) {
  absl::MutexLock lock(&mu_);
  for (const auto& f : families_) {
    if (f->name() == family->name()) Die(absl::StrCat("metric '", family->name(), "' registered twice"));
  }
  families_.push_back(std::move(family));
}

std::string MetricsRegistry::Render() const {
  std::string out;
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& f : families_) f->Render(&out);
  return out;
}

absl::string_view GrpcCodeName(int code) {
  static constexpr absl::string_view kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  if (code < 0 || code >= static_cast<int>(sizeof(kNames) / sizeof(kNames[0]))) return "UNKNOWN";
  return kNames[code];
}

std::string FormatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

ServerMetrics::ServerMetrics(absl::string_view version)
    : requests(registry.AddCounter("nt_requests_total", "RPCs handled, by method and final gRPC status code.",
                                   {"method", "code"})),
      request_duration(registry.AddHistogram("nt_request_duration_seconds",
                                             "RPC handling time in seconds, by method.", {"method"})),
      in_flight(registry.AddGauge("nt_requests_in_flight", "RPCs being handled now, by method.", {"method"})),
      tiles(registry.AddCounter("nt_tiles_total", "Kernel tiles sent to clients.").Get()),
      response_bytes(
          registry.AddCounter("nt_response_bytes_total", "Serialized response message bytes sent.").Get()),
      request_bytes(
          registry.AddCounter("nt_request_bytes_total", "Serialized request message bytes received.").Get()),
      tile_queue_depth(registry
                           .AddGauge("nt_tile_queue_depth",
                                     "Kernel tiles computed and waiting to be written, summed over requests.")
                           .Get()),
      memory_reserved_bytes(
          registry.AddGauge("nt_memory_reserved_bytes", "Engine memory reserved by the requests in flight.")
              .Get()),
      memory_budget_bytes(
          registry.AddGauge("nt_memory_budget_bytes", "Engine memory budget across concurrent requests.")
              .Get()),
      uploads(registry.AddCounter("nt_uploads_total", "Tensors uploaded to the tensor store.").Get()),
      upload_store_bytes(registry.AddGauge("nt_upload_store_bytes", "Bytes held by the tensor store.").Get()),
      upload_store_tensors(
          registry.AddGauge("nt_upload_store_tensors", "Tensors held by the tensor store.").Get()),
      auth_failures(
          registry
              .AddCounter("nt_auth_failures_total", "Calls rejected for a missing or invalid bearer token.")
              .Get()),
      build_info(
          registry.AddGauge("nt_build_info", "Build information; the value is always 1.", {"version"})) {
  build_info.WithLabels({std::string(version)}).Set(1);
  registry.AddCallback("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::kGauge,
                       ProcessResidentMemoryBytes);
  registry.AddCallback("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                       MetricType::kCounter, ProcessCpuSeconds);
  registry.AddCallback("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                       MetricType::kGauge, ProcessStartTimeSeconds);
  registry.AddCallback("process_open_fds", "Number of open file descriptors.", MetricType::kGauge,
                       ProcessOpenFds);
}

void ServerMetrics::SetScrapeHook(std::function<void()> hook) {
  absl::MutexLock lock(&hook_mu_);
  scrape_hook_ = std::move(hook);
}

std::string ServerMetrics::Render() const {
  std::function<void()> hook;
  {
    absl::MutexLock lock(&hook_mu_);
    hook = scrape_hook_;
  }
  if (hook) hook();
  return registry.Render();
}

RequestTimer::RequestTimer(ServerMetrics* metrics, absl::string_view method)
    : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {
  if (metrics_ == nullptr) return;
  in_flight_ = &metrics_->in_flight.WithLabels({method_});
  in_flight_->Increment();
}

double RequestTimer::ElapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void RequestTimer::Finish(absl::string_view code_name) {
  if (finished_ || metrics_ == nullptr) return;
  finished_ = true;
  metrics_->request_duration.WithLabels({method_}).Observe(ElapsedSeconds());
  metrics_->requests.WithLabels({method_, std::string(code_name)}).Increment();
  in_flight_->Decrement();
}

double ProcessResidentMemoryBytes() {
  std::ifstream in("/proc/self/statm");
  double size = 0, resident = 0;
  if (!(in >> size >> resident)) return NAN;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

double ProcessCpuSeconds() {
  rusage u;
  if (getrusage(RUSAGE_SELF, &u) != 0) return NAN;
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(u.ru_utime) + seconds(u.ru_stime);
}

double ProcessStartTimeSeconds() {
  // Field 22 of /proc/self/stat (clock ticks after boot) plus the boot time from /proc/stat; fixed for the
  // life of the process, so read once.
  static const double kStart = []() -> double {
    std::ifstream stat("/proc/self/stat");
    std::string line;
    if (!std::getline(stat, line)) return NAN;
    const size_t paren = line.rfind(')');  // The command name may contain spaces and parentheses.
    if (paren == std::string::npos) return NAN;
    std::istringstream fields(line.substr(paren + 1));
    std::string field;
    double ticks = NAN;
    for (int i = 3; i <= 22 && fields >> field; ++i) {
      if (i == 22) ticks = std::strtod(field.c_str(), nullptr);
    }
    std::ifstream proc_stat("/proc/stat");
    double boot = NAN;
    for (std::string key; proc_stat >> key;) {
      if (key == "btime") {
        proc_stat >> boot;
        break;
      }
      proc_stat.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
    }
    const long hz = sysconf(_SC_CLK_TCK);
    if (std::isnan(ticks) || std::isnan(boot) || hz <= 0) return NAN;
    return boot + ticks / static_cast<double>(hz);
  }();
  return kStart;
}

double ProcessOpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return NAN;
  const int own = dirfd(dir);
  double n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    if (std::atoi(e->d_name) == own) continue;
    ++n;
  }
  closedir(dir);
  return n;
}

}  // namespace nt::server
