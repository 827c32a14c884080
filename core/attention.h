// GlobalSelfAttention (linear.md 5.7): multi-head scaled dot-product self-attention over all spatial
// positions, with optional positional embeddings; its kernel in the linear-scaling limit (any attention
// mechanism) and in the 1/sqrt(n_chan_key) limit of the IDENTITY mechanism.
#ifndef NT_CORE_ATTENTION_H_
#define NT_CORE_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/expression.h"
#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

// Upstream's AttentionMechanism: the map applied to the attention logits (softmax over keys).
enum class AttentionMechanism { kSoftmax, kIdentity, kAbs, kRelu };
// Upstream's PositionalEmbedding: none, added to the inputs, or appended as extra channels.
enum class PositionalEmbedding { kNone, kSum, kConcat };

// Upstream's enum names ("SOFTMAX", ...; case-sensitive as upstream).
absl::StatusOr<AttentionMechanism> ParseAttentionMechanism(const std::string& value);
absl::StatusOr<PositionalEmbedding> ParsePositionalEmbedding(const std::string& value);
const char* AttentionMechanismName(AttentionMechanism m);
const char* PositionalEmbeddingName(PositionalEmbedding p);

struct GlobalSelfAttentionOptions {
  int64_t n_chan_out = 0;
  int64_t n_chan_key = 0;
  int64_t n_chan_val = 0;
  int64_t n_heads = 0;
  bool linear_scaling = true;
  double W_key_std = 1.0;
  double W_value_std = 1.0;
  double W_query_std = 1.0;
  double W_out_std = 1.0;
  std::optional<double> b_std;  // None: no bias.
  AttentionMechanism attention_mechanism = AttentionMechanism::kSoftmax;
  PositionalEmbedding pos_emb_type = PositionalEmbedding::kNone;
  double pos_emb_p_norm = 2.0;
  // Text expression of `d` (sum over axes of |p_d - p'_d|^pos_emb_p_norm); None: the indicator d == 0.
  std::optional<std::string> pos_emb_decay_fn;
  std::optional<int64_t> n_chan_pos_emb;  // None: the input channel count.
  double W_pos_emb_std = 1.0;
  bool val_pos_emb = false;
  int batch_axis = 0;
  int channel_axis = -1;
};

class GlobalSelfAttentionLayer : public Layer {
 public:
  // `o` must have passed Validate (the decay expression is parsed again here).
  explicit GlobalSelfAttentionLayer(GlobalSelfAttentionOptions o);
  static absl::Status Validate(const GlobalSelfAttentionOptions& o);

  std::string name() const override { return "GlobalSelfAttention"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  // Arrays, upstream's order with its None entries left out: [W_query (unless linear_scaling)], W_key
  // (n_heads, C_k, n_chan_key), W_value (n_heads, C_v, n_chan_val), W_out (n_chan_val n_heads,
  // n_chan_out), [b], [positional embedding (input shape, batch 1, channels C_pe)].
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  using Layer::ApplyMasked;
  // Masks act inside the layer (masked keys are ignored, embeddings zeroed), so the plain zero-then-apply
  // path of Layer does not suffice.
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x,
                                     const MaskFlow& masks) const override;
  // Reverse mode: the same forward passes as Apply / ApplyMasked, with their pullbacks.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  // A position stays masked only if every input channel is masked.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return true; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Init's arrays for an input of shape `s` (valid for OutputShape): (index of the split key, shape).
  std::vector<std::pair<int, Shape>> ParamShapes(const Shape& s) const;
  // Channels of the positional embedding for `c_in` input channels.
  int64_t PosEmbChannels(int64_t c_in) const;
  // What the backward pass needs of a forward pass (defined in attention.cc).
  struct Tape;
  // The forward pass; `mask` (1 = masked, same rank as x, broadcastable) may be null. With `tape`, also
  // records what the pullback needs.
  absl::StatusOr<Array> Forward(const Params& params, const Array& x, const Array* mask,
                                std::shared_ptr<Tape>* tape = nullptr) const;
  // The pullback of a recorded forward pass: cotangents of the (already zeroed) input and the params.
  static absl::StatusOr<Cotangents> Backward(const Tape& t, const ArrayFlow& dy);
  // R[q, q'] over positions flattened row-major (P x P): the decay of the p-norm distance, or the
  // identity without a decay function.
  std::vector<double> PositionalCovariance(const std::vector<int64_t>& sizes) const;

  GlobalSelfAttentionOptions o_;
  ExpressionPtr decay_;
  absl::Status decay_status_;  // Parse error of pos_emb_decay_fn, reported by every function.
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_ATTENTION_H_
