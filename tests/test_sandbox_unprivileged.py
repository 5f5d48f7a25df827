"""The sandbox's suites as an unprivileged user: the isolation without root (user namespaces) holds
everything the suites check as root.

Run as root (as CI does), this runs SUITES (the sandbox's, the reward hacks, the reference solutions
of tests/test_data.py) again as `nobody` in a subprocess. The checkout and interpreter may sit under
directories nobody may enter (/root, a `mktemp -d`): the subprocess gets a private mount namespace in
which each such directory is a tmpfs holding only the way on. It also plants a stale sandbox directory
of another user's, deeper than PATH_MAX, which nobody's sandboxes must skip. Run as any other user, the suites
already run unprivileged and this one has nothing to add.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_sandbox_isolation import DEEP_TREE

from bcoder.sandbox.isolation import ROOT_PREFIX, remove_tree

REPO = Path(__file__).resolve().parents[1]
SUITES = ["tests/test_sandbox.py", "tests/test_sandbox_hostile.py", "tests/test_sandbox_isolation.py",
          "tests/test_reward_hacks.py", "tests/test_data.py"]
NOBODY, OTHER = 65534, 65533

# Run as root inside `unshare --mount`: makes each of argv's paths reachable by anyone, then becomes nobody.
OPEN_THE_WAY = """
import os, sys
paths, command = sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
for path in paths:
    parts = path.strip("/").split("/")
    for depth in range(len(parts)):
        closed, child = "/" + "/".join(parts[:depth]), parts[depth]
        if os.stat(closed).st_mode & 0o001:
            continue
        # a tmpfs over the closed directory, holding only the child on the way (moved back from aside)
        aside = "/run/bcoder-aside"
        os.makedirs(aside, exist_ok=True)
        os.system(f"mount --bind {closed}/{child} {aside} && mount -t tmpfs -o mode=755 tmpfs {closed} && "
                  f"mkdir {closed}/{child} && mount --move {aside} {closed}/{child}")
os.execvp("runuser", ["runuser", "-u", "nobody", "--", *command])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="run as root this runs the suites as nobody; unprivileged, they already are")
def test_the_sandbox_suites_pass_as_nobody():
    home = tempfile.mkdtemp(prefix="bcoder-nobody-")
    os.chown(home, NOBODY, NOBODY)
    process = subprocess.Popen(["true"])
    process.wait()
    # A dead pool's, of another user, 1500 levels deep: a recursive removal by nobody would fail on it
    planted = f"{ROOT_PREFIX}{process.pid}-planted"
    os.mkdir(planted)
    exec(DEEP_TREE + f"deep_tree({planted!r})", {})
    subprocess.run(["chown", "-R", f"{OTHER}:{OTHER}", planted], check=True)
    try:
        paths = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.executable, REPO)]
        run = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", OPEN_THE_WAY,
                              *paths, "--", "env", f"HOME={home}", "PYTHONDONTWRITEBYTECODE=1", sys.executable, "-m",
                              "pytest", "-q", "-p", "no:cacheprovider", "-rs", *SUITES],
                             cwd=REPO, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
        assert " skipped" not in run.stdout.splitlines()[-1], run.stdout[-3000:]
    finally:
        remove_tree(planted)
        remove_tree(home)
