#include "core/empirical.h"

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/task_arena.h"

namespace NT_CORE_NS {

namespace {

using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void FlattenInto(const Params& p, Real* out, int64_t* pos) {
  for (const Array& a : p.arrays) {
    std::copy(a.data(), a.data() + a.size(), out + *pos);
    *pos += a.size();
  }
  for (const Params& c : p.children) FlattenInto(c, out, pos);
}

bool SameArray(const Array& a, const Array& b) {
  return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
}

// Outputs and, when asked, the Jacobian (rows: output entries in row-major order; columns: parameters in
// NumParamEntries order).
struct Jacobian {
  Array y;
  Storage j;  // Every row is written whole: no zero fill.
  int64_t cols = 0;
};

// Fills rows `row_of(e)` of `j` (cols wide) with the parameter cotangents of the one-hot output cotangents
// e < lin.y.size().
absl::Status JacobianRows(const LinearizedApply& lin, int64_t cols,
                          const std::function<int64_t(int64_t)>& row_of, Real* j) {
  const int64_t n = lin.y.size();
  std::vector<absl::Status> errors(n);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1), [&](const tbb::blocked_range<int64_t>& r) {
    Array dy(lin.y.shape(), 0.0);
    for (int64_t e = r.begin(); e != r.end(); ++e) {
      dy[e] = 1;
      auto c = lin.pullback(dy);
      dy[e] = 0;
      if (!c.ok()) {
        errors[e] = c.status();
        continue;
      }
      int64_t pos = 0;
      Real* row = j + row_of(e) * cols;
      FlattenInto(c->dparams, row, &pos);
      if (pos != cols) {
        errors[e] =
            absl::InternalError(absl::StrCat("parameter cotangents have ", pos, " entries, expected ", cols));
      }
    }
  });
  for (const absl::Status& st : errors) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<Jacobian> ComputeJacobian(const Layer& net, const Params& params, const Array& x,
                                         const Array* pattern, const std::optional<RngKey>& rng,
                                         const EmpiricalOptions& o, bool need_j) {
  Jacobian out;
  out.cols = NumParamEntries(params);
  if (!o.vmap_in_axis) {
    ApplyContext ctx;
    ctx.pattern = pattern;
    ctx.rng = rng;
    auto lin = LinearizeApply(net, params, x, o.mask_constant, ctx);
    if (!lin.ok()) return lin.status();
    if (need_j) {
      out.j.resize(lin->y.size() * out.cols);
      absl::Status st = JacobianRows(
          *lin, out.cols, [](int64_t e) { return e; }, out.j.data());
      if (!st.ok()) return st;
    }
    out.y = std::move(lin->y);
    return out;
  }
  // One example at a time along the vmap axes.
  auto in_axis = CanonicalAxis("empirical_kernel_fn", "vmap_axes", *o.vmap_in_axis, x.rank());
  if (!in_axis.ok()) return in_axis.status();
  const int64_t n = x.dim(*in_axis);
  if (pattern && (pattern->rank() == 0 || pattern->dim(0) != n)) {
    return absl::InvalidArgumentError(absl::StrCat("pattern: has ", pattern->rank() ? pattern->dim(0) : 0,
                                                   " rows for ", n, " examples along vmap_axes"));
  }
  std::vector<std::optional<LinearizedApply>> lins(n);
  std::vector<Array> xs(n), ps(n);
  std::vector<absl::Status> errors(n);
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1), [&](const tbb::blocked_range<int64_t>& r) {
    for (int64_t b = r.begin(); b != r.end(); ++b) {
      xs[b] = SliceAxis(x, *in_axis, b, b + 1);
      ApplyContext ctx;
      if (pattern) {
        ps[b] = SliceAxis(*pattern, 0, b, b + 1);
        ctx.pattern = &ps[b];
      }
      if (rng) ctx.rng = rng->FoldIn(static_cast<uint64_t>(b));
      auto lin = LinearizeApply(net, params, xs[b], o.mask_constant, ctx);
      if (lin.ok()) {
        lins[b] = *std::move(lin);
      } else {
        errors[b] = lin.status();
      }
    }
  });
  for (const absl::Status& st : errors) {
    if (!st.ok()) return st;
  }
  if (n == 0) return absl::InvalidArgumentError("x: no examples along vmap_axes");
  const Shape& yb = lins[0]->y.shape();
  auto out_axis = CanonicalAxis("empirical_kernel_fn", "vmap_axes", o.vmap_out_axis.value_or(*o.vmap_in_axis),
                                static_cast<int>(yb.size()));
  if (!out_axis.ok()) return out_axis.status();
  if (yb[*out_axis] != 1) {
    return absl::InvalidArgumentError(absl::StrCat("vmap_axes: the output of one example has size ",
                                                   yb[*out_axis], " along the output axis ", *out_axis,
                                                   ", not 1"));
  }
  Shape y_shape = yb;
  y_shape[*out_axis] = n;
  int64_t inner = 1;
  for (size_t a = *out_axis + 1; a < yb.size(); ++a) inner *= yb[a];
  const int64_t per = NumElements(yb);
  // Entry e of example b's output sits at (outer, b, inner) of the whole output.
  auto full_index = [&](int64_t b, int64_t e) { return (e / inner) * n * inner + b * inner + e % inner; };
  out.y = Array(y_shape, 0.0);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t e = 0; e < per; ++e) out.y[full_index(b, e)] = lins[b]->y[e];
  }
  if (need_j) {
    out.j.resize(out.y.size() * out.cols);
    tbb::parallel_for(tbb::blocked_range<int64_t>(0, n, 1), [&](const tbb::blocked_range<int64_t>& r) {
      for (int64_t b = r.begin(); b != r.end(); ++b) {
        errors[b] = JacobianRows(
            *lins[b], out.cols, [&](int64_t e) { return full_index(b, e); }, out.j.data());
      }
    });
    for (const absl::Status& st : errors) {
      if (!st.ok()) return st;
    }
  }
  return out;
}

