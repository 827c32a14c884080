"""The `nt` command-line client (build/client/nt, or $NT_CLI_BIN) against a live nt-server."""

import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

import server_fixture
from ntclient import stax

CLI_TIMEOUT_S = 60


def _array(obj):
  return None if obj is None else np.asarray(obj['data'], dtype=np.float64).reshape(obj['shape'])


def _load_case(name):
  with open(os.path.join(server_fixture.GOLDEN_DIR, name + '.json'), encoding='utf-8') as f:
    return json.load(f)


class CliTest(server_fixture.ServerTestCase):

  @classmethod
  def setUpClass(cls):
    if not os.access(server_fixture.CLI_BIN, os.X_OK):
      raise unittest.SkipTest(f'nt CLI not found at {server_fixture.CLI_BIN} (build target `nt` or set '
                              'NT_CLI_BIN)')
    super().setUpClass()

  def setUp(self):
    tmp = tempfile.TemporaryDirectory(prefix='nt-cli-test-')
    self.addCleanup(tmp.cleanup)
    self.dir = tmp.name

  def path(self, name):
    return os.path.join(self.dir, name)

  def nt(self, *args, server=True):
    """Runs `nt ARGS --server ADDRESS`; returns the CompletedProcess."""
    cmd = [server_fixture.CLI_BIN] + [str(a) for a in args]
    if server:
      cmd += ['--server', self.address]
    env = dict(os.environ)
    env.pop('NT_SERVER', None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env,
                          check=False, stdin=subprocess.DEVNULL)

  def assertOk(self, proc):
    self.assertEqual(proc.returncode, 0, f'{proc.args} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}')

  def write_inputs(self, case):
    arch = self.path('arch.json')
    with open(arch, 'w', encoding='utf-8') as f:
      json.dump(case['architecture'], f)
    args = ['--arch', arch]
    for key in ('x1', 'x2'):
      a = _array(case['inputs'].get(key))
      if a is not None:
        np.save(self.path(key + '.npy'), a)
        args += [f'--{key}', self.path(key + '.npy')]
    return args

  def check_against_golden(self, case, got):
    rtol = case['rtol']
    for name, exp in case['expected'].items():
      atol = case['atol'][name] if isinstance(case['atol'], dict) else case['atol']
      with self.subTest(case=case['name'], array=name):
        self.assertIn(name, got)
        np.testing.assert_allclose(got[name], _array(exp), rtol=rtol, atol=atol)

  def test_kernel_golden_cases(self):
    for name in ('fc_relu', 'fc_abs', 'fc_residual_fanin_sum', 'fc_standard_param'):
      case = _load_case(name)
      with self.subTest(case=name):
        out = self.path(name + '.npz')
        options = case['options']
        proc = self.nt('kernel', *self.write_inputs(case), '--get', ','.join(options['get']),
                       '--diagonal-batch', str(options['diagonal_batch']).lower(),
                       '--diagonal-spatial', str(options['diagonal_spatial']).lower(), '--out', out)
        self.assertOk(proc)
        self.assertIn(f'wrote {out}', proc.stdout)
        with np.load(out) as npz:
          got = {k: npz[k] for k in npz.files}
        self.assertEqual(sorted(got), sorted(options['get'] if case['inputs'].get('x2') is not None
                                             else [g for g in options['get'] if g != 'cov2']))
        for a in got.values():
          self.assertEqual(a.dtype, np.float64)
        self.check_against_golden(case, got)

  def test_kernel_arch_from_case_file_float32(self):
    # --arch also takes a whole golden case file; --float32 gives float32 arrays.
    case = _load_case('fc_erf')
    args = self.write_inputs(case)
    out = self.path('k32.npz')
    proc = self.nt('kernel', '--arch', os.path.join(server_fixture.GOLDEN_DIR, 'fc_erf.json'), *args[2:],
                   '--get', 'nngp,ntk', '--float32', '--out', out)
    self.assertOk(proc)
    with np.load(out) as npz:
      self.assertEqual(sorted(npz.files), ['nngp', 'ntk'])
      for name in ('nngp', 'ntk'):
        self.assertEqual(npz[name].dtype, np.float32)
        np.testing.assert_allclose(npz[name], _array(case['expected'][name]), rtol=1e-6, atol=1e-6)

  def test_kernel_symmetric_matches_ntclient(self):
    # x2 omitted: mirrored tiles assembled by the C++ client equal the Python client's result.
    x = np.random.default_rng(5).standard_normal((150, 6))
    triple = stax.serial(stax.Dense(32, W_std=1.4, b_std=0.1), stax.LeakyRelu(0.2), stax.Dense(1))
    with open(self.path('arch.json'), 'w', encoding='utf-8') as f:
      json.dump(stax.to_json(triple), f)
    np.save(self.path('x.npy'), x)
    out = self.path('sym.npz')
    proc = self.nt('kernel', '--arch', self.path('arch.json'), '--x1', self.path('x.npy'), '--get', 'nngp,ntk',
                   '--tile-size', 32, '--out', out)
    self.assertOk(proc)
    expected = triple.kernel_fn(x, None, ('nngp', 'ntk'), tile_size=32, connection=self.conn, timeout=30)
    with np.load(out) as npz:
      for name in ('nngp', 'ntk'):
        self.assertEqual(npz[name].shape, (150, 150))
        np.testing.assert_array_equal(npz[name], getattr(expected, name))
        np.testing.assert_array_equal(npz[name], npz[name].T)

  def test_kernel_print(self):
    case = _load_case('fc_identity')
    proc = self.nt('kernel', *self.write_inputs(case), '--get', 'nngp', '--print')
    self.assertOk(proc)
    self.assertIn('nngp: (3, 3) float64', proc.stdout)
    self.assertIn('nngp = [[', proc.stdout)

  def test_describe(self):
    case = _load_case('fc_relu')
    proc = self.nt('describe', *self.write_inputs(case)[:2], '--x1-shape', '5,5', '--x2-shape', '4,5',
                   '--get', 'nngp,ntk,cov1')
    self.assertOk(proc)
    lines = proc.stdout
    self.assertIn('output_shape1:    (5, 3)', lines)
    self.assertIn('output_shape2:    (4, 3)', lines)
    self.assertRegex(lines, r'nngp\s+\(5, 4\)\s+tiled_axes=2')
    self.assertRegex(lines, r'ntk\s+\(5, 4\)\s+tiled_axes=2')
    self.assertRegex(lines, r'cov1\s+\(5,\)\s+tiled_axes=1')
    self.assertNotIn('cov2', lines)
    self.assertRegex(lines, r'num_tiles:\s+1\b')

  def test_health(self):
    proc = self.nt('health')
    self.assertOk(proc)
    self.assertEqual(proc.stdout.strip(), f'{self.address}: SERVING')

  def test_server_errors(self):
    case = _load_case('fc_relu')
    args = self.write_inputs(case)
    # Unknown get name: the server refuses it.
    proc = self.nt('kernel', *args, '--get', 'nngp,bogus')
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('INVALID_ARGUMENT', proc.stderr)
    self.assertIn("'bogus'", proc.stderr)
    # Unimplemented layer argument (Aggregate's to_dense other than the identity).
    with open(self.path('to_dense.json'), 'w') as f:
      json.dump({'layer': 'serial', 'layers': [{'layer': 'Dense', 'args': {'out_dim': 4}},
                                               {'layer': 'Aggregate', 'args': {'to_dense': '2 * p'}}]}, f)
    proc = self.nt('kernel', '--arch', self.path('to_dense.json'), '--x1', self.path('x1.npy'))
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('UNIMPLEMENTED', proc.stderr)
    self.assertIn('to_dense', proc.stderr)
    # NaN input.
    x = _array(case['inputs']['x1'])
    x[0, 0] = np.nan
    np.save(self.path('nan.npy'), x)
    proc = self.nt('kernel', args[0], args[1], '--x1', self.path('nan.npy'))
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('INVALID_ARGUMENT', proc.stderr)
    self.assertIn('x1', proc.stderr)
    # A negative size in --x1-shape is refused by the CLI itself (usage error).
    proc = self.nt('describe', args[0], args[1], '--x1-shape', '5,-1')
    self.assertEqual(proc.returncode, 2, proc.stderr)
    # A server that is not there.
    proc = self.nt('health', '--server', '127.0.0.1:1', '--timeout', '5', server=False)
    self.assertEqual(proc.returncode, 1, proc.stderr)
    self.assertIn('UNAVAILABLE', proc.stderr)

  def test_usage_errors(self):
    proc = self.nt('kernel', '--x1', 'missing.npy')  # No --arch.
    self.assertEqual(proc.returncode, 2)
    self.assertIn('usage', proc.stderr)
    proc = self.nt('frobnicate', server=False)
    self.assertEqual(proc.returncode, 2)
    case = _load_case('fc_relu')
    args = self.write_inputs(case)
    proc = self.nt('kernel', args[0], args[1], '--x1', self.path('does_not_exist.npy'))
    self.assertEqual(proc.returncode, 2, proc.stderr)
    self.assertIn('does_not_exist.npy', proc.stderr)


if __name__ == '__main__':
  unittest.main()
