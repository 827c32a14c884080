#include "client/cpp/npy.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nt::client {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// numpy aligns the data start to 64 bytes (ARRAY_ALIGN) since 1.14; older readers accept it too.
constexpr size_t kAlign = 64;

// ---- little-endian helpers ----

uint16_t Load16(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | (u[1] << 8));
}
uint32_t Load32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}
uint64_t Load64(const char* p) {
  return static_cast<uint64_t>(Load32(p)) | (static_cast<uint64_t>(Load32(p + 4)) << 32);
}
void Put16(std::string* s, uint16_t v) {
  s->push_back(static_cast<char>(v & 0xff));
  s->push_back(static_cast<char>(v >> 8));
}
void Put32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void Put64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// ---- .npy header dictionary: a Python dict literal such as
// {'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }

class HeaderParser {
 public:
  explicit HeaderParser(absl::string_view text) : text_(text) {}

  absl::Status Parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    SkipSpace();
    if (!Consume('{')) return Error("expected '{'");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      if (!ParseString(&key)) return Error("expected a quoted key");
      SkipSpace();
      if (!Consume(':')) return Error("expected ':'");
      SkipSpace();
      if (key == "descr") {
        if (!ParseString(descr)) {
          return absl::InvalidArgumentError(
              "npy: structured dtypes are not supported (descr is not a string)");
        }
        have_descr = true;
      } else if (key == "fortran_order") {
        if (text_.substr(pos_, 4) == "True") {
          *fortran = true;
          pos_ += 4;
        } else if (text_.substr(pos_, 5) == "False") {
          *fortran = false;
          pos_ += 5;
        } else {
          return Error("fortran_order must be True or False");
        }
        have_fortran = true;
      } else if (key == "shape") {
        absl::Status s = ParseShape(shape);
        if (!s.ok()) return s;
        have_shape = true;
      } else {
        return Error(absl::StrCat("unexpected key '", key, "'"));
      }
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Error("expected ',' or '}'");
    }
    if (!have_descr || !have_fortran || !have_shape) {
      return Error("missing one of 'descr', 'fortran_order', 'shape'");
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: bad header at offset ", pos_, ": ", what, " in ", text_));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool ParseString(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return false;
    *out = std::string(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return true;
  }
  absl::Status ParseShape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!Consume('(')) return Error("shape must be a tuple");
    while (true) {
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      if (pos_ >= text_.size() || !std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        return Error("expected a non-negative integer in shape");
      }
      int64_t v = 0;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) return Error("dimension overflow");
        v = v * 10 + (text_[pos_++] - '0');
      }
      Consume('L');  // Python 2 long suffix.
      shape->push_back(v);
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      return Error("expected ',' or ')' in shape");
    }
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

// Maps accepted descr spellings to the canonical little-endian dtype; sets *swap for big-endian.
bool CanonicalDtype(const std::string& descr, std::string* dtype, bool* swap) {
  *swap = false;
  if (descr == "|b1" || descr == "b1" || descr == "?" || descr == "<b1" || descr == "=b1") {
    *dtype = "|b1";
    return true;
  }
  if (descr.size() != 3) return false;
  const std::string kind = descr.substr(1);
  if (kind != "f8" && kind != "f4" && kind != "i8") return false;
  switch (descr[0]) {
    case '<':
    case '=':  // Native; every platform this runs on is little-endian.
      break;
    case '>':
      *swap = true;
      break;
    default:
      return false;
  }
  *dtype = "<" + kind;
  return true;
}

absl::StatusOr<int64_t> CheckedElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError("npy: negative dimension");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 16 / d) {
      return absl::InvalidArgumentError("npy: shape too large");
    }
    n *= d;
  }
  return n;
}

std::string NpyHeader(const std::vector<int64_t>& shape, absl::string_view dtype) {
  std::string dict =
      absl::StrCat("{'descr': '", dtype, "', 'fortran_order': False, 'shape': ", ShapeString(shape), ", }");
  // Version 1.0 stores the header length in 2 bytes; 2.0 in 4.
  const bool v2 = kMagicLen + 4 + dict.size() + 1 + kAlign > 65535;
  const size_t prefix = kMagicLen + 2 + (v2 ? 4 : 2);
  size_t total = prefix + dict.size() + 1;  // + '\n'
  const size_t padded = (total + kAlign - 1) / kAlign * kAlign;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  std::string out(kMagic, kMagicLen);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  if (v2) {
    Put32(&out, static_cast<uint32_t>(dict.size()));
  } else {
    Put16(&out, static_cast<uint16_t>(dict.size()));
  }
  out += dict;
  return out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::InternalError(absl::StrCat("cannot read ", path));
  in.seekg(0);
  std::string data(static_cast<size_t>(size), '\0');
  if (size > 0 && !in.read(data.data(), size)) {
    return absl::InternalError(absl::StrCat("cannot read ", path));
  }
  return data;
}