// Which entries of the two outputs meet in each kernel entry (spec 7.1).
struct AxisPlan {
  Shape out_shape;
  std::vector<int64_t> traced1, traced2;  // Offsets of the traced combinations.
  std::vector<int64_t> other1, other2;    // Offsets of the other combinations (row-major over those axes).
  std::vector<int64_t> out_o1, out_o2;    // For each kernel entry: its indices into other1 / other2.
};

absl::StatusOr<std::vector<bool>> AxisSet(const std::vector<int>& axes, int rank, const std::string& field) {
  std::vector<bool> in(rank, false);
  for (int a : axes) {
    const int c = a < 0 ? a + rank : a;
    if (c < 0 || c >= rank) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": axis ", a, " is out of range for outputs of rank ", rank));
    }
    in[c] = true;
  }
  return in;
}

absl::StatusOr<AxisPlan> MakePlan(const Shape& s1, const Shape& s2, const EmpiricalOptions& o) {
  const int rank = static_cast<int>(s1.size());
  if (s2.size() != s1.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the outputs for x1 and x2 have different ranks: ", ShapeToString(s1), " and ", ShapeToString(s2)));
  }
  auto traced = AxisSet(o.trace_axes, rank, "trace_axes");
  if (!traced.ok()) return traced.status();
  auto diag = AxisSet(o.diagonal_axes, rank, "diagonal_axes");
  if (!diag.ok()) return diag.status();
  AxisPlan p;
  std::vector<int64_t> stride1(rank, 1), stride2(rank, 1);
  for (int a = rank - 2; a >= 0; --a) {
    stride1[a] = stride1[a + 1] * s1[a + 1];
    stride2[a] = stride2[a + 1] * s2[a + 1];
  }
  std::vector<int> tr, other;
  for (int a = 0; a < rank; ++a) {
    if ((*traced)[a] && (*diag)[a]) {
      return absl::InvalidArgumentError(absl::StrCat("axis ", a, " is in both trace_axes and diagonal_axes"));
    }
    if (((*traced)[a] || (*diag)[a]) && s1[a] != s2[a]) {
      return absl::InvalidArgumentError(absl::StrCat((*traced)[a] ? "trace_axes" : "diagonal_axes", ": axis ",
                                                     a, " has sizes ", s1[a], " and ", s2[a],
                                                     " in the two outputs"));
    }
    ((*traced)[a] ? tr : other).push_back(a);
  }
  // Offsets of every combination of `axes` (row-major), for each side.
  auto combos = [](const std::vector<int>& axes, const Shape& s, const std::vector<int64_t>& stride) {
    std::vector<int64_t> offs = {0};
    for (int a : axes) {
      std::vector<int64_t> next;
      for (int64_t base : offs) {
        for (int64_t i = 0; i < s[a]; ++i) next.push_back(base + i * stride[a]);
      }
      offs = std::move(next);
    }
    return offs;
  };
  p.traced1 = combos(tr, s1, stride1);
  p.traced2 = combos(tr, s2, stride2);
  p.other1 = combos(other, s1, stride1);
  p.other2 = combos(other, s2, stride2);
  // Kernel entries: an odometer over the output axes.
  std::vector<int> out_axis_of;  // For each kernel axis: its output axis; side: 0 both (diagonal), 1, 2.
  std::vector<int> side;
  for (int a : other) {
    if ((*diag)[a]) {
      p.out_shape.push_back(s1[a]);
      out_axis_of.push_back(a);
      side.push_back(0);
    } else {
      p.out_shape.push_back(s1[a]);
      p.out_shape.push_back(s2[a]);
      out_axis_of.insert(out_axis_of.end(), {a, a});
      side.insert(side.end(), {1, 2});
    }
  }
  // Row-major strides over the `other` axes, per side.
  std::vector<int64_t> ostride1(rank, 0), ostride2(rank, 0);
  int64_t acc1 = 1, acc2 = 1;
  for (auto it = other.rbegin(); it != other.rend(); ++it) {
    ostride1[*it] = acc1;
    ostride2[*it] = acc2;
    acc1 *= s1[*it];
    acc2 *= s2[*it];
  }
  const int64_t total = NumElements(p.out_shape);
  p.out_o1.resize(total);
  p.out_o2.resize(total);
  std::vector<int64_t> idx(p.out_shape.size(), 0);
  for (int64_t e = 0; e < total; ++e) {
    int64_t o1 = 0, o2 = 0;
    for (size_t k = 0; k < idx.size(); ++k) {
      const int a = out_axis_of[k];
      if (side[k] != 2) o1 += idx[k] * ostride1[a];
      if (side[k] != 1) o2 += idx[k] * ostride2[a];
    }
    p.out_o1[e] = o1;
    p.out_o2[e] = o2;
    for (int k = static_cast<int>(idx.size()) - 1; k >= 0; --k) {
      if (++idx[k] < p.out_shape[k]) break;
      idx[k] = 0;
    }
  }
  return p;
}

