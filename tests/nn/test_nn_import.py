"""bayesmoe.nn needs neither numpyro nor arviz (checked in a fresh interpreter)."""

import subprocess
import sys

CODE = """
import sys
import bayesmoe.nn
import bayesmoe.nn.train, bayesmoe.nn.sharding, bayesmoe.nn.data
print(sorted(m for m in ("numpyro", "arviz", "xarray", "pandas") if m in sys.modules))
print(len(bayesmoe.nn.__all__))
"""


def test_nn_subpackage_does_not_import_numpyro_or_arviz():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert int(out[1]) >= 20
