// GlobalSelfAttention options shared by the attention tests (kernel and reverse mode).
#ifndef NT_TESTS_ATTENTION_TEST_UTIL_H_
#define NT_TESTS_ATTENTION_TEST_UTIL_H_

#include <cstdint>
#include <string>

#include "core/attention.h"

namespace nt::testing_util {

struct AttentionWidths {
  int64_t out, key, val, heads;
};

// Non-unit stds, so that every scale factor is exercised.
inline GlobalSelfAttentionOptions AttentionOptions(AttentionMechanism mech, PositionalEmbedding pe,
                                                   AttentionWidths w) {
  GlobalSelfAttentionOptions o;
  o.n_chan_out = w.out;
  o.n_chan_key = w.key;
  o.n_chan_val = w.val;
  o.n_heads = w.heads;
  o.W_key_std = 1.3;
  o.W_query_std = 0.9;
  o.W_value_std = 1.2;
  o.W_out_std = 0.8;
  o.b_std = 0.3;
  o.attention_mechanism = mech;
  o.pos_emb_type = pe;
  o.W_pos_emb_std = 0.7;
  return o;
}

// For failure messages.
inline std::string Describe(const GlobalSelfAttentionOptions& o) {
  return std::string(AttentionMechanismName(o.attention_mechanism)) + " " +
         PositionalEmbeddingName(o.pos_emb_type) + (o.val_pos_emb ? " val_pos_emb" : "") +
         (o.pos_emb_decay_fn ? " decay " + *o.pos_emb_decay_fn : "") +
         (o.linear_scaling ? "" : " sqrt-scaling");
}

}  // namespace nt::testing_util

#endif  // NT_TESTS_ATTENTION_TEST_UTIL_H_
