"""Worker for tests/test_multiprocess.py: one of N local processes of a jax.distributed run.

Usage: python _multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT
Each process has 2 CPU devices; collectives go over gloo on 127.0.0.1 only. Every process
feeds its own metric values; the jitted early-stopping step decides on their global mean, and
the host-side should_stop/stop_reason read the replicated status in every process.
"""

import os
import sys

pid, n, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
from jax._src import xla_bridge  # noqa: E402

# Gloo binds to the address the host name resolves to; pin it to loopback so that no traffic
# leaves 127.0.0.1 whatever this machine's name resolves to (JAX has no public option).
_make_gloo = xla_bridge._jax.make_gloo_tcp_collectives


def _loopback_gloo(distributed_client, hostname=None, interface=None):
    del hostname, interface
    return _make_gloo(distributed_client=distributed_client, hostname="127.0.0.1")


xla_bridge._jax.make_gloo_tcp_collectives = _loopback_gloo
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n,
                           process_id=pid)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jopt  # noqa: E402

# Per-process metric sequences (process 0, process 1); the decision is on their mean.
SEQUENCES = [[1.0, 3.0], [0.5, 1.0], [0.9, 0.9], [2.0, 0.1], [5.0, 5.0]]

mesh = Mesh(np.array(jax.devices()), ("d",))
replicated = NamedSharding(mesh, P())
stopper = jopt.early_stopping(patience=2)
state = jax.tree_util.tree_map(
    lambda x: jax.make_array_from_callback(x.shape, replicated, lambda idx: np.asarray(x)[idx]),
    stopper.init())


@jax.jit
def step(state, metrics):
    return stopper.update(state, jnp.mean(metrics))


for k, values in enumerate(SEQUENCES):
    local = np.full((jax.local_device_count(),), values[pid], np.float32)
    metrics = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local)
    state = step(state, metrics)
    assert not state.status.is_fully_addressable  # a global array spanning both processes
    print(f"decision {k} {jopt.should_stop(state)} {jopt.stop_reason(state)}", flush=True)
jax.distributed.shutdown()
