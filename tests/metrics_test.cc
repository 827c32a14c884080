// The Prometheus registry (text exposition format 0.0.4, exactly), ServerMetrics and RequestTimer.
#include "server/metrics.h"

#include <cmath>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace nt::server {
namespace {

// The value of the sample line that starts with `series` followed by a space; NaN if absent.
double SampleValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = NAN;
      if (!absl::SimpleAtod(line.substr(series.size() + 1), &v)) return NAN;
      return v;
    }
  }
  return NAN;
}

TEST(MetricsRegistryTest, CounterWithLabelsRendersExactly) {
  MetricsRegistry r;
  CounterFamily& c = r.AddCounter("rpc_total", "RPCs handled.", {"method", "code"});
  c.WithLabels({"Describe", "OK"}).Increment();
  c.WithLabels({"Describe", "OK"}).Increment(2);
  c.WithLabels({"Apply", "INVALID_ARGUMENT"}).Increment();
  c.WithLabels({"Apply", "INVALID_ARGUMENT"}).Increment(-5);  // Ignored: counters never go down.
  EXPECT_EQ(r.Render(),
            "# HELP rpc_total RPCs handled.\n"
            "# TYPE rpc_total counter\n"
            "rpc_total{method=\"Apply\",code=\"INVALID_ARGUMENT\"} 1\n"
            "rpc_total{method=\"Describe\",code=\"OK\"} 3\n");
}

TEST(MetricsRegistryTest, UnlabelledFamiliesRenderZeroFromTheStartInRegistrationOrder) {
  MetricsRegistry r;
  Gauge& g = r.AddGauge("queue_depth", "Items waiting.").Get();
  r.AddCounter("bytes_total", "Bytes sent.");
  EXPECT_EQ(r.Render(),
            "# HELP queue_depth Items waiting.\n# TYPE queue_depth gauge\nqueue_depth 0\n"
            "# HELP bytes_total Bytes sent.\n# TYPE bytes_total counter\nbytes_total 0\n");
  g.Set(2.5);
  g.Add(-4);
  EXPECT_EQ(g.value(), -1.5);
  EXPECT_TRUE(absl::StrContains(r.Render(), "\nqueue_depth -1.5\n"));
}

TEST(MetricsRegistryTest, LabelledFamilyWithoutChildrenRendersOnlyHelpAndType) {
  MetricsRegistry r;
  r.AddGauge("in_flight", "Calls now.", {"method"});
  EXPECT_EQ(r.Render(), "# HELP in_flight Calls now.\n# TYPE in_flight gauge\n");
}

TEST(MetricsRegistryTest, EscapesLabelValuesAndHelp) {
  MetricsRegistry r;
  r.AddCounter("odd_total", "Help with \\ backslash\nand newline \"quoted\".", {"v"})
      .WithLabels({"a\\b\"c\"\nd"})
      .Increment();
  EXPECT_EQ(r.Render(),
            "# HELP odd_total Help with \\\\ backslash\\nand newline \"quoted\".\n"
            "# TYPE odd_total counter\n"
            "odd_total{v=\"a\\\\b\\\"c\\\"\\nd\"} 1\n");
}

TEST(MetricsRegistryTest, HistogramBucketsAreCumulativeWithInf) {
  MetricsRegistry r;
  HistogramFamily& h = r.AddHistogram("latency_seconds", "Latency.", {"method"}, {1, 2.5, 10});
  Histogram& child = h.WithLabels({"Get"});
  for (double v : {0.5, 1.0, 5.0, 100.0}) child.Observe(v);  // 1.0 lands in le="1": bounds are inclusive.
  child.Observe(NAN);                                        // Ignored.
  EXPECT_EQ(r.Render(),
            "# HELP latency_seconds Latency.\n"
            "# TYPE latency_seconds histogram\n"
            "latency_seconds_bucket{method=\"Get\",le=\"1\"} 2\n"
            "latency_seconds_bucket{method=\"Get\",le=\"2.5\"} 2\n"
            "latency_seconds_bucket{method=\"Get\",le=\"10\"} 3\n"
            "latency_seconds_bucket{method=\"Get\",le=\"+Inf\"} 4\n"
            "latency_seconds_sum{method=\"Get\"} 106.5\n"
            "latency_seconds_count{method=\"Get\"} 4\n");
}

TEST(MetricsRegistryTest, UnlabelledHistogramPutsOnlyLeInBraces) {
  MetricsRegistry r;
  r.AddHistogram("size_bytes", "Sizes.", {}, {0.25}).Get().Observe(0.125);
  EXPECT_EQ(r.Render(),
            "# HELP size_bytes Sizes.\n# TYPE size_bytes histogram\n"
            "size_bytes_bucket{le=\"0.25\"} 1\nsize_bytes_bucket{le=\"+Inf\"} 1\n"
            "size_bytes_sum 0.125\nsize_bytes_count 1\n");
}

