#include "core/array.h"

#include <thread>

#include "core/kernel.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

Array Iota(Shape s) {
  Array a(s);
  for (int64_t i = 0; i < a.size(); ++i) a[i] = static_cast<double>(i);
  return a;
}

TEST(ArrayTest, TransposeMatchesNumpy) {
  Array a = Iota({2, 3, 4});
  Array t = Transpose(a, std::vector<int>{2, 0, 1});
  ASSERT_EQ(t.shape(), (Shape{4, 2, 3}));
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) EXPECT_EQ(t[(k * 2 + i) * 3 + j], a[(i * 3 + j) * 4 + k]);
}

TEST(ArrayTest, PlaceBlockMirrorsFullSpatialPairs) {
  // A 2 x 3 tile of a (N1, N2, s, s') array placed at (0, 2) and mirrored to (2, 0).
  Array full({5, 5, 2, 2}, -1.0);
  Array block = Iota({2, 3, 2, 2});
  PlaceBlock(block, 2, 0, 2, false, true, &full);
  PlaceBlock(block, 2, 0, 2, true, true, &full);
  auto at = [&](int i, int j, int h, int hp) { return full[((i * 5 + j) * 2 + h) * 2 + hp]; };
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int h = 0; h < 2; ++h)
        for (int hp = 0; hp < 2; ++hp) {
          const double v = block[((i * 3 + j) * 2 + h) * 2 + hp];
          EXPECT_EQ(at(i, 2 + j, h, hp), v);
          EXPECT_EQ(at(2 + j, i, hp, h), v);
        }
}

TEST(ArrayTest, PlaceBlockRowsOnly) {
  Array full({4, 3}, 0.0);
  PlaceBlock(Iota({2, 3}), 1, 2, 0, false, false, &full);
  EXPECT_EQ(full[6], 0.0);
  EXPECT_EQ(full[11], 5.0);
}

TEST(ArrayTest, LargeBlocksAreReusedAcrossThreadsUpToTheSharedCapacity) {
  const size_t bytes = size_t{48} << 20;  // Above the per-thread caches: the shared cache.
  SetSharedBlockCacheBytes(size_t{64} << 20);
  void* first = AllocateBlock(bytes);
  static_cast<char*>(first)[bytes - 1] = 1;
  std::thread([&] { FreeBlock(first, bytes); }).join();
  void* again = AllocateBlock(bytes);
  EXPECT_EQ(again, first);  // Freed on another thread, taken back here: no fresh pages.
  static_cast<char*>(again)[0] = 2;
  void* other = AllocateBlock(bytes);
  EXPECT_NE(other, again);
  FreeBlock(again, bytes);
  FreeBlock(other, bytes);  // Evicts `again`: two would exceed 64 MiB.
  void* reused = AllocateBlock(bytes);
  EXPECT_EQ(reused, other);
  FreeBlock(reused, bytes);
  SetSharedBlockCacheBytes(0);  // Frees everything cached; nothing is kept any more.
  void* fresh = AllocateBlock(bytes);
  FreeBlock(fresh, bytes);
  SetSharedBlockCacheBytes(DefaultSharedBlockCacheBytes());
}

TEST(KernelTest, GetDiagonalOfFullSpatialCovariance) {
  // cov (N=1, N=1, s1, s1', s2, s2') with full batch.
  Array cov = Iota({1, 1, 2, 2, 3, 3});
  Array d = GetDiagonal(cov, 2, false, 2);
  ASSERT_EQ(d.shape(), (Shape{1, 2, 3}));
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 3; ++b) EXPECT_EQ(d[a * 3 + b], cov[((a * 2 + a) * 3 + b) * 3 + b]);
}

TEST(KernelTest, ReverseTwiceIsIdentity) {
  Kernel k;
  k.nngp = Iota({2, 2, 2, 2, 3, 3});
  k.cov1 = Iota({2, 2, 2, 3, 3});
  k.diagonal_spatial = false;
  const Array before = k.nngp;
  k.Reverse();
  EXPECT_TRUE(k.is_reversed);
  EXPECT_EQ(k.nngp.shape(), (Shape{2, 2, 3, 3, 2, 2}));
  k.Reverse();
  EXPECT_EQ(k.nngp.vec(), before.vec());
}

}  // namespace
}  // namespace nt
