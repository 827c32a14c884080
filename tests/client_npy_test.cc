#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cpp/npy.h"
#include "gtest/gtest.h"

namespace nt::client {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return absl::StrCat(dir ? dir : "/tmp", "/nt_client_npy_", getpid(), "_", name);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void ExpectSame(const NpyArray& a, const NpyArray& b) {
  EXPECT_EQ(a.shape, b.shape);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.bytes, b.bytes);
}

TEST(NpyTest, Float64RoundTrip) {
  NpyArray a = NpyArray::FromDoubles({2, 3}, {1.5, -2.0, 3.25, 1e-300, 0.0, 7.0});
  const std::string path = TempPath("f8.npy");
  ASSERT_TRUE(WriteNpy(path, a).ok());
  absl::StatusOr<NpyArray> b = ReadNpy(path);
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSame(a, *b);
  absl::StatusOr<std::vector<double>> d = b->AsDoubles();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)[3], 1e-300);
  // The data start is 64-byte aligned, as numpy writes it.
  const std::string raw = Slurp(path);
  EXPECT_EQ((raw.size() - a.bytes.size()) % 64, 0u);
  EXPECT_EQ(raw[6], 1);  // version 1.0
  std::remove(path.c_str());
}

TEST(NpyTest, Float32RoundTrip) {
  NpyArray a = NpyArray::FromFloats({4}, {1.f, 2.5f, -3.f, 0.125f});
  absl::StatusOr<std::string> raw = SerializeNpy(a);
  ASSERT_TRUE(raw.ok());
  EXPECT_NE(raw->find("'shape': (4,)"), std::string::npos);
  absl::StatusOr<NpyArray> b = ParseNpy(*raw);
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSame(a, *b);
  EXPECT_EQ(b->AsDoubles().value(), (std::vector<double>{1.0, 2.5, -3.0, 0.125}));
}

TEST(NpyTest, BoolAndInt64AndScalarRoundTrip) {
  NpyArray a = NpyArray::FromBools({2, 2}, {true, false, false, true});
  absl::StatusOr<NpyArray> b = ParseNpy(SerializeNpy(a).value());
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectSame(a, *b);
  EXPECT_EQ(b->dtype, "|b1");

  NpyArray i = NpyArray::FromInt64s({3}, {-1, 0, 1LL << 40});
  absl::StatusOr<NpyArray> j = ParseNpy(SerializeNpy(i).value());
  ASSERT_TRUE(j.ok());
  ExpectSame(i, *j);

  NpyArray s = NpyArray::FromDoubles({}, {42.0});
  absl::StatusOr<NpyArray> t = ParseNpy(SerializeNpy(s).value());
  ASSERT_TRUE(t.ok());
  ExpectSame(s, *t);
  EXPECT_EQ(t->num_elements(), 1);

  NpyArray e = NpyArray::FromDoubles({0, 5}, {});
  absl::StatusOr<NpyArray> f = ParseNpy(SerializeNpy(e).value());
  ASSERT_TRUE(f.ok());
  ExpectSame(e, *f);
}

std::string HandWrittenNpy(const std::string& dict, const std::string& data, int version = 1) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(version));
  out.push_back(0);
  const std::string header = dict + "\n";
  if (version == 1) {
    out.push_back(static_cast<char>(header.size() & 0xff));
    out.push_back(static_cast<char>(header.size() >> 8));
  } else {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  }
  return out + header + data;
}

TEST(NpyTest, ParsesVersion2AndBigEndian) {
  std::string be;
  const unsigned char one_be[8] = {0x3f, 0xf0, 0, 0, 0, 0, 0, 0};  // 1.0 big-endian
  be.append(reinterpret_cast<const char*>(one_be), 8);
  absl::StatusOr<NpyArray> a =
      ParseNpy(HandWrittenNpy("{\"descr\": \">f8\", \"fortran_order\": False, \"shape\": (1,)}", be, 2));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->dtype, "<f8");
  EXPECT_EQ(a->AsDoubles().value(), std::vector<double>{1.0});
}

TEST(NpyTest, RejectsFortranOrderAndBadInput) {
  const std::string data(8 * 4, '\0');
  absl::StatusOr<NpyArray> f =
      ParseNpy(HandWrittenNpy("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }", data));
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f.status().message().find("Fortran"), absl::string_view::npos);

  absl::StatusOr<NpyArray> c =
      ParseNpy(HandWrittenNpy("{'descr': '<c16', 'fortran_order': False, 'shape': (2,), }", data));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("<c16"), absl::string_view::npos);

  absl::StatusOr<NpyArray> t =
      ParseNpy(HandWrittenNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }", data));
  EXPECT_FALSE(t.ok());

  EXPECT_FALSE(ParseNpy("not an npy file at all").ok());
  EXPECT_EQ(ReadNpy("/nonexistent/dir/x.npy").status().code(), absl::StatusCode::kNotFound);

  NpyArray bad{{3}, "<f8", std::vector<char>(16)};
  EXPECT_FALSE(SerializeNpy(bad).ok());
}