TEST(MetricsRegistryTest, DefaultLatencyBucketsSpanOneMillisecondToTenMinutes) {
  const std::vector<double>& b = DefaultLatencyBuckets();
  ASSERT_GE(b.size(), 10u);
  EXPECT_EQ(b.front(), 0.001);
  EXPECT_EQ(b.back(), 600);
  for (size_t i = 1; i < b.size(); ++i) {
    EXPECT_LT(b[i - 1], b[i]);
    EXPECT_LE(b[i] / b[i - 1], 5.0) << "gap at " << b[i];
  }
}

TEST(MetricsRegistryTest, CallbackValuesAreComputedAtRenderAndNanIsLeftOut) {
  MetricsRegistry r;
  double v = 1;
  r.AddCallback("computed", "Computed.", MetricType::kGauge, [&v] { return v; });
  r.AddCallback("absent", "Unavailable here.", MetricType::kCounter, [] { return NAN; });
  v = 7;
  EXPECT_EQ(r.Render(),
            "# HELP computed Computed.\n# TYPE computed gauge\ncomputed 7\n"
            "# HELP absent Unavailable here.\n# TYPE absent counter\n");
}

TEST(MetricsRegistryDeathTest, DuplicateOrInvalidNamesAbort) {
  MetricsRegistry r;
  r.AddCounter("x_total", "X.");
  EXPECT_DEATH(r.AddGauge("x_total", "Again."), "registered twice");
  EXPECT_DEATH(r.AddCounter("bad-name", "Dash."), "invalid metric name");
  EXPECT_DEATH(r.AddHistogram("h", "H.", {"le"}), "invalid label name 'le'");
}

TEST(FormatMetricValueTest, IntegersPlainOthersShortestRoundTrip) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(-0.0), "0");
  EXPECT_EQ(FormatMetricValue(123456789), "123456789");
  EXPECT_EQ(FormatMetricValue(8LL << 30), "8589934592");
  EXPECT_EQ(FormatMetricValue(0.001), "0.001");
  EXPECT_EQ(FormatMetricValue(-1.5), "-1.5");
  EXPECT_EQ(FormatMetricValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatMetricValue(1e20), "1e+20");
  EXPECT_EQ(FormatMetricValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatMetricValue(-INFINITY), "-Inf");
  EXPECT_EQ(FormatMetricValue(NAN), "NaN");
}

