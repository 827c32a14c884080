// KernelAssembler on hand-made streams, and KernelClient against an in-process fake KernelService
// whose "kernel" is K[i, j, a, b] = x_i[a] * x_j[b] (symmetric under (i, a) <-> (j, b), like an NNGP
// in full-spatial layout), streamed as upper-triangle tiles with mirror = true.
#include "client/cpp/client.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace nt::client {
namespace {

nt::v1::Tensor DoubleTensor(const std::vector<int64_t>& shape, const std::vector<double>& v) {
  return TensorFromNpy(NpyArray::FromDoubles(shape, v)).value();
}

std::vector<double> Doubles(const NpyArray& a) { return a.AsDoubles().value(); }

// x: (n, s) values; full[i, j, a, b] = x[i, a] * x[j, b]; diagonal-spatial: [i, j, a] (a == b).
double Entry(const std::vector<double>& x, int64_t s, int64_t i, int64_t j, int64_t a, int64_t b) {
  return x[i * s + a] * x[j * s + b];
}

class FakeKernelService final : public nt::v1::KernelService::Service {
 public:
  grpc::Status Describe(grpc::ServerContext*, const nt::v1::DescribeRequest* request,
                        nt::v1::DescribeResponse* response) override {
    if (!request->architecture().has_dense()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "only Dense here");
    }
    response->add_output_shape1(request->x1_shape(0));
    response->add_output_shape1(request->architecture().dense().out_dim());
    response->set_layout("(N1, N2)");
    response->set_num_tiles(7);
    return grpc::Status::OK;
  }

  grpc::Status ComputeKernel(grpc::ServerContext*, const nt::v1::KernelRequest* request,
                             grpc::ServerWriter<nt::v1::KernelResponse>* writer) override {
    const NpyArray x1 = NpyFromTensor(request->x1()).value();
    const std::vector<double> x = x1.AsDoubles().value();
    const int64_t n = x1.shape[0], s = x1.shape[1];
    const bool diag = request->diagonal_spatial();
    const bool f32 = request->output_dtype() == nt::v1::FLOAT32;
    const int64_t t = request->tile_size() > 0 ? request->tile_size() : n;
    const int64_t blocks = (n + t - 1) / t;

    nt::v1::KernelResponse header;
    nt::v1::ArrayInfo* nngp = header.mutable_header()->add_arrays();
    nngp->set_name("nngp");
    nngp->add_shape(n);
    nngp->add_shape(n);
    nngp->add_shape(s);
    if (!diag) nngp->add_shape(s);
    nngp->set_tiled_axes(2);
    nt::v1::ArrayInfo* cov1 = header.mutable_header()->add_arrays();
    cov1->set_name("cov1");
    cov1->add_shape(n);
    cov1->add_shape(s);
    if (!diag) cov1->add_shape(s);
    cov1->set_tiled_axes(1);
    header.mutable_header()->set_dtype(f32 ? nt::v1::FLOAT32 : nt::v1::FLOAT64);
    header.mutable_header()->set_num_tiles(blocks * (blocks + 1) / 2 + blocks);
    header.mutable_header()->set_diagonal_spatial(diag);
    writer->Write(header);

    auto block_tensor = [&](std::vector<int64_t> shape, const std::vector<double>& v) {
      return f32 ? TensorFromNpy(NpyArray::FromFloats(shape, std::vector<float>(v.begin(), v.end()))).value()
                 : DoubleTensor(shape, v);
    };
    for (int64_t bi = 0; bi < blocks; ++bi) {
      for (int64_t bj = bi; bj < blocks; ++bj) {
        const int64_t r0 = bi * t, c0 = bj * t;
        const int64_t br = std::min(t, n - r0), bc = std::min(t, n - c0);
        std::vector<double> v;
        for (int64_t i = r0; i < r0 + br; ++i) {
          for (int64_t j = c0; j < c0 + bc; ++j) {
            for (int64_t a = 0; a < s; ++a) {
              if (diag) {
                v.push_back(Entry(x, s, i, j, a, a));
              } else {
                for (int64_t b = 0; b < s; ++b) v.push_back(Entry(x, s, i, j, a, b));
              }
            }
          }
        }
        nt::v1::KernelResponse tile;
        tile.mutable_tile()->set_name("nngp");
        tile.mutable_tile()->set_row_offset(r0);
        tile.mutable_tile()->set_col_offset(c0);
        // Diagonal blocks are mirrored onto themselves: the mirror must not read what it wrote.
        tile.mutable_tile()->set_mirror(true);
        std::vector<int64_t> shape = {br, bc, s};
        if (!diag) shape.push_back(s);
        *tile.mutable_tile()->mutable_block() = block_tensor(shape, v);
        writer->Write(tile);
      }
    }
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int64_t r0 = bi * t, br = std::min(t, n - r0);
      std::vector<double> v;
      for (int64_t i = r0; i < r0 + br; ++i) {
        for (int64_t a = 0; a < s; ++a) {
          if (diag) {
            v.push_back(Entry(x, s, i, i, a, a));
          } else {
            for (int64_t b = 0; b < s; ++b) v.push_back(Entry(x, s, i, i, a, b));
          }
        }
      }
      nt::v1::KernelResponse tile;
      tile.mutable_tile()->set_name("cov1");
      tile.mutable_tile()->set_row_offset(r0);
      std::vector<int64_t> shape = {br, s};
      if (!diag) shape.push_back(s);
      *tile.mutable_tile()->mutable_block() = block_tensor(shape, v);
      writer->Write(tile);
    }
    if (std::find(request->get().begin(), request->get().end(), "fail") != request->get().end()) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "out of tiles");
    }
    nt::v1::KernelResponse summary;
    summary.mutable_summary()->set_x1_is_x2(true);
    summary.mutable_summary()->set_diagonal_spatial(diag);
    summary.mutable_summary()->set_num_tiles(header.header().num_tiles());
    writer->Write(summary);
    return grpc::Status::OK;
  }
};

class KernelClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxSendMessageSize(kMaxMessageBytes);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  nt::v1::KernelRequest Request(int64_t n, int64_t s, int64_t tile, bool diag) {
    std::vector<double> x(n * s);
    for (size_t k = 0; k < x.size(); ++k) x[k] = 0.5 + 0.25 * k - 0.01 * k * k;
    x_ = x;
    nt::v1::KernelRequest r;
    r.mutable_architecture()->mutable_relu();
    *r.mutable_x1() = DoubleTensor({n, s}, x);
    r.set_tile_size(tile);
    r.set_diagonal_spatial(diag);
    return r;
  }

  FakeKernelService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  std::vector<double> x_;
};

TEST_F(KernelClientTest, AssemblesMirroredFullSpatialTiles) {
  KernelClient client(address_);
  const int64_t n = 7, s = 3;
  std::vector<KernelProgress> seen;
  absl::StatusOr<KernelResult> r =
      client.ComputeKernel(Request(n, s, 3, false), [&](const KernelProgress& p) { seen.push_back(p); });
  ASSERT_TRUE(r.ok()) << r.status();
  const NpyArray& nngp = r->arrays.at("nngp");
  EXPECT_EQ(nngp.shape, (std::vector<int64_t>{n, n, s, s}));
  EXPECT_EQ(nngp.dtype, "<f8");
  const std::vector<double> k = Doubles(nngp);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t a = 0; a < s; ++a)
        for (int64_t b = 0; b < s; ++b)
          ASSERT_EQ(k[((i * n + j) * s + a) * s + b], Entry(x_, s, i, j, a, b))
              << i << " " << j << " " << a << " " << b;
  const std::vector<double> c = Doubles(r->arrays.at("cov1"));
  EXPECT_EQ(c[(5 * s + 1) * s + 2], Entry(x_, s, 5, 5, 1, 2));
  // Header + one call per tile; the last reports completion.
  ASSERT_EQ(seen.size(), 1u + 6u + 3u);
  EXPECT_EQ(seen.back().tiles_done, 9);
  EXPECT_EQ(seen.back().num_tiles, 9);
  EXPECT_GT(seen.back().bytes_received, 0);
  EXPECT_TRUE(r->summary.x1_is_x2());
}

