#include "server/logging.h"

#include <cstdio>
#include <mutex>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace nt::server {

void Log(absl::LogSeverity severity, absl::string_view message) {
  static std::mutex mu;
  const std::string t = absl::FormatTime("%Y-%m-%dT%H:%M:%E3S%Ez", absl::Now(), absl::UTCTimeZone());
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "%s %s %.*s\n", t.c_str(), absl::LogSeverityName(severity),
               static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace nt::server
