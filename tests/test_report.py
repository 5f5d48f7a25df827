"""bcoder.report: report.md and its figures from a (smoke) run; train writes them itself."""
import subprocess
import sys

import pytest

from bcoder.report import ms_for, ordering_verdict
from smoke_run import REPO, smoke_run_dir


@pytest.fixture(scope="module")
def run_dir():
    return smoke_run_dir()


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_training_run_ends_with_the_report(run_dir):
    text = (run_dir / "report.md").read_text()
    for needle in ("| θ_ckpt | ranked |", "| θ (B-Coder) | oracle |", "| θ (B-Coder) | filtered |", "pass@1",
                   "compile error", "![R~ by outcome](returns.png)", "![ranked vs m](ranked_vs_m.png)",
                   "![training curves](curves.png)"):
        assert needle in text, needle
    for name in ("curves.png", "returns.png", "ranked_vs_m.png"):
        assert is_png(run_dir / name), name


def test_cli_overlays_ablation_curves(run_dir, tmp_path):
    for name in ("curves.png", "report.md"):
        (run_dir / name).unlink()
    result = subprocess.run([sys.executable, "-m", "bcoder.report", str(run_dir), "--ablation",
                             f"again={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert is_png(run_dir / "curves.png") and "with again" in (run_dir / "report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "bcoder.report", str(tmp_path / "nowhere")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not a run directory" in bad.stderr


def test_ordering_verdict_and_the_m_of_figure_5():
    stats = lambda *means: {o: {"mean": m} for o, m in zip(("passed", "failed", "runtime_error", "compile_error"), means)}
    assert ordering_verdict(stats(1.0, 0.5, 0.0, -1.0)) == "yes"
    assert ordering_verdict(stats(1.0, None, 2.0, -1.0)) == "no: passed ≤ runtime error"
    assert ordering_verdict(stats(None, None, None, -1.0)) == "too few outcomes seen"
    assert ms_for(256) == [16, 32, 64, 128, 256] and ms_for(40) == [16, 32]
    assert ms_for(10) == [1, 2, 4, 8, 10] and ms_for(16) == [1, 2, 4, 8, 16]
