#include "core/kernel_fn.h"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <set>

#include "absl/container/inlined_vector.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/input_kernel.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

// OpenBLAS's own threads would oversubscribe the cores TBB already uses.
extern "C" void openblas_set_num_threads(int num_threads);

namespace NT_CORE_NS {

namespace {

// Cheap; done per call because a caller may have raised it for its own GEMMs in between.
void SingleThreadedBlas() { openblas_set_num_threads(1); }

// Tiles allocate and free arrays of a few MB per layer; served by mmap (glibc's default above its
// threshold) or trimmed back to the system, every one costs page faults that took a third of the time of
// CNN kernels. Keep such blocks in the heap for reuse.
void KeepLargeBlocksInHeap() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc caps it at 32 MiB on 64-bit.
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
}

constexpr int64_t kTileBytes = 1 << 20;                       // Target size of one tile's nngp block.
constexpr int64_t kMaxPlannedRowElements = int64_t{1} << 27;  // 1 GiB of float64 per input.
// More tiles than this are refused (every tile costs a message or more, and a sink call).
// A full-spatial 32x32 CNN (one entry per tile) fits about 90,000 samples.
constexpr double kMaxTiles = double(int64_t{1} << 32);

absl::StatusOr<std::vector<std::string>> CanonicalGet(const std::vector<std::string>& get, bool x2_given) {
  static const std::set<std::string> kValid = {"nngp", "ntk", "cov1", "cov2"};
  std::vector<std::string> out;
  if (get.empty()) {
    out = {"nngp", "ntk", "cov1"};
    if (x2_given) out.push_back("cov2");
    return out;
  }
  std::set<std::string> seen;
  for (const std::string& g : get) {
    const std::string n = absl::AsciiStrToLower(g);
    if (n.empty()) return absl::InvalidArgumentError("get: contains an empty name");
    if (!kValid.count(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("get: unknown array '", g, "'; expected any of nngp, ntk, cov1, cov2"));
    }
    if (!seen.insert(n).second) {
      return absl::InvalidArgumentError(absl::StrCat("get: '", n, "' is requested twice"));
    }
    // cov2 is None when x2 is None: nothing to send.
    if (n == "cov2" && !x2_given) continue;
    out.push_back(n);
  }
  return out;
}

bool Wants(const KernelPlan& plan, const std::string& name) {
  return std::find(plan.get.begin(), plan.get.end(), name) != plan.get.end();
}

Shape Trailing(const Array& a, int lead) { return Shape(a.shape().begin() + lead, a.shape().end()); }

// One pair of inputs evaluated tile by tile.
// Which batches a pass pairs: 0 = x1, 1 = x2.
struct Pass {
  int a;
  int b;
  bool symmetric;         // b is a: only tiles with I <= J.
  std::string nngp_name;  // Name to emit the nngp under ("nngp" or the full-batch "cov1"/"cov2").
  bool main;              // The x1/x2 pass: also emits ntk and diagonal-batch covariances.
};

struct TileJob {
  int pass;
  int64_t r0, r1, c0, c1;
};

// A block of a batch against itself: GEMM rounding can leave nngp slightly asymmetric and its diagonal
// slightly off the variances, which maps like Relu's amplify near correlation 1 (sqrt of rounding
// noise). Make the block exactly symmetric with the variances on its diagonal, as the maths says.
void MakeSelfConsistent(bool diagonal_spatial, const Array& cov, Array* nngp) {
  const Array mirrored = Transpose(*nngp, MirrorPermutation(nngp->rank(), !diagonal_spatial));
  for (int64_t i = 0; i < nngp->size(); ++i) (*nngp)[i] = 0.5 * ((*nngp)[i] + mirrored[i]);
  const int64_t n = nngp->dim(0);
  const int64_t inner = cov.size() / n;
  for (int64_t i = 0; i < n; ++i) {
    std::copy(cov.data() + i * inner, cov.data() + (i + 1) * inner, nngp->data() + (i * n + i) * inner);
  }
}

struct Inputs {
  CanonicalInput c[2];
  const CanonicalInput& operator[](int i) const { return c[i]; }
};

Kernel InputKernel(const KernelPlan& plan, const Inputs& in, const Pass& pass, int64_t r0, int64_t r1,
                   int64_t c0, int64_t c1) {
  const bool same_block = pass.symmetric && r0 == c0;
  const CanonicalInput& a = in[pass.a];
  const CanonicalInput& b = in[pass.b];
  Kernel k;
  k.nngp = InputNngp(a, r0, r1, b, c0, c1, plan.diagonal_spatial);
  if (plan.compute_ntk && pass.main) k.ntk = Array::Scalar(0.0);
  k.cov1 = InputCovDiag(a, r0, r1, plan.diagonal_spatial);
  if (!same_block) k.cov2 = InputCovDiag(b, c0, c1, plan.diagonal_spatial);
  // Upstream's x1_is_x2 marks entries (i, i) of the same batch: only blocks on the diagonal qualify.
  k.x1_is_x2 = pass.symmetric ? same_block : (plan.x1_is_x2 && r0 == c0 && r1 == c1);
  if (k.x1_is_x2) MakeSelfConsistent(plan.diagonal_spatial, k.cov1, &k.nngp);
  if (plan.cov_diagonal_only) {
    const int s = static_cast<int>(a.spatial.size());
    k.cov1 = GetDiagonal(k.cov1, 1, false, s);
    if (k.cov2) k.cov2 = GetDiagonal(*k.cov2, 1, false, s);
    k.cov_diagonal_only = true;
  }
  k.diagonal_batch = true;
  k.diagonal_spatial = plan.diagonal_spatial;
  k.shape1 = a.shape;
  k.shape1[a.batch_axis] = r1 - r0;
  k.shape2 = b.shape;
  k.shape2[b.batch_axis] = c1 - c0;
  k.batch_axis = a.batch_axis;
  k.channel_axis = a.channel_axis;
  if (plan.masked) {
    // Both sides carry masks, also when x2 is None: the columns of a tile are other rows of x1.
    k.mask1 = SliceAxis(plan.masked->mask[pass.a], a.batch_axis, r0, r1);
    k.mask2 = SliceAxis(plan.masked->mask[pass.b], b.batch_axis, c0, c1);
  }
  return k;
}

absl::StatusOr<Kernel> RunTile(const Layer& net, const KernelPlan& plan, const Inputs& in, const Pass& pass,
                               int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  Kernel k = InputKernel(plan, in, pass, r0, r1, c0, c1);
  KernelContext ctx;
  ctx.compute_ntk = plan.compute_ntk && pass.main;
  // The patterns' rows of this tile's samples.
  std::optional<Array> rows, cols;
  if (plan.pattern[0]) {
    rows = SliceAxis(*plan.pattern[pass.a], 0, r0, r1);
    cols = SliceAxis(*plan.pattern[pass.b], 0, c0, c1);
    ctx.pattern1 = &*rows;
    ctx.pattern2 = &*cols;
  }
  if (absl::Status st = ApplyToKernel(net, &k, ctx); !st.ok()) return st;
  if (k.is_reversed) k.Reverse();  // Spatial axes always go out in natural order.
  return k;
}

// upstream's input masking: entries equal to `value` (NaN: NaN entries) are masked and set to 0.
void MaskInput(const Array& x, double value, int batch_axis, bool flatten, Array* zeroed, Array* mask) {
  *zeroed = x;
  *mask = Array(x.shape(), 0.0);
  for (int64_t i = 0; i < x.size(); ++i) {
    if (std::isnan(value) ? std::isnan(x[i]) : x[i] == value) {
      (*zeroed)[i] = 0.0;
      (*mask)[i] = 1.0;
    }
  }
  if (flatten) {
    // The same rearrangement as Canonicalize's: batch first, the rest flattened.
    const int rank = x.rank();
    const int b = (batch_axis % rank + rank) % rank;
    std::vector<int> perm{b};
    for (int i = 0; i < rank; ++i) {
      if (i != b) perm.push_back(i);
    }
    const int64_t n = x.dim(b);
    *mask = Transpose(*mask, perm).Reshaped({n, x.size() / std::max<int64_t>(n, 1)});
  }
}

// Views of the inputs (the masked copies when masking); `check_finite` when they have not been
// validated yet.
absl::StatusOr<Inputs> PrepareInputs(const Array& raw1, const Array* raw2, const KernelPlan& plan,
                                     bool check_finite) {
  const Array& x1 = plan.masked ? plan.masked->x[0] : raw1;
  const Array* x2 = raw2 && plan.masked ? &plan.masked->x[1] : raw2;
  Inputs in;
  auto c1 = Canonicalize(x1, plan.batch_axis, plan.channel_axis, plan.flatten_input, "x1", check_finite);
  if (!c1.ok()) return c1.status();
  in.c[0] = *std::move(c1);
  if (x2) {
    auto c2 = Canonicalize(*x2, plan.batch_axis, plan.channel_axis, plan.flatten_input, "x2", check_finite);
    if (!c2.ok()) return c2.status();
    in.c[1] = *std::move(c2);
  }
  return in;
}

// Checks Aggregate's patterns against the inputs (one leading entry per sample, finite) and records them.
absl::Status SetPatterns(const Array& x1, const Array* x2, const KernelOptions& options, KernelPlan* plan) {
  if (!options.pattern1 && !options.pattern2) return absl::OkStatus();
  // kernel_fn(x1, None, pattern=(p, p)) is upstream's spelling; another pattern2 would make the kernel of
  // x1 with itself asymmetric.
  if (!x2 && options.pattern2 &&
      (!options.pattern1 || options.pattern2->shape() != options.pattern1->shape() ||
       !std::equal(options.pattern2->vec().begin(), options.pattern2->vec().end(),
                   options.pattern1->vec().begin()))) {
    return absl::InvalidArgumentError(
        "pattern2: differs from pattern1 without x2 (with x2 = None, pattern1 serves both sides; send x2 "
        "to pair x1 with other patterns)");
  }
  if (x2 && (!options.pattern1 || !options.pattern2)) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.pattern1 ? "pattern2" : "pattern1",
                     ": pattern1 and pattern2 must be both given or both absent"));
  }
  const int rank = x1.rank();
  const int b = rank > 0 ? (plan->batch_axis % rank + rank) % rank : 0;
  for (int i = 0; i < (x2 ? 2 : 1); ++i) {
    const Array& p = *(i == 0 ? options.pattern1 : options.pattern2);
    const Array& x = i == 0 ? x1 : *x2;
    const char* field = i == 0 ? "pattern1" : "pattern2";
    if (rank == 0 || p.rank() == 0 || p.dim(0) != x.dim(b)) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": shape ", ShapeToString(p.shape()),
                                                     " must have one leading entry per sample of ",
                                                     i == 0 ? "x1" : "x2", " (", rank ? x.dim(b) : 0, ")"));
    }
    for (int64_t e = 0; e < p.size(); ++e) {
      if (!std::isfinite(p[e])) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": entry ", e, " is not finite"));
      }
    }
  }
  plan->pattern[0] = options.pattern1;
  plan->pattern[1] = x2 ? options.pattern2 : options.pattern1;
  return absl::OkStatus();
}