TEST(NpzTest, RoundTrip) {
  std::map<std::string, NpyArray> arrays;
  arrays["nngp"] = NpyArray::FromDoubles({2, 2}, {1, 0.5, 0.5, 2});
  arrays["ntk"] = NpyArray::FromFloats({2, 2}, {3, 1, 1, 4});
  arrays["mask"] = NpyArray::FromBools({3}, {true, false, true});
  arrays["scalar"] = NpyArray::FromDoubles({}, {-1.0});
  const std::string path = TempPath("rt.npz");
  ASSERT_TRUE(WriteNpz(path, arrays).ok());
  absl::StatusOr<std::map<std::string, NpyArray>> back = ReadNpz(path);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), arrays.size());
  for (const auto& [k, v] : arrays) {
    ASSERT_TRUE(back->count(k)) << k;
    ExpectSame(v, back->at(k));
  }

  // A flipped data byte is caught by the CRC.
  std::string raw = Slurp(path);
  const size_t pos = raw.find("nngp.npy");
  ASSERT_NE(pos, std::string::npos);
  raw[pos + 8 + 128 + 3] ^= 0x40;
  absl::StatusOr<std::map<std::string, NpyArray>> corrupt = ParseNpz(raw);
  EXPECT_FALSE(corrupt.ok());
  std::remove(path.c_str());

  EXPECT_FALSE(WriteNpz(path, {{"a/b", arrays["nngp"]}}).ok());
  EXPECT_FALSE(ParseNpz("PK but not really a zip").ok());
}

// Runs `python -c code` with the first interpreter that has numpy; false if there is none.
bool FindPythonWithNumpy(std::string* python) {
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = absl::StrCat(candidate, " -c 'import numpy' >/dev/null 2>&1");
    if (std::system(cmd.c_str()) == 0) {
      *python = candidate;
      return true;
    }
  }
  return false;
}

TEST(NpzTest, NumpyReadsOurNpzAndWeReadNumpys) {
  std::string python;
  if (!FindPythonWithNumpy(&python)) GTEST_SKIP() << "no python3 with numpy";
  std::map<std::string, NpyArray> arrays;
  arrays["nngp"] = NpyArray::FromDoubles({2, 3}, {1, 2, 3, 4, 5, 6.5});
  arrays["flags"] = NpyArray::FromBools({2}, {false, true});
  arrays["f"] = NpyArray::FromFloats({1, 1, 2}, {0.25f, -8.f});
  const std::string ours = TempPath("ours.npz");
  const std::string theirs = TempPath("theirs.npz");
  ASSERT_TRUE(WriteNpz(ours, arrays).ok());
  const std::string script = absl::StrCat(
      "import numpy as np\n"
      "z = np.load('",
      ours,
      "')\n"
      "assert sorted(z.files) == ['f', 'flags', 'nngp'], z.files\n"
      "assert z['nngp'].dtype == np.float64 and z['nngp'].shape == (2, 3)\n"
      "assert (z['nngp'] == np.array([[1, 2, 3], [4, 5, 6.5]])).all()\n"
      "assert z['flags'].dtype == np.bool_ and list(z['flags']) == [False, True]\n"
      "assert z['f'].dtype == np.float32 and z['f'].shape == (1, 1, 2)\n"
      "np.savez_compressed('",
      theirs,
      "', a=np.arange(12.).reshape(3, 4),"
      " b=np.asfortranarray(np.ones((2, 2))), c=np.array(True), d=np.arange(3, dtype='>i8'))\n");
  const std::string script_path = TempPath("check.py");
  { std::ofstream(script_path) << script; }
  ASSERT_EQ(std::system(absl::StrCat(python, " ", script_path).c_str()), 0);

  // Deflated members written by numpy; the Fortran-order one is rejected.
  absl::StatusOr<std::map<std::string, NpyArray>> z = ReadNpz(theirs);
  ASSERT_FALSE(z.ok());
  EXPECT_NE(z.status().message().find("Fortran"), absl::string_view::npos);
  {
    std::ofstream(script_path) << absl::StrCat(
        "import numpy as np\n"
        "np.savez_compressed('",
        theirs,
        "', a=np.arange(12.).reshape(3, 4), c=np.array(True),"
        " d=np.arange(3, dtype='>i8'))\n"
        "np.save('",
        theirs, ".npy', np.arange(6, dtype=np.float32).reshape(2, 3))\n");
  }
  ASSERT_EQ(std::system(absl::StrCat(python, " ", script_path).c_str()), 0);
  z = ReadNpz(theirs);
  ASSERT_TRUE(z.ok()) << z.status();
  ASSERT_EQ(z->size(), 3u);
  EXPECT_EQ(z->at("a").shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(z->at("a").AsDoubles().value()[11], 11.0);
  EXPECT_EQ(z->at("c").dtype, "|b1");
  EXPECT_TRUE(z->at("c").shape.empty());
  EXPECT_EQ(z->at("d").dtype, "<i8");
  EXPECT_EQ(z->at("d").AsDoubles().value(), (std::vector<double>{0, 1, 2}));
  absl::StatusOr<NpyArray> f32 = ReadNpy(theirs + ".npy");
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ(f32->dtype, "<f4");
  EXPECT_EQ(f32->AsDoubles().value()[5], 5.0);

  std::remove(ours.c_str());
  std::remove(theirs.c_str());
  std::remove((theirs + ".npy").c_str());
  std::remove(script_path.c_str());
}

}  // namespace
}  // namespace nt::client
