#include "core/expression.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/layer.h"
#include "muParser.h"

namespace NT_CORE_NS {

namespace {
constexpr size_t kMaxExpressionLength = 4096;
}  // namespace

struct Expression::Slot {
  mu::Parser parser;
  std::vector<double> values;
};

Expression::Expression(std::string text, std::vector<std::string> vars)
    : text_(std::move(text)), vars_(std::move(vars)) {}

Expression::~Expression() = default;

std::unique_ptr<Expression::Slot> Expression::NewSlot() const {
  // Building and parsing are rare (one parser per concurrently evaluating thread and expression): keep
  // them serialised in case muparser's construction touches shared state; evaluation runs unlocked.
  static std::mutex build_mu;
  std::lock_guard<std::mutex> lock(build_mu);
  auto slot = std::make_unique<Slot>();
  slot->values.assign(vars_.size(), 0.0);
  for (size_t j = 0; j < vars_.size(); ++j) slot->parser.DefineVar(vars_[j], &slot->values[j]);
  slot->parser.SetExpr(text_);
  slot->parser.Eval();  // muparser parses lazily, on the first evaluation (errors throw here).
  return slot;
}

absl::StatusOr<std::shared_ptr<const Expression>> Expression::Parse(const std::string& layer,
                                                                    const std::string& field,
                                                                    const std::string& text,
                                                                    std::vector<std::string> vars) {
  if (text.size() > kMaxExpressionLength) {
    return LayerError(layer, field,
                      absl::StrCat("expression longer than ", kMaxExpressionLength, " characters"));
  }
  std::shared_ptr<Expression> e(new Expression(text, std::move(vars)));
  const std::string allowed = absl::StrCat("variables: ", absl::StrJoin(e->vars_, ", "));
  try {
    std::unique_ptr<Slot> slot = e->NewSlot();  // Reports syntax errors and unknown names.
    if (slot->parser.GetNumResults() != 1) {
      return LayerError(layer, field, absl::StrCat("expression '", text, "' must have exactly one value"));
    }
    e->Release(std::move(slot));
  } catch (const mu::Parser::exception_type& err) {
    return LayerError(layer, field,
                      absl::StrCat("invalid expression '", text, "': ", err.GetMsg(), " (", allowed, ")"));
  }
  return std::shared_ptr<const Expression>(std::move(e));
}

std::unique_ptr<Expression::Slot> Expression::Acquire() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pool_.empty()) {
      std::unique_ptr<Slot> s = std::move(pool_.back());
      pool_.pop_back();
      return s;
    }
  }
  return NewSlot();  // Parsed once at Parse(), so this cannot throw.
}

void Expression::Release(std::unique_ptr<Slot> slot) const {
  std::lock_guard<std::mutex> lock(mu_);
  pool_.push_back(std::move(slot));
}

void Expression::Eval(const double* const* args, int64_t n, double* out) const {
  std::unique_ptr<Slot> s = Acquire();
  const int a = arity();
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < a; ++j) s->values[j] = args[j][i];
    out[i] = s->parser.Eval();
  }
  Release(std::move(s));
}

void Expression::Eval1(const double* x, int64_t n, double* y) const {
  std::unique_ptr<Slot> s = Acquire();
  double& v = s->values[0];
  for (int64_t i = 0; i < n; ++i) {
    v = x[i];
    y[i] = s->parser.Eval();
  }
  Release(std::move(s));
}

void Expression::Diff(int wrt, const double* const* args, const double* scale, int64_t n, double* out) const {
  std::unique_ptr<Slot> s = Acquire();
  const int a = arity();
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < a; ++j) s->values[j] = args[j][i];
    const double x = args[wrt][i];
    const double h = 1e-3 * std::max(scale ? scale[i] : std::max(1.0, std::abs(x)), 1e-8);
    auto f = [&](double dx) {
      s->values[wrt] = x + dx;
      return s->parser.Eval();
    };
    double d = (f(-2 * h) - 8 * f(-h) + 8 * f(h) - f(2 * h)) / (12 * h);
    if (!std::isfinite(d)) {
      const double f0 = f(0);
      const double fwd = (-3 * f0 + 4 * f(h) - f(2 * h)) / (2 * h);
      const double bwd = (3 * f0 - 4 * f(-h) + f(-2 * h)) / (2 * h);
      d = std::isfinite(fwd) ? fwd : bwd;
    }
    out[i] = d;
  }
  Release(std::move(s));
}

absl::StatusOr<ArrayFlow> ElementwiseExpressionLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  if (!fn_) return LayerUnimplemented(name(), "apply_fn needs fn (only nngp_fn was given)");
  ArrayFlow y = x;
  Array& a = y.single();
  MapInPlace(&a, [&](const double* in, int64_t n, double* out) { fn_->Eval1(in, n, out); });
  return y;
}

double ElementwiseExpressionLayer::Phi(double x) const {
  double y = std::nan("");
  if (fn_) fn_->Eval1(&x, 1, &y);
  return y;
}

void ElementwiseExpressionLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n,
                                         double* t, double* tdot) const {
  const double* args[3] = {q12, q11, q22};  // nngp_fn(cov12, var1, var2).
  // Tdot first: t may alias an input (the default DiagMap maps in place).
  if (tdot) {
    if (d_nngp_fn_) {
      d_nngp_fn_->Eval(args, n, tdot);
    } else {
      std::vector<double> scale(n);
      for (int64_t i = 0; i < n; ++i) {
        scale[i] = std::max(std::sqrt(std::abs(q11[i] * q22[i])), std::abs(q12[i]));
      }
      nngp_fn_->Diff(0, args, scale.data(), n, tdot);
    }
  }
  nngp_fn_->Eval(args, n, t);
}

absl::Status ElementwiseExpressionLayer::TransformKernel(KernelFlow* k, const KernelContext& ctx) const {
  if (!nngp_fn_) return LayerUnimplemented(name(), "kernel_fn needs nngp_fn (only fn was given)");
  return ElementwiseLayer::TransformKernel(k, ctx);
}

// fn' by the expression's central differences (text expressions have no symbolic derivative).
double ElementwiseExpressionLayer::DPhi(double x) const {
  double y = std::nan("");
  const double* args[] = {&x};
  if (fn_) fn_->Diff(0, args, nullptr, 1, &y);
  return y;
}

}  // namespace NT_CORE_NS