// zlib's length arguments are 32-bit; feed large buffers in pieces.
uint32_t Crc32(uint32_t crc, const char* data, size_t n) {
  return static_cast<uint32_t>(crc32_z(crc, reinterpret_cast<const Bytef*>(data), n));
}

absl::StatusOr<std::string> InflateRaw(absl::string_view in, uint64_t out_size) {
  std::string out(out_size, '\0');
  z_stream zs;
  std::memset(&zs, 0, sizeof(zs));
  // Negative window bits: raw deflate data, as stored in zip members.
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return absl::InternalError("npz: inflateInit2 failed");
  size_t in_pos = 0, out_pos = 0;
  int rc = Z_OK;
  constexpr size_t kChunk = 1u << 30;
  while (rc != Z_STREAM_END) {
    if (zs.avail_in == 0 && in_pos < in.size()) {
      const size_t n = std::min(kChunk, in.size() - in_pos);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + in_pos));
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    if (zs.avail_out == 0 && out_pos < out.size()) {
      const size_t n = std::min(kChunk, out.size() - out_pos);
      zs.next_out = reinterpret_cast<Bytef*>(out.data() + out_pos);
      zs.avail_out = static_cast<uInt>(n);
      out_pos += n;
    }
    const uInt before_in = zs.avail_in, before_out = zs.avail_out;
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError(absl::StrCat("npz: corrupt deflate data (zlib error ", rc,
                                                     zs.msg ? absl::StrCat(": ", zs.msg) : "", ")"));
    }
    if (rc != Z_STREAM_END && zs.avail_in == before_in && zs.avail_out == before_out) {
      inflateEnd(&zs);
      return absl::InvalidArgumentError("npz: truncated deflate data");
    }
  }
  const uint64_t produced = zs.total_out;
  inflateEnd(&zs);
  if (produced != out_size) {
    return absl::InvalidArgumentError("npz: inflated size differs from the directory entry");
  }
  return out;
}

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_offset = 0;
};

absl::Status Truncated() { return absl::InvalidArgumentError("npz: truncated or not a zip file"); }

// Central directory of a zip file (with ZIP64 support).
absl::StatusOr<std::vector<ZipEntry>> ReadCentralDirectory(absl::string_view data) {
  constexpr size_t kEocdSize = 22;
  if (data.size() < kEocdSize) return Truncated();
  // The end-of-central-directory record sits at the end, followed by a comment of at most 64 KiB.
  size_t eocd = absl::string_view::npos;
  const size_t lowest = data.size() > kEocdSize + 65535 ? data.size() - kEocdSize - 65535 : 0;
  for (size_t p = data.size() - kEocdSize + 1; p-- > lowest;) {
    if (Load32(data.data() + p) == 0x06054b50) {
      eocd = p;
      break;
    }
  }
  if (eocd == absl::string_view::npos) return Truncated();
  const char* e = data.data() + eocd;
  uint64_t count = Load16(e + 10);
  uint64_t cd_size = Load32(e + 12);
  uint64_t cd_offset = Load32(e + 16);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    // ZIP64 end-of-central-directory locator immediately precedes the classic record.
    if (eocd < 20 || Load32(e - 20) != 0x07064b50) return Truncated();
    const uint64_t z64 = Load64(e - 20 + 8);
    if (z64 + 56 > data.size() || Load32(data.data() + z64) != 0x06064b50) return Truncated();
    const char* z = data.data() + z64;
    count = Load64(z + 32);
    cd_size = Load64(z + 40);
    cd_offset = Load64(z + 48);
  }
  if (cd_offset > data.size() || cd_size > data.size() - cd_offset) return Truncated();

  std::vector<ZipEntry> entries;
  size_t p = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (p + 46 > data.size() || Load32(data.data() + p) != 0x02014b50) return Truncated();
    const char* c = data.data() + p;
    ZipEntry entry;
    entry.flags = Load16(c + 8);
    entry.method = Load16(c + 10);
    entry.crc = Load32(c + 16);
    entry.compressed_size = Load32(c + 20);
    entry.uncompressed_size = Load32(c + 24);
    const uint16_t name_len = Load16(c + 28);
    const uint16_t extra_len = Load16(c + 30);
    const uint16_t comment_len = Load16(c + 32);
    entry.local_offset = Load32(c + 42);
    if (p + 46 + name_len + extra_len + comment_len > data.size()) return Truncated();
    entry.name.assign(c + 46, name_len);
    // ZIP64 extended information: only the fields whose 32-bit slots are saturated, in order.
    const char* x = c + 46 + name_len;
    const char* x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint16_t id = Load16(x);
      const uint16_t len = Load16(x + 2);
      const char* f = x + 4;
      if (f + len > x_end) return Truncated();
      if (id == 0x0001) {
        const char* f_end = f + len;
        if (entry.uncompressed_size == 0xffffffffu && f + 8 <= f_end) {
          entry.uncompressed_size = Load64(f);
          f += 8;
        }
        if (entry.compressed_size == 0xffffffffu && f + 8 <= f_end) {
          entry.compressed_size = Load64(f);
          f += 8;
        }
        if (entry.local_offset == 0xffffffffu && f + 8 <= f_end) {
          entry.local_offset = Load64(f);
          f += 8;
        }
      }
      x += 4 + len;
    }
    entries.push_back(std::move(entry));
    p += 46 + name_len + extra_len + comment_len;
  }
  return entries;
}

