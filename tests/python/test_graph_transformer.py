"""A graph network (Aggregate) and a small transformer block (attention + LayerNorm + FanInSum residual +
Dense + Relu) through a live server from the Python client, each checked entry by entry against an
independent numpy evaluation of the kernel recursion (linear.md 5.2, 5.7, 5.8, 5.13; elementwise.md's
Relu). Per pair of inputs (i, j) the recursion carries the full spatial blocks t11 (i with itself), t22 and
t12 (P x P), and the NTK block of (i, j):

  Dense      t -> W^2 t + b^2 (each block);                   ntk -> W^2 ntk + t12'
  Relu       arc-cosine map with the variances on the diagonals of t11, t22;   ntk -> ntk * kdot
  Aggregate  t12 -> A_i^T t12 A_j, t11 -> A_i^T t11 A_i, ...; ntk like t12
  Attention  A_i = softmax(QK t11) over keys (linear scaling); t12 -> OV^2 A_i t12 A_j^T + b^2;
             ntk -> OV^2 A_i (ntk + 2 t12) A_j^T + b^2
  LayerNorm  t12 -> t12 / sqrt(diag(t11) diag(t22)^T), ntk likewise
  residual   FanOut, parallel(branch, Identity), FanInSum: branch(t) + t for every block
  pooling    GlobalSumPool / GlobalAvgPool: sum / mean of the block
"""

import unittest

import numpy as np

import server_fixture
from ntclient import stax


def relu_map(t12, d1, d2):
  norms = np.sqrt(np.outer(d1, d2))
  theta = np.arccos(np.clip(t12 / norms, -1.0, 1.0))
  return (norms * np.sin(theta) + (np.pi - theta) * t12) / (2 * np.pi), (np.pi - theta) / (2 * np.pi)


class Blocks:
  """t11, t22, t12 and ntk of one pair of inputs (P x P each)."""

  def __init__(self, xi, xj):
    c = xi.shape[-1]
    self.t11, self.t22, self.t12 = xi @ xi.T / c, xj @ xj.T / c, xi @ xj.T / c
    self.ntk = np.zeros_like(self.t12)

  def copy(self):
    b = Blocks.__new__(Blocks)
    b.t11, b.t22, b.t12, b.ntk = self.t11.copy(), self.t22.copy(), self.t12.copy(), self.ntk.copy()
    return b

  def dense(self, w, b):
    self.t11, self.t22, self.t12 = (w**2 * t + b**2 for t in (self.t11, self.t22, self.t12))
    self.ntk = w**2 * self.ntk + self.t12
    return self

  def relu(self):
    d1, d2 = np.diag(self.t11).copy(), np.diag(self.t22).copy()
    self.t12, kdot = relu_map(self.t12, d1, d2)
    self.ntk = self.ntk * kdot
    self.t11 = relu_map(self.t11, d1, d1)[0]
    self.t22 = relu_map(self.t22, d2, d2)[0]
    return self

  def aggregate(self, ai, aj):
    self.t11, self.t22 = ai.T @ self.t11 @ ai, aj.T @ self.t22 @ aj
    self.t12, self.ntk = ai.T @ self.t12 @ aj, ai.T @ self.ntk @ aj
    return self

  def attention(self, qk, ov, b):
    def softmax(z):
      e = np.exp(z - z.max(axis=-1, keepdims=True))
      return e / e.sum(axis=-1, keepdims=True)
    ai, aj = softmax(qk * self.t11), softmax(qk * self.t22)
    t12 = self.t12
    self.t11 = ov**2 * ai @ self.t11 @ ai.T + b**2
    self.t22 = ov**2 * aj @ self.t22 @ aj.T + b**2
    self.t12 = ov**2 * ai @ t12 @ aj.T + b**2
    self.ntk = ov**2 * ai @ (self.ntk + 2 * t12) @ aj.T + b**2
    return self

  def layer_norm(self):
    s1, s2 = 1 / np.sqrt(np.diag(self.t11)), 1 / np.sqrt(np.diag(self.t22))
    self.t11, self.t22 = self.t11 * np.outer(s1, s1), self.t22 * np.outer(s2, s2)
    self.t12, self.ntk = self.t12 * np.outer(s1, s2), self.ntk * np.outer(s1, s2)
    return self

  def residual(self, branch):
    other = branch(self.copy())
    for name in ('t11', 't22', 't12', 'ntk'):
      setattr(self, name, getattr(self, name) + getattr(other, name))
    return self


def reference(x1, x2, pair_fn):
  nngp = np.zeros((len(x1), len(x2)))
  ntk = np.zeros_like(nngp)
  for i in range(len(x1)):
    for j in range(len(x2)):
      nngp[i, j], ntk[i, j] = pair_fn(i, j, Blocks(x1[i], x2[j]))
  return nngp, ntk


