"""Every golden case through ntclient against a live nt-server, checked by shared/golden/check.py.

Kernel cases are computed with stax.from_json(architecture)[2](x1, x2, get=..., diagonal_batch=...,
diagonal_spatial=...), predict cases with ntclient.predict.gradient_descent_mse_ensemble(kernel_fn, x_train,
y_train, ...)(t, x_test, get, compute_cov=True), and written to $NT_RESULTS_DIR (default: a temporary
directory) in check.py's format. Every case must be computed (a refusal fails the test); check.py then runs
over the results.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
import numpy as np

import server_fixture
from ntclient import predict as nt_predict
from ntclient import stax

CHECK_PY = os.path.join(os.path.dirname(server_fixture.GOLDEN_DIR.rstrip(os.sep)), 'check.py')


def _array(obj):
  if obj is None:
    return None
  return np.asarray(obj['data'], dtype=np.float64).reshape(obj['shape'])


DISPUTES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'golden_disputes.txt')


def _disputes():
  """Case name -> disputed arrays (tests/golden_disputes.txt: provably wrong expected values)."""
  out = {}
  with open(DISPUTES_FILE, encoding='utf-8') as f:
    for line in f:
      if line.strip() and not line.startswith('#'):
        name, arrays = line.split()[:2]
        out[name] = set(arrays.split(','))
  return out


def _within_tolerance(case, key, got):
  """check.py's rule for one array of an exact case: |got - expected| <= atol + rtol |expected|."""
  expected = _array(case['expected'][key])
  tol = lambda spec: spec if isinstance(spec, (int, float)) else spec.get(key, 0.0)
  bound = tol(case.get('atol', 0.0)) + tol(case.get('rtol', 0.0)) * np.abs(expected)
  return got.shape == expected.shape and bool(np.all(np.abs(got - expected) <= bound))


def _to_json_array(a):
  a = np.asarray(a, dtype=np.float64)
  return {'shape': list(a.shape), 'data': [float(v) for v in a.ravel()]}


class GoldenServerTest(server_fixture.ServerTestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._results_tmp = None
    results = os.environ.get('NT_RESULTS_DIR')
    if not results:
      cls._results_tmp = tempfile.TemporaryDirectory(prefix='nt-golden-results-')
      results = cls._results_tmp.name
    os.makedirs(results, exist_ok=True)
    cls.results_dir = results

  @classmethod
  def tearDownClass(cls):
    if cls._results_tmp is not None:
      cls._results_tmp.cleanup()
    super().tearDownClass()

  def _compute(self, case):
    """The result dict of a kernel case; raises grpc.RpcError when the server refuses it."""
    _, _, kernel_fn = stax.from_json(case['architecture'])
    inputs, options = case['inputs'], case['options']
    x1, x2 = _array(inputs['x1']), _array(inputs.get('x2'))
    kwargs = {}
    if inputs.get('pattern1') is not None:
      p1 = _array(inputs['pattern1'])
      p2 = _array(inputs['pattern2']) if inputs.get('pattern2') is not None else p1
      kwargs['pattern'] = (p1, p2)
    get = tuple(options['get'])
    k = kernel_fn(x1, x2, get=get, diagonal_batch=options.get('diagonal_batch'),
                  diagonal_spatial=options.get('diagonal_spatial'), connection=self.conn, timeout=120,
                  **kwargs)
    return {name: _to_json_array(getattr(k, name)) for name in get if getattr(k, name) is not None}

  def _predict(self, case):
    """The result dict of a predict case (gradient_descent_mse_ensemble over the service)."""
    _, _, kernel_fn = stax.from_json(case['architecture'])
    inputs, options = case['inputs'], case['options']
    predict_fn = nt_predict.gradient_descent_mse_ensemble(
        kernel_fn, _array(inputs['x_train']), _array(inputs['y_train']),
        learning_rate=options['learning_rate'], diag_reg=options['diag_reg'],
        diag_reg_absolute_scale=options['diag_reg_absolute_scale'], trace_axes=tuple(options['trace_axes']),
        connection=self.conn, timeout=120)
    ts = np.array([np.inf if t == 'inf' else float(t) for t in options['t']])
    get = tuple(options['get'])
    g = predict_fn(t=ts, x_test=_array(inputs['x_test']), get=get, compute_cov=options['compute_cov'])
    return {name: {'mean': _to_json_array(getattr(g, name).mean),
                   'cov': _to_json_array(getattr(g, name).covariance)} for name in get}

  def test_golden_cases(self):
    paths = sorted(glob.glob(os.path.join(server_fixture.GOLDEN_DIR, '*.json')))
    self.assertTrue(paths, f'no golden cases in {server_fixture.GOLDEN_DIR}')
    computed = []
    start = time.monotonic()
    for path in paths:
      name = os.path.basename(path)[:-len('.json')]
      with open(path, encoding='utf-8') as f:
        case = json.load(f)
      with self.subTest(case=name):
        self.assertIn(case['kind'], ('kernel', 'predict'))
        try:
          result = self._compute(case) if case['kind'] == 'kernel' else self._predict(case)
        except grpc.RpcError as e:
          # Every layer of the golden cases is implemented: nothing may be refused.
          raise AssertionError(f'{name}: server error {e.code().name}: {e.details()}') from None
        with open(os.path.join(self.results_dir, name + '.json'), 'w', encoding='utf-8') as f:
          json.dump(result, f)
        computed.append(name)
    elapsed = time.monotonic() - start

    print(f'\n[golden] {len(computed)} computed in {elapsed:.2f} s (results in {self.results_dir})',
          file=sys.stderr)

    self.assertEqual(len(computed), len(paths))

    # Disputed cases: the other arrays pass, each disputed array still disagrees with the file.
    disputes = _disputes()
    for name, arrays in disputes.items():
      with open(os.path.join(server_fixture.GOLDEN_DIR, name + '.json'), encoding='utf-8') as f:
        case = json.load(f)
      with open(os.path.join(self.results_dir, name + '.json'), encoding='utf-8') as f:
        result = json.load(f)
      for key in result:
        ok = _within_tolerance(case, key, _array(result[key]))
        self.assertEqual(ok, key not in arrays,
                         f'{name}.{key}: ' + ('now matches the case; remove its dispute' if ok else 'differs'))

    # check.py over a directory holding the computed cases that are not disputed.
    checked = [name for name in computed if name not in disputes]
    with tempfile.TemporaryDirectory(prefix='nt-golden-computed-') as cases_dir:
      for name in checked:
        shutil.copy(os.path.join(server_fixture.GOLDEN_DIR, name + '.json'), cases_dir)
      proc = subprocess.run([sys.executable, CHECK_PY, cases_dir, self.results_dir],
                            capture_output=True, text=True, timeout=120, check=False)
    report = proc.stdout + proc.stderr
    print(report, file=sys.stderr)
    self.assertEqual(proc.returncode, 0, f'check.py failed:\n{report}')
    self.assertIn(f'{len(checked)} passed, 0 failed', report)


if __name__ == '__main__':
  unittest.main()