// sum_t a[other1 + traced1[t]] . b[other2 + traced2[t]] / T for rows of `cols` entries, laid out as the
// plan's kernel. Rows are blocked in fixed blocks, so the result does not depend on the thread count.
Array Contract(const Real* a, const Real* b, int64_t cols, const AxisPlan& p) {
  const int64_t o1 = p.other1.size(), o2 = p.other2.size(), t = p.traced1.size();
  using ConstRows = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  // Rows `offsets[i] + shift` of `m`: a view when they are consecutive (no traced axis after the other
  // axes), else gathered into `buf`.
  auto rows = [cols](const Real* m, const std::vector<int64_t>& offsets, int64_t begin, int64_t n,
                     int64_t shift, RowMat* buf) -> ConstRows {
    bool consecutive = true;
    for (int64_t i = 1; i < n && consecutive; ++i) consecutive = offsets[begin + i] == offsets[begin] + i;
    if (consecutive) {
      return ConstRows(m + (offsets[begin] + shift) * cols, n, cols, Eigen::OuterStride<>(cols));
    }
    buf->resize(n, cols);
    for (int64_t i = 0; i < n; ++i) {
      buf->row(i) = Eigen::Map<const Eigen::Matrix<Real, 1, Eigen::Dynamic>>(
          m + (offsets[begin + i] + shift) * cols, cols);
    }
    return ConstRows(buf->data(), n, cols, Eigen::OuterStride<>(cols));
  };
  RowMat theta = RowMat::Zero(o1, o2);
  RowMat bbuf;
  constexpr int64_t kBlock = 32;
  for (int64_t k = 0; k < t; ++k) {
    const ConstRows bt = rows(b, p.other2, 0, o2, p.traced2[k], &bbuf);
    tbb::parallel_for(int64_t{0}, (o1 + kBlock - 1) / kBlock, [&](int64_t blk) {
      const int64_t begin = blk * kBlock, n = std::min(kBlock, o1 - begin);
      RowMat abuf;
      const ConstRows at = rows(a, p.other1, begin, n, p.traced1[k], &abuf);
      theta.middleRows(begin, n).noalias() += at * bt.transpose();
    });
  }
  Array out = Array::Uninitialized(p.out_shape);
  const Real inv_t = Real(1) / static_cast<Real>(t);
  for (int64_t e = 0; e < out.size(); ++e) out[e] = theta(p.out_o1[e], p.out_o2[e]) * inv_t;
  return out;
}

}  // namespace

int64_t NumParamEntries(const Params& params) {
  int64_t n = 0;
  for (const Array& a : params.arrays) n += a.size();
  for (const Params& c : params.children) n += NumParamEntries(c);
  return n;
}

