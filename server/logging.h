// Minimal structured logging to stderr (Debian's abseil 20220623 predates absl/log).
#ifndef NT_SERVER_LOGGING_H_
#define NT_SERVER_LOGGING_H_

#include "absl/base/log_severity.h"
#include "absl/strings/string_view.h"

namespace nt::server {

// One line: "<RFC3339 time> <severity> <message>"; thread-safe.
void Log(absl::LogSeverity severity, absl::string_view message);
inline void LogInfo(absl::string_view m) { Log(absl::LogSeverity::kInfo, m); }
inline void LogError(absl::string_view m) { Log(absl::LogSeverity::kError, m); }

}  // namespace nt::server

#endif  // NT_SERVER_LOGGING_H_
