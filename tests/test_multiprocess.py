"""Early stopping in a multi-process jax.distributed run (2 local processes, gloo on 127.0.0.1):
every process takes the same decision, and the host-side should_stop / stop_reason work on the
replicated, not fully addressable status."""

import pathlib
import socket
import subprocess
import sys

WORKER = pathlib.Path(__file__).with_name("_multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_take_the_same_decisions():
    port = str(_free_port())
    env = {k: v for k, v in __import__("os").environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", port],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append([line for line in out.splitlines() if line.startswith("decision")])
    # Means of the two processes' values: 2.0, 0.75, 0.9, 1.05, 5.0 -> improve, improve,
    # wait 1, wait 2 = patience -> stop on decision 3, frozen after.
    expected = [
        "decision 0 False running: the last update improved the metric",
        "decision 1 False running: the last update improved the metric",
        "decision 2 False running: no improvement on the last update",
        "decision 3 True patience exhausted",
        "decision 4 True patience exhausted",
    ]
    assert outs[0] == expected and outs[1] == expected