std::vector<Pass> MakePasses(const KernelPlan& plan) {
  std::vector<Pass> passes;
  passes.push_back(Pass{0, plan.x2_given ? 1 : 0, !plan.x2_given, "nngp", true});
  if (!plan.diagonal_batch) {
    // Full-batch covariances are the nngp of each batch with itself.
    if (Wants(plan, "cov1") && plan.x2_given) passes.push_back(Pass{0, 0, true, "cov1", false});
    if (Wants(plan, "cov2")) passes.push_back(Pass{1, 1, true, "cov2", false});
  }
  return passes;
}

// The tiles of a plan's passes in their fixed order (pass, then row, then column), computed on demand:
// a kernel may have millions of tiles, and a tile range needs none of the others.
class TileJobs {
 public:
  TileJobs(const KernelPlan& plan, const std::vector<Pass>& passes)
      : t_(std::max<int64_t>(1, plan.tile_size)) {
    const int64_t sizes[2] = {plan.n1, plan.n2};
    for (int p = 0; p < static_cast<int>(passes.size()); ++p) {
      const int64_t na = sizes[passes[p].a], nb = sizes[passes[p].b];
      const int64_t rows = (na + t_ - 1) / t_, cols = (nb + t_ - 1) / t_;
      // Symmetric passes (b is a, so rows == cols) hold the tiles with column >= row.
      const int64_t count = passes[p].symmetric ? rows * (rows + 1) / 2 : rows * cols;
      passes_.push_back(PassTiles{p, passes[p].symmetric, na, nb, rows, cols, size_, count});
      size_ += count;
    }
  }

