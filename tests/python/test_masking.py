"""mask_constant through the server: masked samples vanish, masked features count as zeros."""
import unittest

import numpy as np

from ntclient import stax

import server_fixture

MASK = -7.0


class MaskingTest(server_fixture.ServerTestCase):

  def test_masked_samples_vanish_and_masked_features_are_zeros(self):
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((6, 5)), rng.standard_normal((4, 5))
    x1[3, :] = MASK        # A whole sample of x1.
    x1[0, 2] = MASK        # Single features.
    x2[1, 4] = MASK
    _, _, kernel_fn = stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), stax.Relu(),
                                  stax.Dense(16, W_std=1.2, b_std=0.2), stax.Erf(), stax.Dense(1))
    got = kernel_fn(x1, x2, ('nngp', 'ntk', 'cov1', 'cov2'), mask_constant=MASK, tile_size=3,
                    connection=self.conn)
    zeroed = kernel_fn(np.where(x1 == MASK, 0.0, x1), np.where(x2 == MASK, 0.0, x2),
                       ('nngp', 'ntk', 'cov1', 'cov2'), connection=self.conn)
    for name in ('nngp', 'ntk'):
      a, b = getattr(got, name), getattr(zeroed, name)
      np.testing.assert_array_equal(a[3], 0.0)
      keep = [0, 1, 2, 4, 5]
      np.testing.assert_allclose(a[keep], b[keep], rtol=1e-12, atol=1e-14)
    self.assertEqual(got.cov1[3], 0.0)
    np.testing.assert_allclose(got.cov2, zeroed.cov2, rtol=1e-12)

  def test_nan_mask_constant(self):
    x = np.random.default_rng(6).standard_normal((5, 3))
    x[2, :] = np.nan
    _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))
    nngp = kernel_fn(x, None, 'nngp', mask_constant=float('nan'), connection=self.conn)
    np.testing.assert_array_equal(nngp[2], 0.0)
    np.testing.assert_array_equal(nngp[:, 2], 0.0)
    self.assertTrue(np.isfinite(nngp).all())


if __name__ == '__main__':
  unittest.main()
