#include "core/requirements.h"

#include "gtest/gtest.h"

namespace nt {
namespace {

std::vector<Diagonal> AllDiagonals() {
  std::vector<Diagonal> out;
  for (Bool i : {Bool::kNo, Bool::kMaybe, Bool::kYes}) {
    for (Bool o : {Bool::kNo, Bool::kMaybe, Bool::kYes}) out.push_back(Diagonal{i, o});
  }
  return out;
}

TEST(DiagonalTest, ComposeIsAssociativeOnAll729Triples) {
  for (const Diagonal& a : AllDiagonals()) {
    for (const Diagonal& b : AllDiagonals()) {
      for (const Diagonal& c : AllDiagonals()) {
        EXPECT_EQ(Compose(Compose(a, b), c), Compose(a, Compose(b, c)))
            << DiagonalToString(a) << DiagonalToString(b) << DiagonalToString(c);
      }
    }
  }
}

TEST(DiagonalTest, UpstreamExamples) {
  const Diagonal conv{Bool::kYes, Bool::kNo}, act{}, gap{Bool::kMaybe, Bool::kYes},
      flatten{Bool::kYes, Bool::kYes}, local{Bool::kYes, Bool::kMaybe}, pool{Bool::kMaybe, Bool::kNo};
  EXPECT_TRUE(Compose(Compose(conv, act), flatten).AsBool());                      // Conv, Relu, Flatten
  EXPECT_EQ(Compose(Compose(conv, act), gap), (Diagonal{Bool::kNo, Bool::kYes}));  // ... GlobalAvgPool
  EXPECT_FALSE(Compose(Compose(conv, act), gap).AsBool());
  EXPECT_TRUE(Compose(local, gap).AsBool());
  EXPECT_TRUE(Compose(Compose(local, pool), flatten).AsBool());
  EXPECT_FALSE(Compose(Compose(Compose(local, pool), pool), flatten).AsBool());
  EXPECT_FALSE(Diagonal{}.AsBool());
}

TEST(RequirementsTest, FirstAxisDeclarationWinsInSerial) {
  Requirements a, b;
  b.channel_axis = 0;
  b.batch_axis = 1;
  Requirements c;
  c.channel_axis = -1;
  Requirements r = FoldSerial(FoldSerial(a, b), c);
  EXPECT_EQ(r.channel_axis, 0);
  EXPECT_EQ(r.batch_axis, 1);
  Requirements flatten;
  flatten.flatten_input = true;
  r = FoldSerial(flatten, c);
  EXPECT_TRUE(r.flatten_input);
  EXPECT_FALSE(r.channel_axis.has_value());
}

TEST(RequirementsTest, DiagonalBatchFoldsWithAnd) {
  Requirements t, f;
  t.diagonal_batch = true;
  f.diagonal_batch = false;
  EXPECT_EQ(FoldSerial(t, t).diagonal_batch, true);
  EXPECT_EQ(FoldSerial(t, f).diagonal_batch, false);
  EXPECT_EQ(FoldParallel(f, t).diagonal_batch, false);
}

}  // namespace
}  // namespace nt