  int64_t size() const { return size_; }

  TileJob operator[](int64_t k) const {
    const PassTiles& q = PassOf(k);
    k -= q.first;
    const int64_t i = RowOf(q, k);
    const int64_t j = q.symmetric ? i + (k - Start(q, i)) : k - Start(q, i);
    return Job(q, i, j);
  }

  // The sum of blocks(pass, job) over the tiles [begin, end), in O(passes): within a pass, a tile's
  // blocks depend only on whether it is in the first row and whether it is its row's first tile (the
  // diagonal one for symmetric passes), so one representative of each of the four kinds is counted.
  template <typename Blocks>
  int64_t SumOver(int64_t begin, int64_t end, const Blocks& blocks) const {
    int64_t sum = 0;
    for (const PassTiles& q : passes_) {
      const int64_t b = std::max<int64_t>(begin - q.first, 0), e = std::min(end - q.first, q.count);
      if (b >= e) continue;
      const int64_t row0 = Overlap(b, e, 0, q.symmetric ? q.rows : q.cols);
      const int64_t first00 = Overlap(b, e, 0, 1);
      const int64_t firsts = RowsStartingBefore(q, e) - RowsStartingBefore(q, b);
      const int64_t row0_other = row0 - first00, first_other = firsts - first00;
      const int64_t rest = (e - b) - first00 - row0_other - first_other;
      const int64_t d = q.symmetric ? 1 : 0;  // Column offset of a row's first tile.
      sum += first00 * blocks(q.pass, Job(q, 0, 0)) + row0_other * blocks(q.pass, Job(q, 0, 1)) +
             first_other * blocks(q.pass, Job(q, 1, d)) + rest * blocks(q.pass, Job(q, 1, d + 1));
    }
    return sum;
  }

 private:
  struct PassTiles {
    int pass;
    bool symmetric;
    int64_t na, nb, rows, cols, first, count;
  };

  static int64_t Overlap(int64_t b, int64_t e, int64_t lo, int64_t hi) {
    return std::max<int64_t>(0, std::min(e, hi) - std::max(b, lo));
  }