absl::StatusOr<std::string> ExtractMember(absl::string_view data, const ZipEntry& entry) {
  if (entry.flags & 0x1) {
    return absl::InvalidArgumentError(absl::StrCat("npz: member ", entry.name, " is encrypted"));
  }
  const uint64_t off = entry.local_offset;
  if (off + 30 > data.size() || Load32(data.data() + off) != 0x04034b50) return Truncated();
  const uint64_t start = off + 30 + Load16(data.data() + off + 26) + Load16(data.data() + off + 28);
  if (start > data.size() || entry.compressed_size > data.size() - start) return Truncated();
  const absl::string_view raw = data.substr(start, entry.compressed_size);
  std::string out;
  if (entry.method == 0) {
    if (entry.compressed_size != entry.uncompressed_size) return Truncated();
    out = std::string(raw);
  } else if (entry.method == 8) {
    absl::StatusOr<std::string> inflated = InflateRaw(raw, entry.uncompressed_size);
    if (!inflated.ok()) return inflated.status();
    out = std::move(*inflated);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("npz: member ", entry.name,
                                                   " uses unsupported compression method ", entry.method,
                                                   " (only stored and deflated)"));
  }
  if (Crc32(0, out.data(), out.size()) != entry.crc) {
    return absl::DataLossError(absl::StrCat("npz: CRC-32 mismatch in member ", entry.name));
  }
  return out;
}

}  // namespace

// ---- NpyArray ----

int NpyItemSize(absl::string_view dtype) {
  if (dtype == "<f8" || dtype == "<i8") return 8;
  if (dtype == "<f4") return 4;
  if (dtype == "|b1") return 1;
  return 0;
}

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int NpyArray::item_size() const { return NpyItemSize(dtype); }

absl::Status ValidateNpyArray(const NpyArray& array) {
  if (array.item_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: unsupported dtype '", array.dtype, "' (supported: <f8, <f4, |b1, <i8)"));
  }
  absl::StatusOr<int64_t> n = CheckedElements(array.shape);
  if (!n.ok()) return n.status();
  if (static_cast<uint64_t>(*n) * array.item_size() != array.bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("npy: ", array.bytes.size(),
                                                   " data bytes do not match shape ",
                                                   ShapeString(array.shape), " of ", array.dtype));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> NpyArray::AsDoubles() const {
  absl::Status s = ValidateNpyArray(*this);
  if (!s.ok()) return s;
  const size_t n = static_cast<size_t>(num_elements());
  std::vector<double> out(n);
  const char* p = bytes.data();
  if (dtype == "<f8") {
    std::memcpy(out.data(), p, n * 8);
  } else if (dtype == "<f4") {
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      out[i] = f;
    }
  } else if (dtype == "<i8") {
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = static_cast<double>(v);
    }
  } else {  // |b1
    for (size_t i = 0; i < n; ++i) out[i] = p[i] != 0 ? 1.0 : 0.0;
  }
  return out;
}

