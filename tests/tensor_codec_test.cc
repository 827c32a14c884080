// server/tensor_codec: decoding request tensors, inline or by upload handle.
#include "server/tensor_codec.h"

#include <chrono>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "server/tensor_store.h"

namespace nt::server {
namespace {

std::string PutValues(TensorStore& store, const std::vector<double>& values) {
  StoredTensor t;
  t.values = Array(Shape{static_cast<int64_t>(values.size())}, values);
  auto handle = store.Put(std::move(t));
  EXPECT_TRUE(handle.ok()) << handle.status();
  return *handle;
}

nt::v1::Tensor ByHandle(const std::string& handle) {
  nt::v1::Tensor t;
  t.set_handle(handle);
  return t;
}

TEST(DecodeSharedTensorTest, AHandleSharesTheStoredValuesAndOutlivesARelease) {
  TensorStore store(1 << 20, std::chrono::seconds(0));
  const std::string handle = PutValues(store, {1.5, -2.0, 3.25});
  auto stored = store.Get(handle);
  ASSERT_TRUE(stored.ok());
  auto shared = DecodeSharedTensor(ByHandle(handle), "x1", false, &store);
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ((*shared)->data(), (*stored)->values.data());  // The same memory: nothing was copied.
  stored->reset();
  EXPECT_TRUE(store.Release(handle));
  EXPECT_EQ((*shared)->shape(), Shape({3}));
  EXPECT_EQ((**shared)[1], -2.0);
  // DecodeTensor gives the same values, as a copy.
  const std::string again = PutValues(store, {4.0});
  auto copy = DecodeTensor(ByHandle(again), "x1", false, &store);
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ((*copy)[0], 4.0);
}

TEST(DecodeSharedTensorTest, InlineTensorsAndErrorsAreDecodeTensors) {
  TensorStore store(1 << 20, std::chrono::seconds(0));
  nt::v1::Tensor inline_tensor;
  inline_tensor.add_shape(2);
  inline_tensor.set_dtype(nt::v1::FLOAT64);
  const double values[2] = {0.5, 7.0};
  inline_tensor.set_data(reinterpret_cast<const char*>(values), sizeof(values));
  auto shared = DecodeSharedTensor(inline_tensor, "x2", false, &store);
  ASSERT_TRUE(shared.ok()) << shared.status();
  EXPECT_EQ((**shared)[1], 7.0);

  auto missing = DecodeSharedTensor(ByHandle("no-such-handle"), "x1", false, &store);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("x1.handle"), std::string::npos) << missing.status();

  nt::v1::Tensor both = ByHandle(PutValues(store, {1.0}));
  both.add_shape(1);
  auto conflicting = DecodeSharedTensor(both, "x1", false, &store);
  EXPECT_EQ(conflicting.status().code(), absl::StatusCode::kInvalidArgument);

  auto no_store = DecodeSharedTensor(ByHandle("h"), "pattern1", true, nullptr);
  EXPECT_EQ(no_store.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_store.status().message().find("pattern1.handle"), std::string::npos);
}

}  // namespace
}  // namespace nt::server