TEST_F(KernelClientTest, DiagonalSpatialAndFloat32) {
  KernelClient client(address_);
  const int64_t n = 5, s = 4;
  nt::v1::KernelRequest req = Request(n, s, 2, true);
  req.set_output_dtype(nt::v1::FLOAT32);
  absl::StatusOr<KernelResult> r = client.ComputeKernel(req);
  ASSERT_TRUE(r.ok()) << r.status();
  const NpyArray& nngp = r->arrays.at("nngp");
  EXPECT_EQ(nngp.shape, (std::vector<int64_t>{n, n, s}));
  EXPECT_EQ(nngp.dtype, "<f4");
  const std::vector<double> k = Doubles(nngp);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t a = 0; a < s; ++a)
        ASSERT_EQ(k[(i * n + j) * s + a], static_cast<float>(Entry(x_, s, i, j, a, a)));
}

TEST_F(KernelClientTest, ServerErrorKeepsCodeAndMessage) {
  KernelClient client(address_);
  nt::v1::KernelRequest req = Request(4, 2, 2, false);
  req.add_get("fail");
  absl::StatusOr<KernelResult> r = client.ComputeKernel(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.status().message(), "out of tiles");

  nt::v1::DescribeRequest d;
  d.mutable_architecture()->mutable_relu();
  d.add_x1_shape(3);
  absl::StatusOr<nt::v1::DescribeResponse> bad = client.Describe(d);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "only Dense here");
}

TEST_F(KernelClientTest, DescribeAndHealth) {
  KernelClient client(address_);
  nt::v1::DescribeRequest d;
  d.mutable_architecture()->mutable_dense()->set_out_dim(9);
  d.add_x1_shape(3);
  d.add_x1_shape(4);
  absl::StatusOr<nt::v1::DescribeResponse> r = client.Describe(d);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output_shape1(1), 9);
  EXPECT_EQ(r->num_tiles(), 7);

  absl::StatusOr<HealthStatus> h = client.Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
  absl::StatusOr<HealthStatus> unknown = client.Health("no.such.Service");
  EXPECT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

TEST(KernelClientNoServerTest, UnavailableAndDefaultAddress) {
  ClientOptions options;
  options.address = "127.0.0.1:1";
  options.timeout = absl::Seconds(5);
  KernelClient client(options);
  absl::StatusOr<HealthStatus> h = client.Health();
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kUnavailable);

  setenv("NT_SERVER", "example:123", 1);
  EXPECT_EQ(DefaultServerAddress(), "example:123");
  EXPECT_EQ(KernelClient().address(), "example:123");
  unsetenv("NT_SERVER");
  EXPECT_EQ(DefaultServerAddress(), "localhost:50051");
}

// ---- KernelAssembler on hand-made streams ----

nt::v1::KernelHeader Header2x2() {
  nt::v1::KernelHeader h;
  nt::v1::ArrayInfo* a = h.add_arrays();
  a->set_name("ntk");
  a->add_shape(2);
  a->add_shape(2);
  a->set_tiled_axes(2);
  h.set_num_tiles(2);
  return h;
}

nt::v1::KernelTile Tile(int64_t r, int64_t c, std::vector<int64_t> shape, std::vector<double> v,
                        bool mirror = false) {
  nt::v1::KernelTile t;
  t.set_name("ntk");
  t.set_row_offset(r);
  t.set_col_offset(c);
  t.set_mirror(mirror);
  *t.mutable_block() = DoubleTensor(shape, v);
  return t;
}

TEST(KernelAssemblerTest, DetectsMissingAndBadTiles) {
  {
    KernelAssembler a;
    ASSERT_TRUE(a.Start(Header2x2()).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {1, 2}, {1, 2})).ok());
    ASSERT_TRUE(a.AddTile(Tile(1, 0, {1, 1}, {3})).ok());
    absl::StatusOr<KernelResult> r = a.Finish({});
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("ntk[1, 1]"), absl::string_view::npos) << r.status();
  }
  {
    KernelAssembler a;
    ASSERT_TRUE(a.Start(Header2x2()).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {2, 1}, {1, 2})).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 1, {1, 1}, {5}, /*mirror=*/true)).ok());
    ASSERT_FALSE(a.Finish({}).ok());  // [1, 1] never written.
  }
  {
    KernelAssembler a;
    ASSERT_TRUE(a.Start(Header2x2()).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {2, 1}, {1, 2})).ok());
    ASSERT_TRUE(a.AddTile(Tile(1, 1, {1, 1}, {4})).ok());
    ASSERT_FALSE(a.Finish({}).ok());  // [0, 1] never written (2 tiles arrived, as announced).
  }
  KernelAssembler a;
  EXPECT_FALSE(a.AddTile(Tile(0, 0, {1, 1}, {1})).ok());  // Before the header.
  ASSERT_TRUE(a.Start(Header2x2()).ok());
  EXPECT_FALSE(a.AddTile(Tile(1, 1, {2, 1}, {1, 2})).ok());  // Out of bounds.
  EXPECT_FALSE(a.AddTile(Tile(0, 0, {1, 1, 1}, {1})).ok());  // Wrong rank.
  nt::v1::KernelTile other = Tile(0, 0, {1, 1}, {1});
  other.set_name("nngp");
  EXPECT_FALSE(a.AddTile(other).ok());  // Not in the header.
  nt::v1::KernelTile short_data = Tile(0, 0, {1, 2}, {1, 2});
  short_data.mutable_block()->mutable_data()->resize(8);
  EXPECT_FALSE(a.AddTile(short_data).ok());
}

