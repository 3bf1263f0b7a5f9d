"""Writes data/bitwise_baseline.{json,npz} (see bitwise_cases.py). Run from tests/:

    python record_bitwise_baseline.py

It was run once, at commit 6700ee8 (before the declaration core); running it again on later
code would only record that code's results.
"""

import json
import os
import subprocess

# The same settings as conftest.py, so the recorded bits are those the tests see.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jaxlib  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import bitwise_cases as bc  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", "../jopt"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    out = {"commit": commit, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
           "steps": bc.STEPS, "runs": {}}
    arrays = {}
    for name, dtype, layout in bc.runs():
        k = bc.key(name, dtype, layout)
        r = bc.run(name, dtype, layout)
        out["runs"][k] = [bc.signature(r["updates"]), bc.signature(r["state"]),
                          r["u_digest"], r["s_digest"]]
        arrays[k] = np.concatenate([bc.blob(r["updates"]), bc.blob(r["state"])])
        print(k, out["runs"][k])
    for k, thunk in bc.extra_runs().items():
        r = thunk()
        out["runs"][k] = [bc.signature(r["updates"]), bc.signature(r["state"]),
                          r["u_digest"], r["s_digest"]]
        arrays[k] = np.concatenate([bc.blob(r["updates"]), bc.blob(r["state"])])
        print(k, out["runs"][k])
    with open(os.path.join(HERE, "data", "bitwise_baseline.json"), "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
        f.write("\n")
    np.savez_compressed(os.path.join(HERE, "data", "bitwise_baseline.npz"), **arrays)


if __name__ == "__main__":
    main()