  const PassTiles& PassOf(int64_t k) const {
    size_t p = 0;
    while (p + 1 < passes_.size() && passes_[p + 1].first <= k) ++p;
    return passes_[p];
  }

  // Index (within its pass) of row i's first tile: i R - i (i - 1) / 2 for symmetric passes.
  static int64_t Start(const PassTiles& q, int64_t i) {
    return q.symmetric ? i * q.rows - i * (i - 1) / 2 : i * q.cols;
  }

  // The row of the pass's k-th tile.
  static int64_t RowOf(const PassTiles& q, int64_t k) {
    if (!q.symmetric) return k / q.cols;
    // Invert Start in floating point, then correct the rounding.
    const double b = 2.0 * double(q.rows) + 1.0;
    int64_t i = static_cast<int64_t>((b - std::sqrt(std::max(0.0, b * b - 8.0 * double(k)))) / 2.0);
    i = std::clamp<int64_t>(i, 0, q.rows - 1);
    while (i > 0 && Start(q, i) > k) --i;
    while (i + 1 < q.rows && Start(q, i + 1) <= k) ++i;
    return i;
  }

  // Rows whose first tile comes before the pass's k-th tile.
  static int64_t RowsStartingBefore(const PassTiles& q, int64_t k) {
    return k <= 0 ? 0 : RowOf(q, k - 1) + 1;
  }

  TileJob Job(const PassTiles& q, int64_t i, int64_t j) const {
    return TileJob{q.pass, i * t_, std::min((i + 1) * t_, q.na), j * t_, std::min((j + 1) * t_, q.nb)};
  }

  int64_t t_;
  int64_t size_ = 0;
  std::vector<PassTiles> passes_;
};

enum class Source { kNngp, kNtk, kCov1, kCov2 };

// One block a tile sends: which array of the tile's kernel, under which name, where.
struct BlockSpec {
  Source source;
  std::string name;
  int tiled_axes;
  int64_t row, col;
  bool mirror;
};

// Inline storage: no allocation per tile.
using BlockSpecs = absl::InlinedVector<BlockSpec, 5>;

// The blocks a tile contributes (the single definition used to count and to emit them).
BlockSpecs BlocksOf(const KernelPlan& plan, const Pass& pass, const TileJob& job) {
  BlockSpecs out;
  const bool mirror = pass.symmetric && job.r0 != job.c0;
  if (!pass.main) {
    out.push_back({Source::kNngp, pass.nngp_name, 2, job.r0, job.c0, mirror});
    return out;
  }
  // With x2 = None and full batch, cov1 is the main pass's nngp.
  if (!plan.diagonal_batch && !plan.x2_given && Wants(plan, "cov1")) {
    out.push_back({Source::kNngp, "cov1", 2, job.r0, job.c0, mirror});
  }
  if (Wants(plan, "nngp")) out.push_back({Source::kNngp, "nngp", 2, job.r0, job.c0, mirror});
  if (Wants(plan, "ntk")) {
    const bool scalar = plan.meta.ntk && plan.meta.ntk->rank() == 0;
    if (!scalar) {
      out.push_back({Source::kNtk, "ntk", 2, job.r0, job.c0, mirror});
    } else if (job.r0 == 0 && job.c0 == 0) {
      out.push_back({Source::kNtk, "ntk", 0, 0, 0, false});
    }
  }
  if (plan.diagonal_batch) {
    const bool cov1_here = plan.x2_given ? job.c0 == 0 : job.r0 == job.c0;
    if (Wants(plan, "cov1") && cov1_here) out.push_back({Source::kCov1, "cov1", 1, job.r0, 0, false});
    if (Wants(plan, "cov2") && plan.x2_given && job.r0 == 0) {
      out.push_back({Source::kCov2, "cov2", 1, job.c0, 0, false});
    }
  }
  return out;
}

absl::Status EmitTile(const KernelPlan& plan, const Pass& pass, const TileJob& job, Kernel&& k,
                      const TileSink& sink) {
  const BlockSpecs blocks = BlocksOf(plan, pass, job);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockSpec& b = blocks[i];
    // The nngp may be sent twice (as cov1 and nngp): copy all but its last use.
    bool later_use = false;
    for (size_t j = i + 1; j < blocks.size(); ++j) later_use = later_use || blocks[j].source == b.source;
    Array* src = b.source == Source::kNngp   ? &k.nngp
                 : b.source == Source::kNtk  ? &*k.ntk
                 : b.source == Source::kCov1 ? &k.cov1
                                             : &*k.cov2;
    Array block = later_use ? *src : std::move(*src);
    if (absl::Status st = sink(TileBlock{b.name, b.row, b.col, b.tiled_axes, b.mirror, std::move(block)});
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

// Tile and message counts of a plan whose sizes and tile size are set; the range is clamped here and
// checked by SelectTiles.
void CountTiles(const KernelOptions& options, KernelPlan* plan) {
  const std::vector<Pass> passes = MakePasses(*plan);
  const TileJobs jobs(*plan, passes);
  plan->num_tiles = jobs.size();
  plan->tile_begin = std::clamp<int64_t>(options.tile_begin, 0, plan->num_tiles);
  plan->tile_end = options.tile_end < 0
                       ? plan->num_tiles
                       : std::clamp<int64_t>(options.tile_end, plan->tile_begin, plan->num_tiles);
  plan->num_tile_messages = jobs.SumOver(plan->tile_begin, plan->tile_end, [&](int p, const TileJob& job) {
    return static_cast<int64_t>(BlocksOf(*plan, passes[p], job).size());
  });
}

absl::Status SelectTiles(const KernelOptions& options, const KernelPlan& plan) {
  const int64_t end = options.tile_end < 0 ? plan.num_tiles : options.tile_end;
  if (options.tile_begin < 0 || options.tile_begin > end || end > plan.num_tiles) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tile_begin, tile_end: [", options.tile_begin, ", ", options.tile_end, ") is not a range of the ",
        plan.num_tiles, " tiles of this kernel (tile_size ", plan.tile_size, ")"));
  }
  return absl::OkStatus();
}