TEST(KernelAssemblerTest, MirrorsTrailingAxisPairs) {
  // ntk (2, 2, 2, 2, 3, 3): pairs (2, 2) and (3, 3); only tile [0, 1] is sent, mirrored to [1, 0].
  nt::v1::KernelHeader h;
  nt::v1::ArrayInfo* info = h.add_arrays();
  info->set_name("ntk");
  for (int64_t d : {2, 2, 2, 2, 3, 3}) info->add_shape(d);
  info->set_tiled_axes(2);
  h.set_num_tiles(3);
  const int64_t inner = 2 * 2 * 3 * 3;
  auto block = [&](int64_t i, int64_t j) {
    std::vector<double> v;
    for (int64_t t = 0; t < inner; ++t) v.push_back(100 * i + 10 * j + t);
    return v;
  };
  KernelAssembler a;
  ASSERT_TRUE(a.Start(h).ok());
  ASSERT_TRUE(a.AddTile(Tile(0, 0, {1, 1, 2, 2, 3, 3}, block(0, 0))).ok());
  ASSERT_TRUE(a.AddTile(Tile(1, 1, {1, 1, 2, 2, 3, 3}, block(1, 1))).ok());
  ASSERT_TRUE(a.AddTile(Tile(0, 1, {1, 1, 2, 2, 3, 3}, block(0, 1), true)).ok());
  // The header decided the layout; a summary that says otherwise comes too late to matter.
  nt::v1::KernelSummary summary;
  summary.set_diagonal_spatial(true);
  absl::StatusOr<KernelResult> r = a.Finish(summary);
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<double> k = Doubles(r->arrays.at("ntk"));
  // K[1, 0, a', a, b', b] = K[0, 1, a, a', b, b'].
  for (int64_t a1 = 0; a1 < 2; ++a1)
    for (int64_t a2 = 0; a2 < 2; ++a2)
      for (int64_t b1 = 0; b1 < 3; ++b1)
        for (int64_t b2 = 0; b2 < 3; ++b2) {
          const int64_t src = ((a1 * 2 + a2) * 3 + b1) * 3 + b2;
          const int64_t dst = ((a2 * 2 + a1) * 3 + b2) * 3 + b1;
          EXPECT_EQ(k[(1 * 2 + 0) * inner + dst], block(0, 1)[src]);
          EXPECT_EQ(k[(0 * 2 + 1) * inner + src], block(0, 1)[src]);
        }
}