absl::StatusOr<LinearizedApply> LinearizeApply(const Layer& net, const Params& params, const Array& x,
                                               std::optional<double> mask_constant, const ApplyContext& ctx) {
  auto lin = net.LinearizeMasked(params, ArrayFlow::Single(x),
                                 MaskFlow::Single(MaskOfConstant(x, mask_constant)), ctx);
  if (!lin.ok()) return lin.status();
  if (lin->out.values.is_list) {
    return absl::UnimplementedError("networks with several outputs: empirical kernels take one output");
  }
  LinearizedApply out;
  out.y = std::move(lin->out.values.single());
  std::shared_ptr<const Array> mask;
  if (lin->out.masks.single()) {
    ZeroWhereMasked(*lin->out.masks.single(), &out.y);  // apply_fn returns masked outputs as zeros.
    mask = std::make_shared<const Array>(*lin->out.masks.single());
  }
  out.pullback = [mask, pb = std::move(lin->pullback)](const Array& dy) -> absl::StatusOr<Cotangents> {
    Array g = dy;
    if (mask) ZeroWhereMasked(*mask, &g);
    return pb(ArrayFlow::Single(std::move(g)));
  };
  return out;
}

absl::StatusOr<Shape> EmpiricalKernelShape(const Shape& s1, const Shape& s2, const EmpiricalOptions& o) {
  auto plan = MakePlan(s1, s2, o);
  if (!plan.ok()) return plan.status();
  return plan->out_shape;
}

absl::StatusOr<double> EmpiricalKernelBytes(const Layer& net, double num_params, const Shape& x1,
                                            const Shape* x2, bool get_ntk, const EmpiricalOptions& o) {
  auto s1 = net.OutputShape(ShapeFlow::Single(x1));
  if (!s1.ok()) return s1.status();
  auto s2 = net.OutputShape(ShapeFlow::Single(x2 ? *x2 : x1));
  if (!s2.ok()) return s2.status();
  if (s1->is_list || s2->is_list) {
    return absl::UnimplementedError("networks with several outputs: empirical kernels take one output");
  }
  auto plan = MakePlan(s1->single(), s2->single(), o);
  if (!plan.ok()) return plan.status();
  const double y1 = static_cast<double>(NumElements(s1->single()));
  const double y2 = static_cast<double>(NumElements(s2->single()));
  // What the pullbacks keep of the forward pass: at most every layer's inputs and outputs, with a factor 2
  // for saved intermediates (an estimate: convolutions keep patch matrices, attention its weights).
  auto peak1 = net.PeakActivations(ShapeFlow::Single(x1));
  if (!peak1.ok()) return peak1.status();
  double saved = 2.0 * static_cast<double>(net.NumLayers()) * *peak1;
  if (x2) {
    auto peak2 = net.PeakActivations(ShapeFlow::Single(*x2));
    if (!peak2.ok()) return peak2.status();
    saved += 2.0 * static_cast<double>(net.NumLayers()) * *peak2;
  }
  const double entries = saved + (get_ntk ? (y1 + (x2 ? y2 : 0)) * num_params : 0) + (y1 + y2) +
                         2.0 * plan->other1.size() * plan->other2.size() +
                         static_cast<double>(NumElements(plan->out_shape));
  const double bytes = entries * sizeof(Real);
  if (o.memory_budget_bytes > 0 && bytes > o.memory_budget_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the empirical kernel needs about ", static_cast<int64_t>(bytes / 1e6),
                     " MB (Jacobians of ", static_cast<int64_t>(y1), " + ", static_cast<int64_t>(x2 ? y2 : 0),
                     " outputs by ", static_cast<int64_t>(num_params), " parameters), over the budget of ",
                     static_cast<int64_t>(o.memory_budget_bytes / 1e6), " MB: send fewer inputs at a time"));
  }
  return bytes;
}