NpyArray NpyArray::FromDoubles(std::vector<int64_t> shape, const std::vector<double>& values) {
  NpyArray a{std::move(shape), "<f8", std::vector<char>(values.size() * 8)};
  if (!values.empty()) std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
  return a;
}

NpyArray NpyArray::FromFloats(std::vector<int64_t> shape, const std::vector<float>& values) {
  NpyArray a{std::move(shape), "<f4", std::vector<char>(values.size() * 4)};
  if (!values.empty()) std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
  return a;
}

NpyArray NpyArray::FromBools(std::vector<int64_t> shape, const std::vector<bool>& values) {
  NpyArray a{std::move(shape), "|b1", std::vector<char>(values.size())};
  for (size_t i = 0; i < values.size(); ++i) a.bytes[i] = values[i] ? 1 : 0;
  return a;
}

NpyArray NpyArray::FromInt64s(std::vector<int64_t> shape, const std::vector<int64_t>& values) {
  NpyArray a{std::move(shape), "<i8", std::vector<char>(values.size() * 8)};
  if (!values.empty()) std::memcpy(a.bytes.data(), values.data(), a.bytes.size());
  return a;
}

NpyArray NpyArray::Zeros(std::vector<int64_t> shape, absl::string_view dtype) {
  NpyArray a{std::move(shape), std::string(dtype), {}};
  a.bytes.assign(static_cast<size_t>(a.num_elements()) * a.item_size(), 0);
  return a;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  if (shape.size() == 1) return absl::StrCat("(", shape[0], ",)");
  return absl::StrCat("(", absl::StrJoin(shape, ", "), ")");
}

// ---- .npy ----

