// Reading and writing NumPy .npy files and .npz archives.
//
// An NpyArray keeps the raw little-endian C-order bytes together with the NumPy dtype string, so
// arrays round-trip without conversion; AsDoubles() / FromDoubles() are the convenience views the
// client uses. Supported dtypes: "<f8", "<f4", "|b1", "<i8" (big-endian files of the same kinds are
// byte-swapped on read). Fortran-order arrays are rejected with InvalidArgument.
//
// .npz: members stored or deflated are read (ZIP64 included); members are written stored (no
// compression), with CRC-32 and ZIP64 records when sizes or offsets need them, so numpy.load reads
// the result. Keys are member names without the ".npy" suffix, as numpy.load presents them.
#ifndef NT_CLIENT_CPP_NPY_H_
#define NT_CLIENT_CPP_NPY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace nt::client {

struct NpyArray {
  std::vector<int64_t> shape;  // Empty: a scalar (one element).
  std::string dtype;           // "<f8", "<f4", "|b1" or "<i8".
  std::vector<char> bytes;     // Little-endian, C order, num_elements() * item_size() bytes.

  int64_t num_elements() const;
  // Bytes per element of `dtype`; 0 for an unsupported dtype.
  int item_size() const;
  // Every element converted to double (bools as 0/1).
  absl::StatusOr<std::vector<double>> AsDoubles() const;

  static NpyArray FromDoubles(std::vector<int64_t> shape, const std::vector<double>& values);
  static NpyArray FromFloats(std::vector<int64_t> shape, const std::vector<float>& values);
  static NpyArray FromBools(std::vector<int64_t> shape, const std::vector<bool>& values);
  static NpyArray FromInt64s(std::vector<int64_t> shape, const std::vector<int64_t>& values);
  // Zero-filled array of the given dtype (which must be supported).
  static NpyArray Zeros(std::vector<int64_t> shape, absl::string_view dtype);
};

// Bytes per element of a supported dtype string, 0 otherwise.
int NpyItemSize(absl::string_view dtype);

// Checks dtype support and that bytes.size() matches the shape.
absl::Status ValidateNpyArray(const NpyArray& array);

// Whole .npy file contents <-> array.
absl::StatusOr<NpyArray> ParseNpy(absl::string_view data);
absl::StatusOr<std::string> SerializeNpy(const NpyArray& array);

absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

// A .npy file of known shape and dtype filled piece by piece, for arrays larger than memory: Create()
// writes the header and sizes the data area (a sparse file of zeros); Write() pwrite()s bytes at an offset
// into the data area and may be called from several threads at once for disjoint ranges.
class NpyFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<NpyFileWriter>> Create(const std::string& path,
                                                               std::vector<int64_t> shape,
                                                               absl::string_view dtype);
  ~NpyFileWriter();
  NpyFileWriter(const NpyFileWriter&) = delete;
  NpyFileWriter& operator=(const NpyFileWriter&) = delete;

  // `size` bytes at byte `offset` of the data area (row-major element index times the item size).
  absl::Status Write(int64_t offset, const void* data, size_t size);
  // Closes the file, reporting a failed close. Further writes fail.
  absl::Status Close();

  const std::string& path() const { return path_; }
  int64_t data_bytes() const { return data_bytes_; }

 private:
  NpyFileWriter(std::string path, int fd, int64_t header_bytes, int64_t data_bytes)
      : path_(std::move(path)), fd_(fd), header_bytes_(header_bytes), data_bytes_(data_bytes) {}

  std::string path_;
  int fd_ = -1;
  int64_t header_bytes_ = 0;
  int64_t data_bytes_ = 0;
};

// Whole .npz file contents -> arrays keyed by member name minus ".npy".
absl::StatusOr<std::map<std::string, NpyArray>> ParseNpz(absl::string_view data);
absl::StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path);
// Writes the arrays as stored members "<key>.npy". Keys must be non-empty and must not contain '/'.
absl::Status WriteNpz(const std::string& path, const std::map<std::string, NpyArray>& arrays);

// Shape as "(2, 3)" / "(4,)" / "()", as NumPy prints it.
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace nt::client

#endif  // NT_CLIENT_CPP_NPY_H_
