"""The sandbox where /proc/sys is read-only, as in a default Docker container: it runs, and warns that it
cannot set its PID namespaces' next pid. Run as root (as CI does), in a private mount namespace in which
/proc/sys is bound read-only; as any other user there is no such namespace to make, and nothing to add."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import warnings
from bcoder.sandbox import Sandbox, SandboxConfig, UnitTests, ValueTest
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with Sandbox(SandboxConfig(timeout=5), workers=1) as box:
        [result] = box.run(["def f(x): return 2 * x"], UnitTests([ValueTest("f(2)", 4)]))
print(result.outcome, any("next pid" in str(warning.message) for warning in caught))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="binding /proc/sys read-only needs root")
def test_a_read_only_proc_sys_costs_the_pid_counter_only():
    shell = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\" -c \"$1\""
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, sys.executable, SCRIPT],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.stdout == "passed True\n", run.stdout + run.stderr[-2000:]
    plain = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert plain.stdout == "passed False\n", plain.stdout + plain.stderr[-2000:]