TEST(KernelAssemblerTest, HeaderDiagonalSpatialDecidesAmbiguousShape) {
  // (2, 2, 3, 3) is 1-D full spatial (swap the pair) or 2-D diagonal spatial (no swap).
  for (bool diagonal_spatial : {false, true}) {
    SCOPED_TRACE(diagonal_spatial);
    nt::v1::KernelHeader h;
    nt::v1::ArrayInfo* info = h.add_arrays();
    info->set_name("ntk");
    for (int64_t d : {2, 2, 3, 3}) info->add_shape(d);
    info->set_tiled_axes(2);
    h.set_num_tiles(3);
    h.set_diagonal_spatial(diagonal_spatial);
    std::vector<double> v(9);
    for (int t = 0; t < 9; ++t) v[t] = t;
    KernelAssembler a;
    ASSERT_TRUE(a.Start(h).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {1, 1, 3, 3}, v)).ok());
    ASSERT_TRUE(a.AddTile(Tile(1, 1, {1, 1, 3, 3}, v)).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 1, {1, 1, 3, 3}, v, /*mirror=*/true)).ok());
    nt::v1::KernelSummary summary;
    summary.set_diagonal_spatial(!diagonal_spatial);
    absl::StatusOr<KernelResult> r = a.Finish(summary);
    ASSERT_TRUE(r.ok()) << r.status();
    const std::vector<double> k = Doubles(r->arrays.at("ntk"));
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t q = 0; q < 3; ++q) {
        const int64_t src = diagonal_spatial ? p * 3 + q : q * 3 + p;
        EXPECT_EQ(k[(1 * 2 + 0) * 9 + p * 3 + q], v[src]) << p << " " << q;
      }
  }
}

TEST(KernelAssemblerTest, SeveralStreamsOfOneKernel) {
  // A 2 x 2 ntk in tiles of 1 x 1: 3 tiles with mirroring, sent as ranges [0, 2) and [2, 3).
  auto header = [](int64_t begin, int64_t end, int64_t messages) {
    nt::v1::KernelHeader h = Header2x2();
    h.set_tile_size(1);
    h.set_total_tiles(3);
    h.set_tile_begin(begin);
    h.set_tile_end(end);
    h.set_num_tiles(messages);
    return h;
  };
  {
    KernelAssembler a;
    ASSERT_TRUE(a.Start(header(0, 2, 2)).ok());
    ASSERT_TRUE(a.Start(header(2, 3, 1)).ok());
    ASSERT_TRUE(a.AddTile(Tile(1, 1, {1, 1}, {4})).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {1, 1}, {1})).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 1, {1, 1}, {2}, /*mirror=*/true)).ok());
    absl::StatusOr<KernelResult> r = a.Finish({});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(Doubles(r->arrays.at("ntk")), (std::vector<double>{1, 2, 2, 4}));
  }
  {
    KernelAssembler a;  // Both ranges started, one tile missing: the coverage check names it.
    ASSERT_TRUE(a.Start(header(0, 2, 2)).ok());
    ASSERT_TRUE(a.Start(header(2, 3, 1)).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 0, {1, 1}, {1})).ok());
    ASSERT_TRUE(a.AddTile(Tile(0, 1, {1, 1}, {2}, true)).ok());
    absl::StatusOr<KernelResult> r = a.Finish({});
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("ntk[1, 1]"), absl::string_view::npos) << r.status();
  }
  {
    KernelAssembler a;  // One partial range on its own comes back as it is.
    ASSERT_TRUE(a.Start(header(2, 3, 1)).ok());
    ASSERT_TRUE(a.AddTile(Tile(1, 1, {1, 1}, {4})).ok());
    absl::StatusOr<KernelResult> r = a.Finish({});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(Doubles(r->arrays.at("ntk")), (std::vector<double>{0, 0, 0, 4}));
  }
  KernelAssembler a;  // Headers must agree.
  ASSERT_TRUE(a.Start(header(0, 2, 2)).ok());
  nt::v1::KernelHeader f32 = header(2, 3, 1);
  f32.set_dtype(nt::v1::FLOAT32);
  EXPECT_FALSE(a.Start(f32).ok());
  nt::v1::KernelHeader other_tiles = header(2, 3, 1);
  other_tiles.set_tile_size(2);
  EXPECT_FALSE(a.Start(other_tiles).ok());
  nt::v1::KernelHeader other_shape = header(2, 3, 1);
  other_shape.mutable_arrays(0)->set_shape(1, 3);
  EXPECT_FALSE(a.Start(other_shape).ok());
}

