// Bearer-token authentication: the token file and the authorization metadata check.
#include "server/auth.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace nt::server {
namespace {

// Writes `text` to a fresh file under the test temp dir and returns its path.
std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/auth_test_", getpid(), "_", name);
  FILE* f = std::fopen(path.c_str(), "w");
  EXPECT_NE(f, nullptr) << path;
  if (f == nullptr) return path;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
  return path;
}

TEST(TokenAuthenticatorFileTest, ParsesTokensSkippingCommentsBlankLinesAndWhitespace) {
  const std::string path = WriteFile("tokens",
                                     "# nt-server tokens\n\n  alpha-token-1  \r\n\t# indented comment\n"
                                     "beta.token_2\n   \nalpha-token-1\ngamma");
  const absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ(auth->num_tokens(), 3u);  // The duplicate counts once.
  EXPECT_TRUE(auth->Check("Bearer alpha-token-1").ok());
  EXPECT_TRUE(auth->Check("Bearer beta.token_2").ok());
  EXPECT_TRUE(auth->Check("Bearer gamma").ok());  // Last line without a newline.
  EXPECT_FALSE(auth->Check("Bearer # nt-server tokens").ok());
  EXPECT_FALSE(auth->Check("Bearer #").ok());
  std::remove(path.c_str());
}

TEST(TokenAuthenticatorFileTest, MissingFileIsNotFoundAndNamesTheFile) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/auth_test_does_not_exist");
  const absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::FromFile(path);
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(auth.status().message(), path)) << auth.status();
}

TEST(TokenAuthenticatorFileTest, DirectoryIsRejectedAndNamed) {
  const std::string dir = ::testing::TempDir();
  const absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::FromFile(dir);
  ASSERT_FALSE(auth.ok());
  EXPECT_TRUE(absl::StrContains(auth.status().message(), dir)) << auth.status();
}

TEST(TokenAuthenticatorFileTest, FileWithoutTokensIsRejectedAndNamed) {
  for (const std::string text : {"", "\n\n", "# only a comment\n   \n#another\n"}) {
    const std::string path = WriteFile("empty", text);
    const absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::FromFile(path);
    ASSERT_FALSE(auth.ok()) << "'" << text << "'";
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(auth.status().message(), path)) << auth.status();
    EXPECT_TRUE(absl::StrContains(auth.status().message(), "no token")) << auth.status();
    std::remove(path.c_str());
  }
}

TEST(TokenAuthenticatorFileTest, TokenWithInnerSpaceIsRejectedWithItsLineButNotEchoed) {
  const std::string path = WriteFile("spaced", "good\nsecret with space\n");
  const absl::StatusOr<TokenAuthenticator> auth = TokenAuthenticator::FromFile(path);
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(auth.status().message(), path)) << auth.status();
  EXPECT_TRUE(absl::StrContains(auth.status().message(), "line 2")) << auth.status();
  EXPECT_FALSE(absl::StrContains(auth.status().message(), "secret")) << auth.status();
  std::remove(path.c_str());
}

TEST(TokenAuthenticatorTest, FromTokensRejectsEmptyListsAndTokens) {
  EXPECT_FALSE(TokenAuthenticator::FromTokens({}).ok());
  EXPECT_FALSE(TokenAuthenticator::FromTokens({"ok", ""}).ok());
  EXPECT_FALSE(TokenAuthenticator::FromTokens({"tab\there"}).ok());
  EXPECT_TRUE(TokenAuthenticator::FromTokens({"ok"}).ok());
}

class TokenAuthenticatorCheckTest : public ::testing::Test {
 protected:
  TokenAuthenticator auth_ = *TokenAuthenticator::FromTokens({"s3cret-A", "other-token"});
};

TEST_F(TokenAuthenticatorCheckTest, AcceptsEveryConfiguredToken) {
  EXPECT_TRUE(auth_.Check("Bearer s3cret-A").ok());
  EXPECT_TRUE(auth_.Check("Bearer other-token").ok());
}

TEST_F(TokenAuthenticatorCheckTest, SchemeIsCaseInsensitiveAndWhitespaceTolerated) {
  EXPECT_TRUE(auth_.Check("bearer s3cret-A").ok());
  EXPECT_TRUE(auth_.Check("BEARER s3cret-A").ok());
  EXPECT_TRUE(auth_.Check("BeArEr   s3cret-A  ").ok());
  EXPECT_TRUE(auth_.Check("  Bearer\ts3cret-A").ok());
}

TEST_F(TokenAuthenticatorCheckTest, TokenIsCaseSensitive) {
  const absl::Status s = auth_.Check("Bearer S3CRET-A");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(s.message(), "invalid bearer token");
}

TEST_F(TokenAuthenticatorCheckTest, WrongTokensAreRejectedWithoutEchoingThem) {
  const std::string huge = absl::StrCat("Bearer ", std::string(100000, 'y'));
  for (const std::string& value :
       {std::string("Bearer nope-nope-nope"), std::string("Bearer s3cret-"), std::string("Bearer s3cret-AB"),
        std::string("Bearer s3cret-A x"), std::string("Bearer x"), huge}) {
    const absl::Status s = auth_.Check(value);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << value;
    EXPECT_EQ(s.message(), "invalid bearer token");
  }
}

TEST_F(TokenAuthenticatorCheckTest, MissingValueAsksForTheHeader) {
  for (const char* value : {"", "   "}) {
    const absl::Status s = auth_.Check(value);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(s.message(), "missing authorization metadata: send 'authorization: Bearer <token>'");
  }
}

TEST_F(TokenAuthenticatorCheckTest, OtherSchemesAndBareTokensAreRejectedWithoutEchoing) {
  for (const char* value : {"s3cret-A", "Basic s3cret-A", "Token s3cret-A", "Bearer", "Bearers s3cret-A"}) {
    const absl::Status s = auth_.Check(value);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << value;
    EXPECT_FALSE(absl::StrContains(s.message(), "s3cret")) << s;
  }
  EXPECT_EQ(auth_.Check("Basic s3cret-A").message(), "authorization metadata must be 'Bearer <token>'");
}

}  // namespace
}  // namespace nt::server