int64_t SaturatingBytes(double bytes) {
  return bytes >= 9.0e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(bytes);
}

// Elements of a shape that may not fit in 64 bits (Describe's shapes are arbitrary).
double NumElementsAsDouble(const Shape& shape) {
  double n = 1;
  for (int64_t d : shape) n *= double(d);
  return n;
}

std::string LayoutString(const KernelPlan& plan, const Shape& out_trailing) {
  Shape nngp{plan.out_n1, plan.out_n2};
  nngp.insert(nngp.end(), out_trailing.begin(), out_trailing.end());
  return absl::StrCat(plan.diagonal_batch ? "diagonal_batch" : "full_batch", ", ",
                      out_trailing.empty()    ? "no spatial axes"
                      : plan.diagonal_spatial ? "diagonal_spatial"
                                              : "full_spatial",
                      "; nngp ", ShapeToString(nngp));
}

// The planning sample has one row per batch: report the real batch sizes in the output shapes.
void SetBatchSizes(int64_t n1, int64_t n2, Kernel* meta) {
  if (meta->shape1.empty()) return;
  meta->shape1[meta->batch_axis] = n1;
  meta->shape2[meta->batch_axis] = n2;
}

// Array shapes, tiles and costs for the plan's batch sizes (also after they are scaled up).
// RESOURCE_EXHAUSTED for more than kMaxTiles tiles.
absl::Status SizePlan(const KernelOptions& options, int concurrency, KernelPlan* plan) {
  const Shape out_trailing = Trailing(plan->meta.nngp, 2);
  const Shape cov_trailing = Trailing(plan->meta.cov1, 1);
  auto with = [](Shape lead, const Shape& trailing) {
    lead.insert(lead.end(), trailing.begin(), trailing.end());
    return lead;
  };
  plan->arrays.clear();
  plan->output_bytes = 0;
  for (const std::string& g : plan->get) {
    ArraySpec a{g, with({plan->out_n1, plan->out_n2}, out_trailing), 2};
    if (g == "ntk" && plan->meta.ntk && plan->meta.ntk->rank() == 0) a = ArraySpec{g, Shape{}, 0};
    if (g == "cov1" || g == "cov2") {
      const int64_t n = g == "cov1" ? plan->out_n1 : plan->out_n2;
      a = plan->diagonal_batch ? ArraySpec{g, with({n}, cov_trailing), 1}
                               : ArraySpec{g, with({n, n}, out_trailing), 2};
    }
    plan->output_bytes = SaturatingBytes(double(plan->output_bytes) + NumElementsAsDouble(a.shape) * 8);
    plan->arrays.push_back(std::move(a));
  }
  // Tiles: about kTileBytes of nngp per tile, at most 256 x 256, never more than the batches (which
  // also bounds every size derived from the tile size).
  int64_t t = options.tile_size;
  if (t <= 0) {
    t = static_cast<int64_t>(
        std::clamp(std::sqrt(double(kTileBytes) / (8.0 * double(plan->cells_per_entry))), 1.0, 256.0));
  }
  plan->tile_size = std::min(t, std::max(plan->n1, plan->n2));
  if (plan->whole_batch) plan->tile_size = std::max(plan->n1, plan->n2);
  const double tile = double(std::max<int64_t>(1, plan->tile_size));
  const double tiles = std::ceil(double(plan->n1) / tile) * std::ceil(double(plan->n2) / tile) *
                       double(MakePasses(*plan).size());
  if (tiles > kMaxTiles) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tile_size: ", plan->n1, " x ", plan->n2, " samples in tiles of ", plan->tile_size,
                     " rows make about ", tiles, " tiles, more than the ", kMaxTiles,
                     " this server plans; use a larger tile_size (0: the server's "
                     "choice) or fewer samples"));
  }
  CountTiles(options, plan);
  const double entries = double(plan->out_n1) * double(plan->out_n2);
  plan->estimated_flops = entries * (plan->gram_flops_per_entry +
                                     60.0 * double(plan->cells_per_entry) * double(plan->num_layers));
  const double tile_cells = double(plan->tile_size) * double(plan->tile_size) * double(plan->cells_per_entry);
  // About eight tile-sized arrays live per worker (kernel fields, maps' temporaries, the block sent).
  // Inputs: the caller's and their views or rearranged copies, plus zeroed copies and masks when masking.
  plan->working_bytes = SaturatingBytes(double(concurrency) * tile_cells * 8 * 8 +
                                        double(plan->input_elements) * 8 * (plan->masked ? 4 : 2));
  plan->layout = LayoutString(*plan, out_trailing);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<KernelPlan> PlanKernel(const Layer& net, const Array& x1, const Array* x2,
                                      const KernelOptions& options, int concurrency) {
  KernelPlan plan;
  plan.x2_given = x2 != nullptr;
  auto get = CanonicalGet(options.get, plan.x2_given);
  if (!get.ok()) return get.status();
  plan.get = *std::move(get);
  plan.compute_ntk = Wants(plan, "ntk");
  // Requirement resolution (core.md 2.2): network requirements, then user overrides, then defaults.
  const Requirements req = net.requirements();
  if (req.diagonal_batch.has_value() && !*req.diagonal_batch) {
    return absl::UnimplementedError(
        "the network mixes batch entries (a DotGeneral contracts the batch axis, which requires "
        "diagonal_batch=False); tiled evaluation does not support that yet");
  }
  plan.diagonal_batch = true;
  if (options.diagonal_batch.has_value()) plan.diagonal_batch = *options.diagonal_batch;
  bool net_diag_spatial = req.diagonal_spatial ? req.diagonal_spatial->AsBool() : false;
  if (options.diagonal_spatial.has_value()) {
    if (*options.diagonal_spatial && req.diagonal_spatial && req.diagonal_spatial->input == Bool::kNo) {
      return absl::InvalidArgumentError(absl::StrCat(
          "diagonal_spatial: asked for a diagonal spatial output, but the network requires the full "
          "spatial covariance (",
          DiagonalToString(*req.diagonal_spatial), ")"));
    }
    net_diag_spatial = *options.diagonal_spatial;
  }
  plan.batch_axis = req.batch_axis.value_or(0);
  plan.whole_batch = req.selects_batch;
  plan.flatten_input = req.flatten_input;
  plan.channel_axis = req.channel_axis.value_or(-1);
  // Flatten first forces the full spatial layout (there is none left).
  plan.diagonal_spatial = plan.flatten_input ? false : net_diag_spatial;

  if (x2) {
    if (x2->rank() != x1.rank()) {
      return absl::InvalidArgumentError(absl::StrCat("x2: rank ", x2->rank(), " differs from x1's rank ",
                                                     x1.rank(), " (shapes ", ShapeToString(x2->shape()),
                                                     " and ", ShapeToString(x1.shape()), ")"));
    }
    if (x1.rank() >= 2) {
      const int b = (plan.batch_axis % x1.rank() + x1.rank()) % x1.rank();
      for (int i = 0; i < x1.rank(); ++i) {
        if (i != b && x1.dim(i) != x2->dim(i)) {
          return absl::InvalidArgumentError(absl::StrCat(
              "x2: shape ", ShapeToString(x2->shape()), " must match x1's shape ", ShapeToString(x1.shape()),
              " in every axis but the batch axis (axis ", i, " differs)"));
        }
      }
    }
  }
  if (options.mask_constant.has_value() && x1.rank() >= 2 && (!x2 || x2->rank() >= 2)) {
    auto masked = std::make_shared<MaskedInputs>();
    MaskInput(x1, *options.mask_constant, plan.batch_axis, plan.flatten_input, &masked->x[0],
              &masked->mask[0]);
    if (x2) {
      MaskInput(*x2, *options.mask_constant, plan.batch_axis, plan.flatten_input, &masked->x[1],
                &masked->mask[1]);
    }
    plan.masked = std::move(masked);
  }
  if (absl::Status st = SetPatterns(x1, x2, options, &plan); !st.ok()) return st;
  auto inputs = PrepareInputs(x1, x2, plan, /*check_finite=*/true);
  if (!inputs.ok()) return inputs.status();
  // Covariances as spatial diagonals when no one needs more (see Kernel::cov_diagonal_only).
  plan.cov_diagonal_only = !plan.diagonal_spatial && plan.diagonal_batch && !Wants(plan, "cov1") &&
                           !Wants(plan, "cov2") && !plan.masked && !plan.flatten_input &&
                           !(*inputs)[0].spatial.empty() && net.cov_use() != Layer::CovUse::kFull;
  plan.n1 = (*inputs)[0].n();
  plan.n2 = x2 ? (*inputs)[1].n() : plan.n1;
  plan.x1_is_x2 = x2 ? (plan.masked ? SameInputs(plan.masked->x[0], plan.masked->x[1]) &&
                                          SameInputs(plan.masked->mask[0], plan.masked->mask[1])
                                    : SameInputs(x1, *x2))
                     : true;

  // Run the network on a 1 x 1 sample: validates it against the inputs and yields output layouts. A
  // network that selects samples runs on all of them (a single sample may select none).
  // The sample's input kernel is allocated before any budget check: refuse sizes no server could hold
  // (Describe's shapes cost nothing to send; the whole batch of a selecting network is one tile).
  {
    const double p = double((*inputs)[0].p());
    const double entries = plan.whole_batch ? double(plan.n1) * double(plan.n2) : 1.0;
    const double cells = entries * (plan.diagonal_spatial ? p : p * p);
    if (cells > double(kMaxPlannedRowElements)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the input kernel of ",
                       plan.whole_batch ? "the whole batch (the network selects samples)" : "one entry",
                       " has ", cells, " elements, more than the ", kMaxPlannedRowElements,
                       " this server evaluates in one tile; send fewer samples or smaller inputs",
                       plan.diagonal_spatial ? "" : ", or use diagonal_spatial=True"));
    }
  }
  const std::vector<Pass> passes = MakePasses(plan);
  auto meta = plan.whole_batch ? RunTile(net, plan, *inputs, passes[0], 0, plan.n1, 0, plan.n2)
                               : RunTile(net, plan, *inputs, passes[0], 0, 1, 0, 1);
  if (!meta.ok()) return meta.status();
  plan.meta = *std::move(meta);
  plan.meta.x1_is_x2 = plan.x1_is_x2;
  plan.meta.diagonal_batch = plan.diagonal_batch;
  plan.out_n1 = plan.whole_batch ? plan.meta.nngp.dim(0) : plan.n1;
  plan.out_n2 = plan.whole_batch ? plan.meta.nngp.dim(1) : plan.n2;
  SetBatchSizes(plan.out_n1, plan.out_n2, &plan.meta);
  const int64_t p_in = (*inputs)[0].p();
  plan.cells_per_entry = std::max<int64_t>(
      {1, NumElements(Trailing(plan.meta.nngp, 2)), plan.diagonal_spatial ? p_in : p_in * p_in});
  plan.gram_flops_per_entry =
      2.0 * double((*inputs)[0].c()) * double(plan.diagonal_spatial ? p_in : p_in * p_in);
  plan.num_layers = net.NumLayers();
  plan.input_elements = x1.size() + (x2 ? x2->size() : 0);
  for (const auto& p : {options.pattern1, options.pattern2}) plan.input_elements += p ? p->size() : 0;
  if (absl::Status st = SizePlan(options, concurrency, &plan); !st.ok()) return st;
  if (absl::Status st = SelectTiles(options, plan); !st.ok()) return st;
  return plan;
}

