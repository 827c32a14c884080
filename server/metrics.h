// Prometheus metrics: a thread-safe registry of counter, gauge and histogram families rendered in the text
// exposition format 0.0.4, and ServerMetrics, the families nt-server exports. No gRPC dependency.
//
// Updates are lock-free (atomics); looking up a labelled child takes a reader lock, so hot paths may keep
// the returned reference (children live as long as their family, which lives as long as the registry).
#ifndef NT_SERVER_METRICS_H_
#define NT_SERVER_METRICS_H_

#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace nt::server {

// A monotonically increasing value.
class Counter {
 public:
  // Negative or NaN increments are ignored (a counter never goes down).
  void Increment(double v = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down.
class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v);
  void Increment() { Add(1.0); }
  void Decrement() { Add(-1.0); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets (upper bounds, strictly increasing; +Inf is implicit).
class Histogram {
 public:
  explicit Histogram(const std::vector<double>* bounds);
  void Observe(double v);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // One per bound, then +Inf (== count).
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;
  const std::vector<double>& bounds() const { return *bounds_; }

 private:
  const std::vector<double>* bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // Non-cumulative; bounds_->size() + 1.
  std::atomic<double> sum_{0.0};
};

// Latency buckets in seconds, 1 ms .. 10 min, roughly log spaced.
const std::vector<double>& DefaultLatencyBuckets();

enum class MetricType { kCounter, kGauge, kHistogram };

// A named family with a fixed list of label names; one child per distinct tuple of label values.
class MetricFamily {
 public:
  MetricFamily(std::string name, std::string help, MetricType type, std::vector<std::string> label_names);
  virtual ~MetricFamily() = default;
  MetricFamily(const MetricFamily&) = delete;
  MetricFamily& operator=(const MetricFamily&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Appends "# HELP", "# TYPE" and one line per sample.
  void Render(std::string* out) const;

 protected:
  virtual void RenderSamples(std::string* out) const = 0;

  std::string name_;
  std::string help_;
  MetricType type_;
  std::vector<std::string> label_names_;
};

namespace metrics_internal {

// `{a="x",b="y"` without the closing brace ("" when there are no labels), values escaped.
std::string LabelPrefix(const std::vector<std::string>& names, const std::vector<std::string>& values);

// The sample lines of one child; `label_prefix` as LabelPrefix returns it.
void AppendSamples(const std::string& name, const std::string& label_prefix, const Counter& c,
                   std::string* out);
void AppendSamples(const std::string& name, const std::string& label_prefix, const Gauge& g,
                   std::string* out);
void AppendSamples(const std::string& name, const std::string& label_prefix, const Histogram& h,
                   std::string* out);

}  // namespace metrics_internal

// Children keyed by label values. `values` must have one entry per label name (a mismatch is a programming
// error: asserts in debug builds, missing values read as "" and extra ones are dropped in release builds).
template <typename T>
class FamilyOf : public MetricFamily {
 public:
  using MetricFamily::MetricFamily;

  T& WithLabels(const std::vector<std::string>& values) {
    assert(values.size() == label_names_.size());
    std::vector<std::string> key = values;
    key.resize(label_names_.size());
    {
      absl::ReaderMutexLock lock(&mu_);
      if (auto it = children_.find(key); it != children_.end()) return *it->second;
    }
    absl::MutexLock lock(&mu_);
    std::unique_ptr<T>& child = children_[key];
    if (!child) child = NewChild();
    return *child;
  }
  // The child of a family without labels.
  T& Get() { return WithLabels({}); }

 protected:
  virtual std::unique_ptr<T> NewChild() const {
    if constexpr (std::is_default_constructible_v<T>) {
      return std::make_unique<T>();
    } else {
      return nullptr;  // Overridden (HistogramFamily).
    }
  }
  void RenderSamples(std::string* out) const override {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [values, child] : children_) {
      metrics_internal::AppendSamples(name_, metrics_internal::LabelPrefix(label_names_, values), *child,
                                      out);
    }
  }

  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

using CounterFamily = FamilyOf<Counter>;
using GaugeFamily = FamilyOf<Gauge>;

class HistogramFamily : public FamilyOf<Histogram> {
 public:
  HistogramFamily(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bounds);
  const std::vector<double>& bounds() const { return bounds_; }

 protected:
  std::unique_ptr<Histogram> NewChild() const override { return std::make_unique<Histogram>(&bounds_); }

 private:
  std::vector<double> bounds_;
};

// Owns families and renders them in registration order. Registering an invalid or duplicate name is a
// programming error and aborts with a message (registration happens once, at startup).
class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  CounterFamily& AddCounter(absl::string_view name, absl::string_view help,
                            std::vector<std::string> label_names = {});
  GaugeFamily& AddGauge(absl::string_view name, absl::string_view help,
                        std::vector<std::string> label_names = {});
  HistogramFamily& AddHistogram(absl::string_view name, absl::string_view help,
                                std::vector<std::string> label_names,
                                std::vector<double> bounds = DefaultLatencyBuckets());
  // An unlabelled counter or gauge whose value `fn` computes at every Render (fn must be thread-safe).
  void AddCallback(absl::string_view name, absl::string_view help, MetricType type,
                   std::function<double()> fn);

  // The text exposition format 0.0.4.
  std::string Render() const;

 private:
  void Add(std::unique_ptr<MetricFamily> family);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<MetricFamily>> families_ ABSL_GUARDED_BY(mu_);
};

// The gRPC status code name ("OK", "INVALID_ARGUMENT", ...) of a numeric code (grpc::StatusCode and
// absl::StatusCode share the numbering); "UNKNOWN" outside 0..16.
absl::string_view GrpcCodeName(int code);

// A number as Prometheus reads it: integers without exponent, others shortest round-trip, +Inf/-Inf/NaN.
std::string FormatMetricValue(double v);

// The families nt-server exports. Names are final: dashboards and alerts depend on them.
struct ServerMetrics {
  explicit ServerMetrics(absl::string_view version);
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Runs `hook` at the start of every Render, e.g. to refresh gauges read from the service (reserved
  // memory, upload store size). Thread-safe; replaces any previous hook.
  void SetScrapeHook(std::function<void()> hook);

  // Everything, including the process_* metrics computed now.
  std::string Render() const;

  MetricsRegistry registry;  // First: the references below point into it.

  CounterFamily& requests;            // nt_requests_total{method,code}
  HistogramFamily& request_duration;  // nt_request_duration_seconds{method}
  GaugeFamily& in_flight;             // nt_requests_in_flight{method}
  Counter& tiles;                     // nt_tiles_total
  Counter& response_bytes;            // nt_response_bytes_total
  Counter& request_bytes;             // nt_request_bytes_total
  Gauge& tile_queue_depth;            // nt_tile_queue_depth
  Gauge& memory_reserved_bytes;       // nt_memory_reserved_bytes
  Gauge& memory_budget_bytes;         // nt_memory_budget_bytes
  Counter& uploads;                   // nt_uploads_total
  Gauge& upload_store_bytes;          // nt_upload_store_bytes
  Gauge& upload_store_tensors;        // nt_upload_store_tensors
  Counter& auth_failures;             // nt_auth_failures_total
  GaugeFamily& build_info;            // nt_build_info{version} = 1

 private:
  mutable absl::Mutex hook_mu_;
  std::function<void()> scrape_hook_ ABSL_GUARDED_BY(hook_mu_);
};

// Times one call: in flight from construction; Finish (or the destructor, with code "UNKNOWN" unless
// set_code was called) counts it in nt_requests_total{method,code}, observes its duration and leaves the
// in-flight gauge. A null `metrics` makes it a no-op. Finish is idempotent.
class RequestTimer {
 public:
  RequestTimer(ServerMetrics* metrics, absl::string_view method);
  ~RequestTimer() { Finish(code_); }
  RequestTimer(const RequestTimer&) = delete;
  RequestTimer& operator=(const RequestTimer&) = delete;

  // The code the destructor records (e.g. set on each return path's status).
  void set_code(absl::string_view code_name) { code_ = std::string(code_name); }
  void Finish(absl::string_view code_name);
  // Seconds since construction.
  double ElapsedSeconds() const;

 private:
  ServerMetrics* metrics_;
  std::string method_;
  std::string code_ = "UNKNOWN";
  Gauge* in_flight_ = nullptr;
  std::chrono::steady_clock::time_point start_;
  bool finished_ = false;
};

// Process metrics as read now (Linux /proc, getrusage); NaN when unavailable, and the sample is then left
// out of Render.
double ProcessResidentMemoryBytes();
double ProcessCpuSeconds();
double ProcessStartTimeSeconds();
double ProcessOpenFds();

}  // namespace nt::server

#endif  // NT_SERVER_METRICS_H_
