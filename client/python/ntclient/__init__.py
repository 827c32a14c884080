"""ntclient: Python client of nt-server (infinite-width NNGP / NTK kernels over gRPC).

  import ntclient
  from ntclient import stax
  ntclient.connect('localhost:50051')   # optional; default: $NT_SERVER or localhost:50051
  _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
  nngp = kernel_fn(x1, x2, 'nngp')
"""

from ntclient import arch_json
from ntclient import empirical
from ntclient import predict
from ntclient import stax
from ntclient import tensors
from ntclient import tiling
from ntclient.connection import connect
from ntclient.connection import Connection
from ntclient.connection import default_connection
from ntclient.connection import health
from ntclient.empirical import empirical_kernel_fn
from ntclient.empirical import empirical_nngp_fn
from ntclient.empirical import empirical_ntk_fn
from ntclient.empirical import monte_carlo_kernel_fn
from ntclient.stax import compute_kernel
from ntclient.stax import describe
from ntclient.stax import from_json
from ntclient.stax import to_json

__all__ = [
    'Connection', 'arch_json', 'compute_kernel', 'connect', 'default_connection', 'describe',
    'empirical', 'empirical_kernel_fn', 'empirical_nngp_fn', 'empirical_ntk_fn', 'from_json', 'health',
    'monte_carlo_kernel_fn', 'predict', 'stax', 'tensors', 'to_json',
]
