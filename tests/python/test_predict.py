"""nt.predict over the service: the example at the top of shared/seed/stax.txt run unchanged except for its
imports (jax.random replaced by numpy's), the server-side cache of train-train factorisations, the
consistency properties of gradient_descent_mse_ensemble, and clear errors.
"""

import collections
import json
import os
import unittest

import grpc
import numpy as np

import server_fixture
import ntclient
from ntclient import _proto
from ntclient import predict as nt_predict
from ntclient import stax
from ntclient import tensors


class _Nt:
  """Stands in for `import neural_tangents as nt` in the seed example."""
  predict = nt_predict


class PredictTest(server_fixture.ServerTestCase):

  def setUp(self):
    super().setUp()
    self._saved_default = ntclient.connection._default  # pylint: disable=protected-access
    ntclient.connect(self.address)  # The seed example uses the default connection.

  def tearDown(self):
    ntclient.connection._default = self._saved_default  # pylint: disable=protected-access
    super().tearDown()

  def test_seed_example(self):
    nt = _Nt
    key1, key2 = np.random.default_rng(1), np.random.default_rng(2)
    # --- The example, with random.normal / random.uniform from numpy.
    x_train = key1.normal(size=(20, 32, 32, 3))
    y_train = key1.uniform(size=(20, 10))
    x_test = key2.normal(size=(5, 32, 32, 3))
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Conv(128, (3, 3)),
        stax.Relu(),
        stax.Conv(256, (3, 3)),
        stax.Relu(),
        stax.Conv(512, (3, 3)),
        stax.Flatten(),
        stax.Dense(10)
    )
    predict_fn = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train,
                                                          y_train)
    # (5, 10) np.ndarray NNGP test prediction
    y_test_nngp = predict_fn(x_test=x_test, get='nngp')
    # (5, 10) np.ndarray NTK prediction
    y_test_ntk = predict_fn(x_test=x_test, get='ntk')
    # --- End of the example.
    self.assertEqual(y_test_nngp.shape, (5, 10))
    self.assertEqual(y_test_ntk.shape, (5, 10))
    self.assertTrue(np.all(np.isfinite(y_test_nngp)) and np.all(np.isfinite(y_test_ntk)))
    # Against a numpy GP posterior mean from kernels computed by the same server.
    k_dd = kernel_fn(x_train, None, ('nngp', 'ntk'))
    k_td = kernel_fn(x_test, x_train, ('nngp', 'ntk'))
    np.testing.assert_allclose(y_test_nngp, k_td.nngp @ np.linalg.solve(k_dd.nngp, y_train), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(y_test_ntk, k_td.ntk @ np.linalg.solve(k_dd.ntk, y_train), rtol=1e-6, atol=1e-9)

  def test_times_shapes_and_consistency(self):
    rng = np.random.default_rng(3)
    x_train, x_test = rng.normal(size=(12, 4)), rng.normal(size=(5, 4))
    y_train = rng.normal(size=(12, 2))
    _, _, kernel_fn = stax.serial(stax.Dense(64, 1.5, 0.1), stax.Erf(), stax.Dense(1, 1.5, 0.1))
    predict_fn = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate=0.5,
                                                          diag_reg=1e-4)
    ts = np.array([[0., 1.], [10., np.inf]])
    g = predict_fn(t=ts, x_test=x_test, compute_cov=True)
    self.assertEqual(g._fields, ('nngp', 'ntk'))
    self.assertEqual(g.nngp.mean.shape, (2, 2, 5, 2))
    self.assertEqual(g.ntk.covariance.shape, (2, 2, 5, 5))
    k_tt = kernel_fn(x_test, None, 'nngp')
    for kind in g:
      np.testing.assert_allclose(kind.mean[0, 0], 0, atol=1e-12)          # t = 0: the prior mean ...
      np.testing.assert_allclose(kind.covariance[0, 0], k_tt, rtol=1e-10)  # ... and covariance.
      inf = predict_fn(t=None, x_test=x_test, compute_cov=True)
    np.testing.assert_allclose(g.ntk.mean[1, 1], inf.ntk.mean, rtol=1e-12)
    np.testing.assert_allclose(g.nngp.covariance[1, 1], inf.nngp.covariance, rtol=1e-12)
    # Without x_test: predictions at the training points converge to the targets.
    train = predict_fn(t=1e8, get='ntk')
    np.testing.assert_allclose(train, y_train, atol=1e-3)

  def test_cache_is_reused_across_requests(self):
    rng = np.random.default_rng(4)
    x_train, y_train = rng.normal(size=(30, 6)), rng.normal(size=(30, 1))
    _, _, kernel_fn = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(1))
    predict_fn = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-6)
    first = predict_fn(x_test=rng.normal(size=(3, 6)), get='nngp')
    self.assertEqual(first.shape, (3, 1))
    # A second request with new test points: the server reports the train side as cached.
    req = _proto.service_pb2.PredictRequest(architecture=stax.layer_proto(kernel_fn), diag_reg=1e-6,
                                            get=['nngp'])
    tensors.fill_tensor(req.x_train, x_train)
    tensors.fill_tensor(req.y_train, y_train)
    tensors.fill_tensor(req.x_test, rng.normal(size=(4, 6)))
    header = next(iter(self.conn.predict(req, timeout=60))).header
    self.assertTrue(header.train_cached)
    req.diag_reg = 1e-5  # Another regulariser is another entry.
    header = next(iter(self.conn.predict(req, timeout=60))).header
    self.assertFalse(header.train_cached)

  def test_singular_train_kernel_is_a_clear_error(self):
    x = np.ones((4, 3))  # Identical training points: a singular kernel.
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    predict_fn = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, np.arange(4.)[:, None])
    with self.assertRaises(grpc.RpcError) as cm:
      predict_fn(x_test=np.zeros((2, 3)), get='nngp')
    self.assertEqual(cm.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
    self.assertIn('diag_reg', cm.exception.details())
    ok = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, np.arange(4.)[:, None], diag_reg=1e-3)
    self.assertTrue(np.all(np.isfinite(ok(x_test=np.zeros((2, 3)), get='nngp'))))

  def test_bad_requests(self):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    cases = [
        (dict(y_train=rng.normal(size=(5, 2))), 'y_train'),
        (dict(t=-1.), 't[0]'),
        (dict(diag_reg=-1.), 'diag_reg'),
        (dict(learning_rate=0.), 'learning_rate'),
    ]
    for kwargs, needle in cases:
      with self.subTest(needle=needle):
        y_train = kwargs.pop('y_train', y)
        t = kwargs.pop('t', None)
        predict_fn = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y_train, **kwargs)
        with self.assertRaises(grpc.RpcError) as cm:
          predict_fn(t=t, x_test=x[:2], get='ntk')
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn(needle, cm.exception.details())
    with self.assertRaises(NotImplementedError):
      nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y, trace_axes=(0,))
    # trace_axes=() is Theta x I over the outputs: the same predictions.
    a = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y, trace_axes=())(x_test=x[:2], get='ntk')
    b = nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y)(x_test=x[:2], get='ntk')
    np.testing.assert_allclose(a, b, rtol=1e-12)
    with self.assertRaises(NotImplementedError):
      nt_predict.gradient_descent_mse_ensemble(kernel_fn, x, y)(x_test=x, get='ntkgp')