absl::StatusOr<EmpiricalKernel> EmpiricalKernelFn(const Layer& net, const Params& params, const Array& x1,
                                                  const Array* x2, bool get_nngp, bool get_ntk,
                                                  const EmpiricalOptions& o) {
  const bool same = x2 == nullptr || SameArray(x1, *x2);
  auto s1 = net.OutputShape(ShapeFlow::Single(x1.shape()));
  if (!s1.ok()) return s1.status();
  auto s2 = net.OutputShape(ShapeFlow::Single(x2 ? x2->shape() : x1.shape()));
  if (!s2.ok()) return s2.status();
  if (s1->is_list || s2->is_list) {
    return absl::UnimplementedError("networks with several outputs: empirical kernels take one output");
  }
  auto bytes = EmpiricalKernelBytes(net, static_cast<double>(NumParamEntries(params)), x1.shape(),
                                    x2 && !same ? &x2->shape() : nullptr, get_ntk, o);
  if (!bytes.ok()) return bytes.status();
  auto plan = MakePlan(s1->single(), s2->single(), o);
  if (!plan.ok()) return plan.status();
  std::optional<RngKey> rng2 = o.rng;
  if (o.rng && !same) rng2 = o.rng->FoldIn(1);
  auto j1 = ComputeJacobian(net, params, x1, o.pattern1, o.rng, o, get_ntk);
  if (!j1.ok()) return j1.status();
  // x2 shares x1's Jacobian when it is the same input with the same pattern.
  bool same_pattern = true;
  if (x2 != nullptr) {
    same_pattern =
        (o.pattern1 && o.pattern2) ? SameArray(*o.pattern1, *o.pattern2) : o.pattern1 == o.pattern2;
  }
  std::optional<Jacobian> j2_own;
  if (!same || !same_pattern) {
    auto j2 = ComputeJacobian(net, params, x2 ? *x2 : x1, x2 ? o.pattern2 : o.pattern1, rng2, o, get_ntk);
    if (!j2.ok()) return j2.status();
    j2_own = *std::move(j2);
  }
  const Jacobian& j2 = j2_own ? *j2_own : *j1;
  EmpiricalKernel k;
  if (get_nngp) k.nngp = Contract(j1->y.data(), j2.y.data(), 1, *plan);
  if (get_ntk) k.ntk = Contract(j1->j.data(), j2.j.data(), j1->cols, *plan);
  return k;
}

absl::Status MonteCarloKernelFn(const Layer& net, const Array& x1, const Array* x2, bool get_nngp,
                                bool get_ntk, const MonteCarloOptions& o,
                                const std::function<absl::Status(int n, const EmpiricalKernel&)>& on_estimate,
                                const std::function<absl::Status(int done, int total)>& progress) {
  std::set<int> wanted;
  for (int n : o.n_samples) {
    if (n <= 0) return absl::InvalidArgumentError(absl::StrCat("n_samples: must be positive, got ", n));
    wanted.insert(n);
  }
  if (wanted.empty()) return absl::InvalidArgumentError("n_samples: at least one sample count is needed");
  const int total = *wanted.rbegin();
  std::vector<RngKey> sample_keys;
  RngKey k = o.key;
  for (int n = 0; n < total; ++n) {
    std::vector<RngKey> two = k.Split(2);
    k = two[0];
    sample_keys.push_back(two[1]);
  }
  const ShapeFlow in = ShapeFlow::Single(x1.shape());
  auto one_sample = [&](int n) -> absl::StatusOr<EmpiricalKernel> {
    std::vector<RngKey> keys = sample_keys[n].Split(2);
    auto params = net.Init(keys[0], in);
    if (!params.ok()) return params.status();
    EmpiricalOptions eo = o.empirical;
    eo.rng = keys[1];
    return EmpiricalKernelFn(net, *params, x1, x2, get_nngp, get_ntk, eo);
  };
  // Chunks of samples run in parallel; sums run in sample order.
  const int chunk = std::max(1, tbb::this_task_arena::max_concurrency());
  EmpiricalKernel sum;
  auto add = [](std::optional<Array>* acc, const std::optional<Array>& v) {
    if (!v) return;
    if (!*acc) {
      *acc = *v;
      return;
    }
    for (int64_t i = 0; i < v->size(); ++i) (**acc)[i] += (*v)[i];
  };
  for (int start = 0; start < total; start += chunk) {
    const int count = std::min(chunk, total - start);
    std::vector<absl::StatusOr<EmpiricalKernel>> results(count, absl::UnknownError("not run"));
    tbb::parallel_for(0, count, [&](int i) { results[i] = one_sample(start + i); });
    for (int i = 0; i < count; ++i) {
      if (!results[i].ok()) return results[i].status();
      add(&sum.nngp, results[i]->nngp);
      add(&sum.ntk, results[i]->ntk);
      const int n = start + i + 1;
      if (progress) {
        if (absl::Status st = progress(n, total); !st.ok()) return st;
      }
      if (wanted.count(n)) {
        EmpiricalKernel est = sum;
        const Real inv = Real(1) / static_cast<Real>(n);
        for (auto* a : {&est.nngp, &est.ntk}) {
          if (*a) {
            for (Real& v : (*a)->vec()) v *= inv;
          }
        }
        if (absl::Status st = on_estimate(n, est); !st.ok()) return st;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
