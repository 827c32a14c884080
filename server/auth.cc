#include "server/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace nt::server {
namespace {

constexpr size_t kMaxFileBytes = 1 << 20;
constexpr size_t kMaxValueBytes = 8 << 10;

// Tokens travel in gRPC metadata: visible ASCII only.
bool ValidToken(absl::string_view token) {
  return !token.empty() && std::all_of(token.begin(), token.end(), [](char c) { return c > ' ' && c < 127; });
}

// Equal iff same length and bytes; the time depends on the lengths only, never on where they differ.
bool ConstantTimeEquals(absl::string_view expected, absl::string_view presented) {
  volatile unsigned char diff = expected.size() == presented.size() ? 0 : 1;
  const size_t n = presented.size();
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char p = n > 0 ? static_cast<unsigned char>(presented[i < n ? i : 0]) : 0;
    diff = diff | (static_cast<unsigned char>(expected[i]) ^ p);
  }
  return diff == 0;
}

absl::Status ReadFile(const std::string& path, std::string* out) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string why = std::strerror(errno);
    const std::string msg = absl::StrCat("cannot open token file '", path, "': ", why);
    return errno == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrCat("token file '", path, "' is not a regular file"));
  }
  char buf[4096];
  for (;;) {
    const ssize_t got = read(fd, buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const std::string why = std::strerror(errno);
      close(fd);
      return absl::FailedPreconditionError(absl::StrCat("cannot read token file '", path, "': ", why));
    }
    if (got == 0) break;
    out->append(buf, static_cast<size_t>(got));
    if (out->size() > kMaxFileBytes) {
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("token file '", path, "' is larger than ", kMaxFileBytes >> 20, " MiB"));
    }
  }
  close(fd);
  return absl::OkStatus();
}

absl::Status Unauthenticated(absl::string_view msg) { return absl::UnauthenticatedError(msg); }

}  // namespace

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::FromFile(const std::string& path) {
  std::string text;
  if (absl::Status s = ReadFile(path, &text); !s.ok()) return s;
  std::vector<std::string> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    if (!ValidToken(line)) {
      // Never echo the token itself.
      return absl::InvalidArgumentError(absl::StrCat("token file '", path, "' line ", line_number,
                                                     ": a token may only contain visible ASCII characters, "
                                                     "without spaces"));
    }
    tokens.emplace_back(line);
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file '", path,
                     "' has no token (one per line; blank lines and lines starting with # are ignored)"));
  }
  return FromTokens(std::move(tokens), absl::StrCat("token file '", path, "'"));
}

absl::StatusOr<TokenAuthenticator> TokenAuthenticator::FromTokens(std::vector<std::string> tokens,
                                                                  absl::string_view source) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!ValidToken(tokens[i])) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": token ", i + 1,
                                                     " is empty or contains characters other than visible "
                                                     "ASCII without spaces"));
    }
  }
  if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no token"));
  std::sort(tokens.begin(), tokens.end());
  tokens.erase(std::unique(tokens.begin(), tokens.end()), tokens.end());
  return TokenAuthenticator(std::move(tokens));
}

absl::Status TokenAuthenticator::Check(absl::string_view authorization_value) const {
  const absl::string_view value = absl::StripAsciiWhitespace(authorization_value);
  if (value.empty()) {
    return Unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'");
  }
  const size_t space = value.find_first_of(" \t");
  if (space == absl::string_view::npos || !absl::EqualsIgnoreCase(value.substr(0, space), "bearer")) {
    return Unauthenticated("authorization metadata must be 'Bearer <token>'");
  }
  const absl::string_view token = absl::StripLeadingAsciiWhitespace(value.substr(space));
  if (token.size() > kMaxValueBytes) return Unauthenticated("invalid bearer token");
  unsigned matches = 0;
  for (const std::string& t : tokens_) matches |= ConstantTimeEquals(t, token) ? 1u : 0u;
  if (matches == 0) return Unauthenticated("invalid bearer token");
  return absl::OkStatus();
}

}  // namespace nt::server