TEST(KernelAssemblerTest, TilesOffTheTileGridAreCoveredCellByCell) {
  // The header says tile_size 2, but the tiles are 1 x 2 and 2 x 1 (coverage falls back to cells).
  nt::v1::KernelHeader h;
  nt::v1::ArrayInfo* info = h.add_arrays();
  info->set_name("ntk");
  info->add_shape(3);
  info->add_shape(3);
  info->set_tiled_axes(2);
  h.set_tile_size(2);
  h.set_num_tiles(4);
  KernelAssembler a;
  ASSERT_TRUE(a.Start(h).ok());
  ASSERT_TRUE(a.AddTile(Tile(0, 0, {2, 2}, {1, 2, 4, 5})).ok());
  ASSERT_TRUE(a.AddTile(Tile(0, 2, {2, 1}, {3, 6})).ok());
  ASSERT_TRUE(a.AddTile(Tile(2, 0, {1, 2}, {7, 8})).ok());
  ASSERT_TRUE(a.AddTile(Tile(2, 1, {1, 1}, {8.5})).ok());  // [2, 2] stays missing.
  absl::StatusOr<KernelResult> r = a.Finish({});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("ntk[2, 2]"), absl::string_view::npos) << r.status();
}

TEST(KernelAssemblerTest, WritesNpyFilesLikeMemory) {
  // The mirrored full-spatial case of MirrorsTrailingAxisPairs, into files and into memory.
  nt::v1::KernelHeader h;
  nt::v1::ArrayInfo* info = h.add_arrays();
  info->set_name("ntk");
  for (int64_t d : {2, 2, 2, 2, 3, 3}) info->add_shape(d);
  info->set_tiled_axes(2);
  h.set_num_tiles(3);
  const int64_t inner = 36;
  auto block = [&](int64_t i, int64_t j) {
    std::vector<double> v;
    for (int64_t t = 0; t < inner; ++t) v.push_back(100 * i + 10 * j + t);
    return v;
  };
  const std::string prefix = ::testing::TempDir() + "/nt_assembler_files";
  KernelAssembler memory, files;
  files.WriteToFiles(prefix);
  for (KernelAssembler* a : {&memory, &files}) {
    ASSERT_TRUE(a->Start(h).ok());
    ASSERT_TRUE(a->AddTile(Tile(0, 0, {1, 1, 2, 2, 3, 3}, block(0, 0))).ok());
    ASSERT_TRUE(a->AddTile(Tile(1, 1, {1, 1, 2, 2, 3, 3}, block(1, 1))).ok());
    ASSERT_TRUE(a->AddTile(Tile(0, 1, {1, 1, 2, 2, 3, 3}, block(0, 1), true)).ok());
  }
  absl::StatusOr<KernelResult> m = memory.Finish({});
  absl::StatusOr<KernelResult> f = files.Finish({});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->files.at("ntk"), prefix + ".ntk.npy");
  absl::StatusOr<NpyArray> read = ReadNpy(f->files.at("ntk"));
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, m->arrays.at("ntk").shape);
  EXPECT_TRUE(read->bytes == m->arrays.at("ntk").bytes);
  std::remove(f->files.at("ntk").c_str());
}

TEST(KernelAssemblerTest, RejectsUnmirrorableTiles) {
  // Full-spatial layout needs (s, s') pairs: (2, 2, 3, 2) has none.
  nt::v1::KernelHeader h;
  nt::v1::ArrayInfo* info = h.add_arrays();
  info->set_name("ntk");
  for (int64_t d : {2, 2, 3, 2}) info->add_shape(d);
  info->set_tiled_axes(2);
  nt::v1::ArrayInfo* cov = h.add_arrays();
  cov->set_name("cov1");
  cov->add_shape(2);
  cov->set_tiled_axes(1);
  KernelAssembler a;
  ASSERT_TRUE(a.Start(h).ok());
  absl::Status s = a.AddTile(Tile(0, 1, {1, 1, 3, 2}, std::vector<double>(6), /*mirror=*/true));
  EXPECT_NE(s.message().find("no (s, s') axis pairs"), absl::string_view::npos) << s;
  nt::v1::KernelTile c = Tile(0, 0, {2}, {1, 2}, /*mirror=*/true);
  c.set_name("cov1");
  s = a.AddTile(c);
  EXPECT_NE(s.message().find("mirrored block does not fit"), absl::string_view::npos) << s;

  h.set_diagonal_spatial(true);  // The same shape is fine as 2-D diagonal spatial.
  KernelAssembler d;
  ASSERT_TRUE(d.Start(h).ok());
  EXPECT_TRUE(d.AddTile(Tile(0, 1, {1, 1, 3, 2}, std::vector<double>(6), /*mirror=*/true)).ok());
}

}  // namespace
}  // namespace nt::client