absl::Status ApplyToKernel(const Layer& net, Kernel* k, bool compute_ntk) {
  KernelContext ctx;
  ctx.compute_ntk = compute_ntk;
  return ApplyToKernel(net, k, ctx);
}

absl::Status ApplyToKernel(const Layer& net, Kernel* k, const KernelContext& ctx) {
  if (!ctx.compute_ntk) k->ntk.reset();
  KernelFlow flow = KernelFlow::Single(std::move(*k));
  absl::Status st = net.ApplyKernel(&flow, ctx);
  if (!st.ok()) return AtChild(st, "architecture");
  if (flow.is_list || flow.items.size() != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "the network returns a list of ", flow.items.size(),
        " outputs; finish it with a FanIn layer (multiple outputs are not supported over this API)"));
  }
  *k = std::move(flow.single());
  return absl::OkStatus();
}

absl::StatusOr<KernelPlan> PlanKernelForShapes(const Layer& net, const Shape& x1_shape, const Shape* x2_shape,
                                               const KernelOptions& options, int concurrency) {
  for (int64_t d : x1_shape) {
    if (d <= 0)
      return absl::InvalidArgumentError(
          absl::StrCat("x1_shape: dimensions must be positive, got ", ShapeToString(x1_shape)));
  }
  if (x2_shape) {
    for (int64_t d : *x2_shape) {
      if (d <= 0)
        return absl::InvalidArgumentError(
            absl::StrCat("x2_shape: dimensions must be positive, got ", ShapeToString(*x2_shape)));
    }
  }
  // One row of each input is allocated to plan: refuse rows no request could carry anyway.
  for (const Shape* s : {&x1_shape, x2_shape}) {
    if (!s) continue;
    double row = 1;
    for (size_t i = 1; i < s->size(); ++i) row *= double((*s)[i]);
    if (row > double(kMaxPlannedRowElements)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          s == &x1_shape ? "x1_shape" : "x2_shape", ": one input of shape ", ShapeToString(*s), " has ", row,
          " elements, more than the ", kMaxPlannedRowElements, " this server accepts per input"));
    }
  }
  // Plan on one-row stand-ins of the inputs (values do not change layouts), then scale up.
  const Requirements req = net.requirements();
  auto one_row = [&req](Shape s, int batch_axis) {
    const int r = static_cast<int>(s.size());
    if (r >= 1 && !req.selects_batch) s[(batch_axis % r + r) % r] = 1;
    Array a(s, 0.0);
    for (int64_t i = 0; i < a.size(); ++i) a[i] = 1.0 + 0.01 * static_cast<double>(i % 7);
    return a;
  };
  const int b = req.batch_axis.value_or(0);
  // Networks that select samples are planned on every row (their output sizes depend on it).
  Array a1 = one_row(x1_shape, b);
  std::optional<Array> a2;
  if (x2_shape) a2 = one_row(*x2_shape, b);
  // The sample has its own tiles: the requested range applies to the real sizes only.
  KernelOptions sample_options = options;
  sample_options.tile_begin = 0;
  sample_options.tile_end = -1;
  auto plan = PlanKernel(net, a1, a2 ? &*a2 : nullptr, sample_options, concurrency);
  if (!plan.ok()) return plan.status();
  // Re-derive sizes for the real batch sizes.
  const int r = static_cast<int>(x1_shape.size());
  const int ba = (plan->batch_axis % r + r) % r;
  const int64_t n1 = x1_shape[ba];
  const int64_t n2 = x2_shape ? (*x2_shape)[ba] : n1;
  KernelPlan out = *std::move(plan);
  out.n1 = n1;
  out.n2 = n2;
  if (!out.whole_batch) {
    out.out_n1 = n1;
    out.out_n2 = n2;
  }
  SetBatchSizes(out.out_n1, out.out_n2, &out.meta);
  out.input_elements =
      SaturatingBytes(NumElementsAsDouble(x1_shape) + (x2_shape ? NumElementsAsDouble(*x2_shape) : 0.0));
  if (absl::Status st = SizePlan(options, concurrency, &out); !st.ok()) return st;
  if (absl::Status st = SelectTiles(options, out); !st.ok()) return st;
  return out;
}

