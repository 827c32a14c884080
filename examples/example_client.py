#!/usr/bin/env python3
"""Example thin client: the upstream stax API, computed by nt-server (NT_SERVER, default localhost:50051)."""
import numpy as np

from ntclient import stax

init_fn, apply_fn, kernel_fn = stax.serial(
    stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
    stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
    stax.Dense(1, W_std=1.5, b_std=0.05))

rng = np.random.default_rng(0)
x1 = rng.standard_normal((4, 8))
x2 = rng.standard_normal((3, 8))
k = kernel_fn(x1, x2, ('nngp', 'ntk'))
np.set_printoptions(precision=6, suppress=True)
print('NNGP kernel (4 x 3):')
print(k.nngp)
print('NTK kernel (4 x 3):')
print(k.ntk)