def random_graphs(rng, n, v):
  a = rng.uniform(0.5, 1.5, (n, v, v))
  return a * (rng.uniform(size=(n, v, v)) < 0.5)


class GraphNetworkTest(server_fixture.ServerTestCase):

  def test_aggregate_graph_network(self):
    rng = np.random.default_rng(3)
    v, c = 6, 4
    x1, x2 = rng.standard_normal((4, v, c)), rng.standard_normal((3, v, c))
    p1, p2 = random_graphs(rng, 4, v), random_graphs(rng, 3, v)
    _, _, kernel_fn = stax.serial(
        stax.Dense(64, W_std=1.4, b_std=0.1), stax.Relu(), stax.Aggregate(),
        stax.Dense(64, W_std=1.2, b_std=0.2), stax.Relu(), stax.Aggregate(),
        stax.GlobalSumPool(), stax.Dense(1, W_std=1.1, b_std=0.1))
    k = kernel_fn(x1, x2, ('nngp', 'ntk'), pattern=(p1, p2), connection=self.conn, timeout=60)

    def pair(i, j, b):
      b.dense(1.4, 0.1).relu().aggregate(p1[i], p2[j]).dense(1.2, 0.2).relu().aggregate(p1[i], p2[j])
      s, s_ntk = b.t12.sum(), b.ntk.sum()
      nngp = 1.1**2 * s + 0.1**2
      return nngp, 1.1**2 * s_ntk + nngp

    nngp, ntk = reference(x1, x2, pair)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-10)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-10)

    # The same graphs as SPARSE integer edge lists (one edge per unit of weight: 0/1 weights here).
    q1 = (p1 > 0).astype(np.float64)
    edges = np.array([[[t, h] for t in range(v) for h in range(v) if q1[n, t, h]] +
                      [[-1, -1]] * (v * v - int(q1[n].sum())) for n in range(4)], dtype=np.int64)
    _, _, sparse_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Aggregate(implementation='SPARSE'),
                                  stax.GlobalAvgPool())
    _, _, dense_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Aggregate(), stax.GlobalAvgPool())
    ks = sparse_fn(x1, None, ('nngp', 'ntk'), pattern=edges, connection=self.conn, timeout=60)
    kd = dense_fn(x1, None, ('nngp', 'ntk'), pattern=q1, connection=self.conn, timeout=60)
    np.testing.assert_allclose(ks.nngp, kd.nngp, rtol=1e-12)
    np.testing.assert_allclose(ks.ntk, kd.ntk, rtol=1e-12)


class TransformerBlockTest(server_fixture.ServerTestCase):

  def test_transformer_block(self):
    rng = np.random.default_rng(5)
    p, c, w = 5, 3, 64
    x1, x2 = rng.standard_normal((3, p, c)), rng.standard_normal((2, p, c))
    qk, ov, b_att = 1.3 * 0.9, 1.1 * 1.2, 0.2
    attention = stax.GlobalSelfAttention(w, w, w, 4, W_key_std=1.3, W_query_std=0.9, W_value_std=1.1,
                                         W_out_std=1.2, b_std=b_att)
    _, _, kernel_fn = stax.serial(
        stax.Dense(w, W_std=1.0, b_std=0.1),
        stax.FanOut(2), stax.parallel(attention, stax.Identity()), stax.FanInSum(), stax.LayerNorm(),
        stax.FanOut(2),
        stax.parallel(stax.serial(stax.Dense(w, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(w, W_std=1.2)),
                      stax.Identity()),
        stax.FanInSum(), stax.LayerNorm(), stax.GlobalAvgPool(), stax.Dense(1, W_std=1.3, b_std=0.05))
    k = kernel_fn(x1, x2, ('nngp', 'ntk'), connection=self.conn, timeout=60)

    def pair(i, j, b):
      b.dense(1.0, 0.1)
      b.residual(lambda t: t.attention(qk, ov, b_att)).layer_norm()
      b.residual(lambda t: t.dense(1.5, 0.1).relu().dense(1.2, 0.0)).layer_norm()
      m, m_ntk = b.t12.mean(), b.ntk.mean()
      nngp = 1.3**2 * m + 0.05**2
      return nngp, 1.3**2 * m_ntk + nngp

    nngp, ntk = reference(x1, x2, pair)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-10)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-10)
    # x2 = None: the kernel of x1 with itself, symmetric, the same entries as x2 = x1.
    k11 = kernel_fn(x1, None, ('nngp', 'ntk'), connection=self.conn, timeout=60)
    ref11 = reference(x1, x1, pair)
    np.testing.assert_allclose(k11.nngp, ref11[0], rtol=1e-10)
    np.testing.assert_allclose(k11.ntk, ref11[1], rtol=1e-8)  # Relu's derivative at correlation 1.


if __name__ == '__main__':
  unittest.main()