absl::Status ComputeKernelTiles(const Layer& net, const Array& x1, const Array* x2, const KernelPlan& plan,
                                const KernelOptions& options, const TileSink& sink) {
  SingleThreadedBlas();
  KeepLargeBlocksInHeap();
  // The plan validated these inputs (PlanKernel's contract).
  auto inputs = PrepareInputs(x1, x2, plan, /*check_finite=*/false);
  if (!inputs.ok()) return inputs.status();
  const std::vector<Pass> passes = MakePasses(plan);
  const TileJobs jobs(plan, passes);
  std::atomic<bool> failed{false};
  std::mutex mu;
  absl::Status first_error;
  tbb::parallel_for(tbb::blocked_range<int64_t>(plan.tile_begin, plan.tile_end, 1),
                    [&](const tbb::blocked_range<int64_t>& r) {
                      for (int64_t i = r.begin(); i != r.end(); ++i) {
                        if (failed.load(std::memory_order_relaxed)) return;
                        if (options.cancelled && options.cancelled->load(std::memory_order_relaxed)) {
                          std::lock_guard<std::mutex> lock(mu);
                          if (!failed.exchange(true))
                            first_error = absl::CancelledError("the kernel computation was cancelled");
                          return;
                        }
                        const TileJob job = jobs[i];
                        const Pass& pass = passes[job.pass];
                        absl::Status st;
                        auto k = RunTile(net, plan, *inputs, pass, job.r0, job.r1, job.c0, job.c1);
                        st = k.ok() ? EmitTile(plan, pass, job, *std::move(k), sink) : k.status();
                        if (!st.ok()) {
                          std::lock_guard<std::mutex> lock(mu);
                          if (!failed.exchange(true)) first_error = st;
                          return;
                        }
                      }
                    });
  return failed ? first_error : absl::OkStatus();
}