TEST(GrpcCodeNameTest, NamesEveryCode) {
  EXPECT_EQ(GrpcCodeName(0), "OK");
  EXPECT_EQ(GrpcCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(GrpcCodeName(8), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(GrpcCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(17), "UNKNOWN");
  EXPECT_EQ(GrpcCodeName(-1), "UNKNOWN");
}

TEST(MetricsConcurrencyTest, EightThreadsTimesTenThousandIncrementsAreExact) {
  MetricsRegistry r;
  CounterFamily& requests = r.AddCounter("req_total", "Requests.", {"method"});
  Counter& bytes = r.AddCounter("bytes_total", "Bytes.").Get();
  Gauge& in_flight = r.AddGauge("in_flight", "Now.").Get();
  HistogramFamily& latency = r.AddHistogram("lat_seconds", "Latency.", {"method"});
  constexpr int kThreads = 8;
  constexpr int kIncrements = 10000;
  std::atomic<bool> done{false};
  std::thread scraper([&] {  // Rendering concurrently must be safe.
    while (!done) EXPECT_FALSE(r.Render().empty());
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string method = t % 2 == 0 ? "Even" : "Odd";
      for (int i = 0; i < kIncrements; ++i) {
        in_flight.Increment();
        requests.WithLabels({method}).Increment();  // Looked up every time: exercises the child map.
        requests.WithLabels({"All"}).Increment();
        bytes.Increment(0.5);
        latency.WithLabels({method}).Observe(0.002);
        in_flight.Decrement();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  done = true;
  scraper.join();
  EXPECT_EQ(requests.WithLabels({"All"}).value(), kThreads * kIncrements);
  EXPECT_EQ(requests.WithLabels({"Even"}).value(), kThreads / 2 * kIncrements);
  EXPECT_EQ(requests.WithLabels({"Odd"}).value(), kThreads / 2 * kIncrements);
  EXPECT_EQ(bytes.value(), 0.5 * kThreads * kIncrements);
  EXPECT_EQ(in_flight.value(), 0);
  const std::string text = r.Render();
  EXPECT_TRUE(absl::StrContains(text, "req_total{method=\"All\"} 80000\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "lat_seconds_count{method=\"Even\"} 40000\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "lat_seconds_bucket{method=\"Odd\",le=\"0.001\"} 0\n")) << text;
  EXPECT_TRUE(absl::StrContains(text, "lat_seconds_bucket{method=\"Odd\",le=\"0.0025\"} 40000\n")) << text;
}

TEST(ServerMetricsTest, ExportsEveryFamilyWithHelpAndType) {
  ServerMetrics m("1.2.3");
  const std::string text = m.Render();
  const std::vector<std::pair<std::string, std::string>> families = {
      {"nt_requests_total", "counter"},           {"nt_request_duration_seconds", "histogram"},
      {"nt_requests_in_flight", "gauge"},         {"nt_tiles_total", "counter"},
      {"nt_response_bytes_total", "counter"},     {"nt_request_bytes_total", "counter"},
      {"nt_tile_queue_depth", "gauge"},           {"nt_memory_reserved_bytes", "gauge"},
      {"nt_memory_budget_bytes", "gauge"},        {"nt_uploads_total", "counter"},
      {"nt_upload_store_bytes", "gauge"},         {"nt_upload_store_tensors", "gauge"},
      {"nt_auth_failures_total", "counter"},      {"nt_build_info", "gauge"},
      {"process_resident_memory_bytes", "gauge"}, {"process_cpu_seconds_total", "counter"},
      {"process_start_time_seconds", "gauge"},    {"process_open_fds", "gauge"},
  };
  for (const auto& [name, type] : families) {
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("\n# HELP ", name, " ")) ||
                absl::StartsWith(text, absl::StrCat("# HELP ", name, " ")))
        << name;
    EXPECT_TRUE(absl::StrContains(text, absl::StrCat("# TYPE ", name, " ", type, "\n"))) << name;
  }
  EXPECT_EQ(SampleValue(text, "nt_build_info{version=\"1.2.3\"}"), 1);
  EXPECT_EQ(SampleValue(text, "nt_tiles_total"), 0);
  EXPECT_EQ(SampleValue(text, "nt_memory_budget_bytes"), 0);
  // Every line is a comment or "series value".
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t space = line.rfind(' ');
    ASSERT_NE(space, absl::string_view::npos) << line;
    double v;
    EXPECT_TRUE(absl::SimpleAtod(line.substr(space + 1), &v)) << line;
  }
}

TEST(ServerMetricsTest, ProcessMetricsArePresentAndPlausible) {
  ServerMetrics m("test");
  std::vector<char> touch(32 << 20, 1);  // Some resident memory.
  const std::string text = m.Render();
  const double rss = SampleValue(text, "process_resident_memory_bytes");
  const double cpu = SampleValue(text, "process_cpu_seconds_total");
  const double start = SampleValue(text, "process_start_time_seconds");
  const double fds = SampleValue(text, "process_open_fds");
  EXPECT_GE(rss, 32 << 20) << text;
  EXPECT_GE(cpu, 0) << text;
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(start, now + 1) << text;
  EXPECT_GT(start, now - 24 * 3600) << text;  // Started within the last day.
  EXPECT_GE(fds, 3) << text;                  // stdin, stdout, stderr at least.
  EXPECT_EQ(touch[touch.size() / 2], 1);
}

TEST(ServerMetricsTest, ScrapeHookRefreshesGaugesBeforeRendering) {
  ServerMetrics m("test");
  int64_t reserved = 0;
  m.SetScrapeHook([&] { m.memory_reserved_bytes.Set(static_cast<double>(reserved)); });
  reserved = 3 << 20;
  EXPECT_EQ(SampleValue(m.Render(), "nt_memory_reserved_bytes"), 3 << 20);
}

TEST(RequestTimerTest, FinishCountsObservesAndLeavesInFlight) {
  ServerMetrics m("test");
  {
    RequestTimer timer(&m, "ComputeKernel");
    EXPECT_EQ(m.in_flight.WithLabels({"ComputeKernel"}).value(), 1);
    timer.Finish("INVALID_ARGUMENT");
    timer.Finish("OK");  // Idempotent: the first code counts.
    EXPECT_EQ(m.in_flight.WithLabels({"ComputeKernel"}).value(), 0);
  }
  const std::string text = m.Render();
  EXPECT_EQ(SampleValue(text, "nt_requests_total{method=\"ComputeKernel\",code=\"INVALID_ARGUMENT\"}"), 1);
  EXPECT_TRUE(std::isnan(SampleValue(text, "nt_requests_total{method=\"ComputeKernel\",code=\"OK\"}")));
  EXPECT_EQ(SampleValue(text, "nt_request_duration_seconds_count{method=\"ComputeKernel\"}"), 1);
  EXPECT_EQ(SampleValue(text, "nt_request_duration_seconds_bucket{method=\"ComputeKernel\",le=\"+Inf\"}"), 1);
  EXPECT_EQ(SampleValue(text, "nt_requests_in_flight{method=\"ComputeKernel\"}"), 0);
}

TEST(RequestTimerTest, DestructorRecordsTheSetCodeOrUnknown) {
  ServerMetrics m("test");
  {
    RequestTimer timer(&m, "Describe");
    timer.set_code(GrpcCodeName(0));
  }
  { RequestTimer timer(&m, "Describe"); }
  EXPECT_EQ(m.requests.WithLabels({"Describe", "OK"}).value(), 1);
  EXPECT_EQ(m.requests.WithLabels({"Describe", "UNKNOWN"}).value(), 1);
  EXPECT_EQ(m.in_flight.WithLabels({"Describe"}).value(), 0);
}

TEST(RequestTimerTest, NullMetricsIsANoOp) {
  RequestTimer timer(nullptr, "Describe");
  timer.Finish("OK");
  EXPECT_GE(timer.ElapsedSeconds(), 0);
}

}  // namespace
}  // namespace nt::server
