// Bearer-token authentication for the RPCs: the tokens come from a file, one per line. No gRPC
// dependency; the caller passes the value of the "authorization" metadata.
#ifndef NT_SERVER_AUTH_H_
#define NT_SERVER_AUTH_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace nt::server {

class TokenAuthenticator {
 public:
  // Reads `path`: one token per line; surrounding whitespace is trimmed, blank lines and lines starting
  // with '#' are ignored. Fails, naming the file, if it cannot be read, holds no token, or a token
  // contains whitespace or control characters.
  static absl::StatusOr<TokenAuthenticator> FromFile(const std::string& path);
  // The same checks on tokens given directly (`source` names them in errors).
  static absl::StatusOr<TokenAuthenticator> FromTokens(std::vector<std::string> tokens,
                                                       absl::string_view source = "token list");

  // OK iff `authorization_value` is "Bearer <token>" (scheme case-insensitive, surrounding whitespace
  // ignored) for one of the tokens. Every token is compared in constant time, without early exit. An empty
  // value means the metadata is missing. Errors are UNAUTHENTICATED and never contain the presented value.
  absl::Status Check(absl::string_view authorization_value) const;

  size_t num_tokens() const { return tokens_.size(); }

 private:
  explicit TokenAuthenticator(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {}

  std::vector<std::string> tokens_;
};

}  // namespace nt::server

#endif  // NT_SERVER_AUTH_H_