const Array* KernelResult::Find(const std::string& name) const {
  for (const auto& [n, a] : arrays) {
    if (n == name) return &a;
  }
  return nullptr;
}

std::optional<Array> KernelResult::Take(const std::string& name) {
  for (auto& [n, a] : arrays) {
    if (n == name) return std::move(a);
  }
  return std::nullopt;
}

absl::StatusOr<KernelResult> ComputeKernel(const Layer& net, const Array& x1, const Array* x2,
                                           const KernelOptions& options) {
  auto plan = PlanKernel(net, x1, x2, options);
  if (!plan.ok()) return plan.status();
  KernelResult result;
  result.meta = plan->meta;
  for (const ArraySpec& a : plan->arrays) result.arrays.emplace_back(a.name, Array::Uninitialized(a.shape));
  const bool full_spatial = !plan->diagonal_spatial;
  absl::Status st = ComputeKernelTiles(net, x1, x2, *plan, options, [&](TileBlock&& b) {
    for (auto& [name, full] : result.arrays) {
      if (name != b.name) continue;
      if (b.tiled_axes == 0) {
        full = std::move(b.block);
      } else {
        PlaceBlock(b.block, b.tiled_axes, b.row, b.col, false, full_spatial, &full);
        if (b.mirror) PlaceBlock(b.block, b.tiled_axes, b.row, b.col, true, full_spatial, &full);
      }
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  return result;
}

}  // namespace NT_CORE_NS
