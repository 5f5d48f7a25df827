"""One small smoke-preset run per test session, shared by the test modules that need a trained run
(ranking, protocols, report): the smoke preset cut down so that it trains and evaluates in ~30 s.
Its 120 sft steps are what it takes for the policy to learn its 8 training problems' references
(test_rank checks that R~ ranks each above its mutations)."""
import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--preset", "smoke", "--sft-steps", "120", "--n-train", "8", "--n-test", "4", "--samples-per-problem", "1",
        "--phi-steps", "2", "--theta-steps", "2", "--eval-samples", "4", "--max-new-tokens", "16", "--workers", "2")
_run = None


def smoke_run_dir():
    """The run directory (every stage done, report written); made on first use, removed at exit."""
    global _run
    if _run is None:
        root = Path(tempfile.mkdtemp(prefix="bcoder-smoke-"))
        atexit.register(shutil.rmtree, root, True)
        out = root / "run"
        result = subprocess.run([sys.executable, "-m", "bcoder.train", *ARGS, "--out", str(out)], cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        _run = out
    return _run