absl::StatusOr<NpyArray> ParseNpy(absl::string_view data) {
  if (data.size() < kMagicLen + 4 || data.substr(0, kMagicLen) != absl::string_view(kMagic, kMagicLen)) {
    return absl::InvalidArgumentError("npy: missing \\x93NUMPY magic (not a .npy file)");
  }
  const int major = static_cast<unsigned char>(data[kMagicLen]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = Load16(data.data() + 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {  // 3.0 only changes the header encoding to UTF-8.
    if (data.size() < 12) return absl::InvalidArgumentError("npy: truncated header");
    header_len = Load32(data.data() + 8);
    header_start = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("npy: unsupported format version ", major));
  }
  if (header_start + header_len > data.size()) {
    return absl::InvalidArgumentError("npy: truncated header");
  }
  std::string descr;
  bool fortran = false;
  NpyArray array;
  absl::Status s = HeaderParser(data.substr(header_start, header_len)).Parse(&descr, &fortran, &array.shape);
  if (!s.ok()) return s;
  bool swap = false;
  if (!CanonicalDtype(descr, &array.dtype, &swap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: unsupported dtype '", descr, "' (supported: <f8, <f4, |b1, <i8)"));
  }
  if (fortran) {
    // Multi-dimensional Fortran data would need a transpose; callers should pass
    // np.ascontiguousarray(x) instead.
    int non_trivial = 0;
    for (int64_t d : array.shape) non_trivial += d > 1;
    if (non_trivial > 1) {
      return absl::InvalidArgumentError(
          "npy: Fortran-order arrays are not supported; save np.ascontiguousarray(x) instead");
    }
  }
  absl::StatusOr<int64_t> n = CheckedElements(array.shape);
  if (!n.ok()) return n.status();
  const size_t item = array.item_size();
  const uint64_t nbytes = static_cast<uint64_t>(*n) * item;
  const size_t data_start = header_start + header_len;
  if (data.size() - data_start < nbytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: expected ", nbytes, " data bytes, found ", data.size() - data_start));
  }
  array.bytes.assign(data.data() + data_start, data.data() + data_start + nbytes);
  if (swap) {
    for (size_t i = 0; i < array.bytes.size(); i += item) {
      std::reverse(array.bytes.begin() + i, array.bytes.begin() + i + item);
    }
  }
  return array;
}

absl::StatusOr<std::string> SerializeNpy(const NpyArray& array) {
  absl::Status s = ValidateNpyArray(array);
  if (!s.ok()) return s;
  std::string out = NpyHeader(array.shape, array.dtype);
  out.append(array.bytes.data(), array.bytes.size());
  return out;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> data = ReadFile(path);
  if (!data.ok()) return data.status();
  absl::StatusOr<NpyArray> array = ParseNpy(*data);
  if (!array.ok()) {
    return absl::Status(array.status().code(), absl::StrCat(path, ": ", array.status().message()));
  }
  return array;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  absl::Status s = ValidateNpyArray(array);
  if (!s.ok()) return s;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path));
  const std::string header = NpyHeader(array.shape, array.dtype);
  out.write(header.data(), header.size());
  out.write(array.bytes.data(), array.bytes.size());
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

// ---- NpyFileWriter ----

absl::StatusOr<std::unique_ptr<NpyFileWriter>> NpyFileWriter::Create(const std::string& path,
                                                                     std::vector<int64_t> shape,
                                                                     absl::string_view dtype) {
  const int item = NpyItemSize(dtype);
  if (item == 0) return absl::InvalidArgumentError(absl::StrCat("npy: unsupported dtype '", dtype, "'"));
  absl::StatusOr<int64_t> n = CheckedElements(shape);
  if (!n.ok()) return n.status();
  const std::string header = NpyHeader(shape, dtype);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  const int64_t data_bytes = *n * item;
  auto writer = std::unique_ptr<NpyFileWriter>(
      new NpyFileWriter(path, fd, static_cast<int64_t>(header.size()), data_bytes));
  for (size_t done = 0; done < header.size();) {
    const ssize_t w = ::pwrite(fd, header.data() + done, header.size() - done, static_cast<off_t>(done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return absl::InternalError(absl::StrCat("error writing ", path, ": ", std::strerror(errno)));
    done += static_cast<size_t>(w);
  }
  if (::ftruncate(fd, static_cast<off_t>(header.size() + data_bytes)) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot size ", path, " to ", header.size() + data_bytes,
                                                     " bytes: ", std::strerror(errno)));
  }
  return writer;
}

NpyFileWriter::~NpyFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status NpyFileWriter::Write(int64_t offset, const void* data, size_t size) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": already closed"));
  if (offset < 0 || offset > data_bytes_ || static_cast<int64_t>(size) > data_bytes_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": write of ", size, " bytes at ", offset,
                                              " past the data (", data_bytes_, " bytes)"));
  }
  const char* p = static_cast<const char*>(data);
  for (size_t done = 0; done < size;) {
    const ssize_t w = ::pwrite(fd_, p + done, size - done, static_cast<off_t>(header_bytes_ + offset + done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return absl::InternalError(absl::StrCat("error writing ", path_, ": ", std::strerror(errno)));
    done += static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status NpyFileWriter::Close() {
  if (fd_ < 0) return absl::OkStatus();
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0)
    return absl::InternalError(absl::StrCat("error closing ", path_, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

// ---- .npz ----

absl::StatusOr<std::map<std::string, NpyArray>> ParseNpz(absl::string_view data) {
  absl::StatusOr<std::vector<ZipEntry>> entries = ReadCentralDirectory(data);
  if (!entries.ok()) return entries.status();
  std::map<std::string, NpyArray> arrays;
  for (const ZipEntry& entry : *entries) {
    if (!entry.name.empty() && entry.name.back() == '/') continue;  // Directory entry.
    absl::StatusOr<std::string> member = ExtractMember(data, entry);
    if (!member.ok()) return member.status();
    absl::StatusOr<NpyArray> array = ParseNpy(*member);
    if (!array.ok()) {
      return absl::Status(array.status().code(),
                          absl::StrCat("npz member ", entry.name, ": ", array.status().message()));
    }
    std::string key = entry.name;
    if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
    arrays[key] = std::move(*array);
  }
  return arrays;
}

absl::StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path) {
  absl::StatusOr<std::string> data = ReadFile(path);
  if (!data.ok()) return data.status();
  absl::StatusOr<std::map<std::string, NpyArray>> arrays = ParseNpz(*data);
  if (!arrays.ok()) {
    return absl::Status(arrays.status().code(), absl::StrCat(path, ": ", arrays.status().message()));
  }
  return arrays;
}

absl::Status WriteNpz(const std::string& path, const std::map<std::string, NpyArray>& arrays) {
  for (const auto& [key, array] : arrays) {
    if (key.empty() || key.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("npz: bad member name '", key, "'"));
    }
    absl::Status s = ValidateNpyArray(array);
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(key, ": ", s.message()));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot create ", path));

  constexpr uint32_t kMax32 = 0xffffffffu;
  constexpr uint16_t kDosTime = 0;
  constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01: deterministic output.
  std::string central;
  uint64_t offset = 0;
  uint64_t count = 0;
  for (const auto& [key, array] : arrays) {
    const std::string name = key + ".npy";
    const std::string header = NpyHeader(array.shape, array.dtype);
    const uint64_t size = header.size() + array.bytes.size();
    const uint32_t crc =
        Crc32(Crc32(0, header.data(), header.size()), array.bytes.data(), array.bytes.size());
    const bool big = size >= kMax32;
    const bool far = offset >= kMax32;
    const uint16_t version = (big || far) ? 45 : 20;

    std::string local;
    Put32(&local, 0x04034b50);
    Put16(&local, version);
    Put16(&local, 0);  // flags
    Put16(&local, 0);  // stored
    Put16(&local, kDosTime);
    Put16(&local, kDosDate);
    Put32(&local, crc);
    Put32(&local, big ? kMax32 : static_cast<uint32_t>(size));
    Put32(&local, big ? kMax32 : static_cast<uint32_t>(size));
    Put16(&local, static_cast<uint16_t>(name.size()));
    Put16(&local, big ? 20 : 0);
    local += name;
    if (big) {
      Put16(&local, 0x0001);
      Put16(&local, 16);
      Put64(&local, size);
      Put64(&local, size);
    }

    std::string extra;
    if (big || far) {
      Put16(&extra, 0x0001);
      Put16(&extra, static_cast<uint16_t>((big ? 16 : 0) + (far ? 8 : 0)));
      if (big) {
        Put64(&extra, size);
        Put64(&extra, size);
      }
      if (far) Put64(&extra, offset);
    }
    Put32(&central, 0x02014b50);
    Put16(&central, version);  // made by (MS-DOS attributes)
    Put16(&central, version);  // needed
    Put16(&central, 0);
    Put16(&central, 0);
    Put16(&central, kDosTime);
    Put16(&central, kDosDate);
    Put32(&central, crc);
    Put32(&central, big ? kMax32 : static_cast<uint32_t>(size));
    Put32(&central, big ? kMax32 : static_cast<uint32_t>(size));
    Put16(&central, static_cast<uint16_t>(name.size()));
    Put16(&central, static_cast<uint16_t>(extra.size()));
    Put16(&central, 0);  // comment
    Put16(&central, 0);  // disk
    Put16(&central, 0);  // internal attributes
    Put32(&central, 0);  // external attributes
    Put32(&central, far ? kMax32 : static_cast<uint32_t>(offset));
    central += name;
    central += extra;

    out.write(local.data(), local.size());
    out.write(header.data(), header.size());
    out.write(array.bytes.data(), array.bytes.size());
    offset += local.size() + size;
    ++count;
  }

  const uint64_t cd_offset = offset;
  const uint64_t cd_size = central.size();
  std::string tail = central;
  const bool zip64 = count >= 0xffff || cd_offset >= kMax32 || cd_size >= kMax32;
  if (zip64) {
    const uint64_t z64_offset = cd_offset + cd_size;
    Put32(&tail, 0x06064b50);
    Put64(&tail, 44);  // size of the rest of this record
    Put16(&tail, 45);
    Put16(&tail, 45);
    Put32(&tail, 0);
    Put32(&tail, 0);
    Put64(&tail, count);
    Put64(&tail, count);
    Put64(&tail, cd_size);
    Put64(&tail, cd_offset);
    Put32(&tail, 0x07064b50);
    Put32(&tail, 0);
    Put64(&tail, z64_offset);
    Put32(&tail, 1);
  }
  Put32(&tail, 0x06054b50);
  Put16(&tail, 0);
  Put16(&tail, 0);
  Put16(&tail, zip64 ? 0xffff : static_cast<uint16_t>(count));
  Put16(&tail, zip64 ? 0xffff : static_cast<uint16_t>(count));
  Put32(&tail, zip64 ? kMax32 : static_cast<uint32_t>(cd_size));
  Put32(&tail, zip64 ? kMax32 : static_cast<uint32_t>(cd_offset));
  Put16(&tail, 0);  // comment length
  out.write(tail.data(), tail.size());
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace nt::client