def _array(obj):
  return np.asarray(obj['data'], dtype=np.float64).reshape(obj['shape'])


class KernelPredictTest(unittest.TestCase):
  """gp_inference and gradient_descent_mse (numpy, on the caller's kernels) against the golden predict
  cases' own kernels: t = inf is gp_inference, finite t the ensemble mean is gradient descent from f0 = 0."""

  def test_golden_predict_cases(self):
    names = ['predict_fc_relu', 'predict_fc_erf_reg', 'predict_conv1d_absreg']
    pair = collections.namedtuple('Pair', ['nngp', 'ntk'])
    for name in names:
      with open(os.path.join(server_fixture.GOLDEN_DIR, name + '.json'), encoding='utf-8') as f:
        case = json.load(f)
      k, o = case['kernels'], case['options']
      y = _array(case['inputs']['y_train'])
      k_dd = pair(_array(k['nngp_train_train']), _array(k['ntk_train_train']))
      k_td = pair(_array(k['nngp_test_train']), _array(k['ntk_test_train']))
      k_tt = _array(k['nngp_test_test'])
      reg = dict(diag_reg=o['diag_reg'], diag_reg_absolute_scale=o['diag_reg_absolute_scale'])
      gp = nt_predict.gp_inference(k_dd, y, **reg)(('nngp', 'ntk'), k_td, k_tt)
      for kind in ('nngp', 'ntk'):
        expected = case['expected'][kind]
        means, covs = _array(expected['mean']), _array(expected['cov'])
        tol = dict(rtol=1e-6, atol=1e-8 * np.abs(means).max())
        for i, t in enumerate(o['t']):
          with self.subTest(case=name, kind=kind, t=t):
            if t == 'inf':
              np.testing.assert_allclose(getattr(gp, kind).mean, means[i], **tol)
              np.testing.assert_allclose(getattr(gp, kind).covariance, covs[i], rtol=1e-6,
                                         atol=1e-8 * np.abs(covs).max())
            else:
              predict_fn = nt_predict.gradient_descent_mse(getattr(k_dd, kind), y,
                                                           learning_rate=o['learning_rate'], **reg)
              _, f_test = predict_fn(t, 0., 0., getattr(k_td, kind))
              np.testing.assert_allclose(f_test, means[i], **tol)

  def test_gradient_descent_mse_conventions(self):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(7, 3))
    k = x @ x.T / 3 + 0.2 * np.eye(7)
    y = rng.normal(size=(7, 2))
    predict_fn = nt_predict.gradient_descent_mse(k, y, learning_rate=2.)
    f0 = rng.normal(size=(7, 2))
    np.testing.assert_allclose(predict_fn(0., f0), f0, atol=1e-12)           # t = 0: the initial outputs.
    np.testing.assert_allclose(predict_fn(None, f0), y)                      # t = None: the targets.
    np.testing.assert_allclose(predict_fn(1e9, f0), y, atol=1e-8)
    self.assertEqual(predict_fn(np.ones((2, 3)), f0).shape, (2, 3, 7, 2))
    # The exact flow: f(t) = y + exp(-K lr t / n) (f0 - y).
    w, v = np.linalg.eigh(k)
    expected = y + v @ np.diag(np.exp(-w * 2. * 0.7 / y.size)) @ v.T @ (f0 - y)
    np.testing.assert_allclose(predict_fn(0.7, f0), expected, rtol=1e-10)
    with self.assertRaises(ValueError):
      predict_fn(1., None, None)
    with self.assertRaises(ValueError):
      predict_fn(1., 0., 0.)  # fx_test_0 without k_test_train.


  def test_gradient_descent_mse_loss_matches_closed_form(self):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 3))
    k_all = x @ x.T / 3 + 0.1 * np.eye(9)
    k_dd, k_td = k_all[:6, :6], k_all[6:, :6]
    y = rng.normal(size=(6, 2))
    ts = np.array([0.5, 2., 20.])
    f0, ft0 = rng.normal(size=(6, 2)), rng.normal(size=(3, 2))
    exact = nt_predict.gradient_descent_mse(k_dd, y, learning_rate=0.7)(ts, f0, ft0, k_td)
    ode = nt_predict.gradient_descent('mse', k_dd, y, learning_rate=0.7)(ts, f0, ft0, k_td)
    for a, b in zip(ode, exact):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    # Infinite time reaches the fixed point (to the solver's tolerance).
    inf_train = nt_predict.gradient_descent('mse', k_dd, y, learning_rate=50.)(None, f0)
    np.testing.assert_allclose(inf_train, y, atol=1e-4)

  def test_gradient_descent_with_momentum_matches_a_fine_rk4(self):
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 3))
    k = x @ x.T / 3 + 0.2 * np.eye(5)
    y = np.eye(3)[rng.integers(0, 3, size=5)]
    lr, m = 0.5, 0.9
    state = nt_predict.gradient_descent('cross_entropy', k, y, learning_rate=lr, momentum=m)(
        [1., 3.], nt_predict.ODEState(fx_train=np.zeros((5, 3))))
    self.assertIsInstance(state, nt_predict.ODEState)
    self.assertEqual(state.fx_train.shape, (2, 5, 3))
    # Independent reference: fixed-step RK4 of f' = q, q' = -K g(f) + mu q on times scaled by sqrt(lr).
    mu, scale = (m - 1) / np.sqrt(lr), np.sqrt(lr)
    grad = nt_predict.LOSS_GRADIENTS['cross_entropy']

    def deriv(z):
      f, q = z[:15].reshape(5, 3), z[15:].reshape(5, 3)
      return np.concatenate([q.ravel(), (-k @ grad(f, y) + mu * q).ravel()])
    z, t, out = np.zeros(30), 0.0, []
    for target in (1. * scale, 3. * scale):
      steps = 4000
      h = (target - t) / steps
      for _ in range(steps):
        k1 = deriv(z)
        k2 = deriv(z + h / 2 * k1)
        k3 = deriv(z + h / 2 * k2)
        k4 = deriv(z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
      t = target
      out.append(z[:15].reshape(5, 3))
    np.testing.assert_allclose(state.fx_train, np.stack(out), rtol=1e-6, atol=1e-8)
    with self.assertRaises(ValueError):
      nt_predict.gradient_descent('mse', k, y)(1., nt_predict.ODEState(fx_train=np.zeros((5, 3)),
                                                                       qx_train=np.zeros((5, 3))))
    with self.assertRaises(ValueError):
      nt_predict.gradient_descent('mse', k, y)([2., 1.])  # Times must increase.


if __name__ == '__main__':
  unittest.main()
