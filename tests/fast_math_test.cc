#include "core/fast_math.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

// Distance in units in the last place.
double Ulps(double got, double want) {
  return std::abs(got - want) / (std::nextafter(std::abs(want), INFINITY) - std::abs(want));
}

TEST(FastMathTest, Atan2MatchesLibmWithinTwoUlpsOverScales) {
  const Array u = RngKey(3).Uniform({400000});
  double worst = 0;
  for (int64_t i = 0; i + 1 < u.size(); i += 2) {
    // Magnitudes from 1e-12 to 1e12 and both signs of x and y.
    const double y = std::pow(10.0, 24 * u[i] - 12) * (i % 4 == 0 ? -1 : 1);
    const double x = std::pow(10.0, 24 * u[i + 1] - 12) * (i % 3 == 0 ? -1 : 1);
    worst = std::max(worst, Ulps(Atan2(y, x), std::atan2(y, x)));
    worst = std::max(worst, Ulps(Atan2NonNegative(std::abs(y), x), std::atan2(std::abs(y), x)));
  }
  EXPECT_LE(worst, 2.0);
}

TEST(FastMathTest, Atan2EdgeCases) {
  EXPECT_EQ(Atan2NonNegative(0.0, 0.0), M_PI_2);  // Orthogonal zero vectors (upstream's convention).
  EXPECT_EQ(Atan2NonNegative(0.0, 1.0), 0.0);
  EXPECT_EQ(Atan2NonNegative(0.0, -1.0), M_PI);
  EXPECT_EQ(Atan2NonNegative(1.0, 0.0), M_PI_2);
  EXPECT_NEAR(Atan2NonNegative(1.0, 1.0), M_PI_4, 1e-16);
  EXPECT_NEAR(Atan2NonNegative(1.0, -1.0), 3 * M_PI_4, 4e-16);
  EXPECT_EQ(Atan2(-0.0, 1.0), -0.0);
  EXPECT_NEAR(Atan2(-1.0, 1.0), -M_PI_4, 1e-16);
  const double tiny = std::numeric_limits<double>::denorm_min();
  EXPECT_NEAR(Atan2NonNegative(tiny, 1.0), tiny, tiny);
  EXPECT_NEAR(Atan2NonNegative(1.0, tiny), M_PI_2, 1e-16);
}

TEST(FastMathTest, ExpMatchesLibmWithinTwoUlps) {
  const Array u = RngKey(5).Uniform({200000});
  double worst = 0;
  for (int64_t i = 0; i < u.size(); ++i) {
    const double x = i % 2 ? 1490 * u[i] - 745 : 20 * u[i] - 10;  // Whole range, and the common one.
    worst = std::max(worst, Ulps(Exp(x), std::exp(x)));
  }
  EXPECT_LE(worst, 2.0);
}

TEST(FastMathTest, ExpEdgeCases) {
  EXPECT_EQ(Exp(0.0), 1.0);
  EXPECT_EQ(Exp(-0.0), 1.0);
  EXPECT_EQ(Exp(710.0), INFINITY);
  EXPECT_EQ(Exp(INFINITY), INFINITY);
  EXPECT_EQ(Exp(-INFINITY), 0.0);
  EXPECT_EQ(Exp(-746.0), 0.0);
  EXPECT_TRUE(std::isnan(Exp(NAN)));
  EXPECT_EQ(Exp(709.78), std::exp(709.78));  // Largest finite results.
  EXPECT_EQ(Exp(-720.0), std::exp(-720.0));  // Subnormal results.
  EXPECT_EQ(Exp(-745.13), std::exp(-745.13));
}

}  // namespace
}  // namespace nt
