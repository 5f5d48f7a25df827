"""bcoder.report: report.md and its figures from a (smoke) run; train writes them itself."""
import json
import subprocess
import sys

import pytest
from smoke_run import REPO, smoke_run_dir

from bcoder.report import curve_panels, ms_for, ordering_verdict


@pytest.fixture(scope="module")
def run_dir():
    return smoke_run_dir()


def is_png(path):
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def table_rows(text, header):
    """The body rows (lists of cells) of the Markdown table whose header line starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def percent(value):
    return "–" if value is None else f"{100 * value:.1f}"


def test_report_tables_are_eval_json(run_dir):
    """Every number of report.md's pass@k and R~ tables is the one eval.json holds."""
    text = (run_dir / "report.md").read_text()
    report = json.loads((run_dir / "eval.json").read_text())
    names = {"θ_ckpt": "ckpt", "θ (B-Coder)": "theta", "θ, CE only (control)": "control"}
    rankers = {"θ R~": None, "φ R~ (no θ-stage)": "phi", "θ_ckpt log-prob": "logprob"}
    rows = table_rows(text, "| model | protocol |")
    # three policies (theta's CE-only control beside theta) x greedy, unranked and oracle, and ranked and
    # filtered by each of the three rankers
    assert len(rows) == 3 * (3 + 2 * 3)
    for name, label, at1, at5, n, m, temperature in rows:
        protocol, _, ranker = label.partition(" by ")
        table = report[names[name]] if rankers.get(ranker) is None else report[names[name]]["ranked_by"][rankers[ranker]]
        table = table[protocol]
        assert (at1, at5) == (percent(table.get("pass@1")), percent(table.get("pass@5"))), (name, label)
        if protocol != "greedy":
            assert (int(n), float(temperature)) == (report["settings"]["n"], report["settings"]["temperature"])
            assert m == ("–" if protocol == "unranked" else str(report["settings"]["m"]))
    rows = table_rows(text, "| programs |")
    assert [row[0] for row in rows] == ["all", "ckpt", "theta", "control"]
    for group, *cells, _ in rows:
        for outcome, cell in zip(("passed", "failed", "runtime_error", "compile_error"), cells):
            stats = report["return_by_outcome"][group][outcome]
            mean = "–" if stats["mean"] is None else f"{stats['mean']:.2f}"
            assert cell == f"{mean} (n={stats['count']})", (group, outcome)
    for name in ("curves.png", "returns.png", "ranked_vs_m.png"):
        assert is_png(run_dir / name) and f"]({name})" in text, name


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


def test_the_report_describes_the_run_it_reads(run_dir):
    text = (run_dir / "report.md").read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "Problems: the tiny set (seed 0): 8 training and 4 held-out problems." in text
    assert "Stages run: sft (120 steps), sample (1 programs per training problem), phi (2 steps), theta (2 steps), " \
           "control (2 steps, L_ce alone on the logits), eval." in text
    lengths = table_rows(text, "| stage | prompts cut |")
    sample = next(m for m in metrics if m["stage"] == "sample" and "programs_capped" in m)
    assert ["sample", str(sample["prompts_cut"]), f"{sample['programs_capped']} of {sample['programs']} generated"] \
        in lengths
    curve = [m for m in metrics if "train_pass@1" in m]
    assert {(m["stage"], m["step"]) for m in curve} == {("phi", 0), ("phi", 2), ("theta", 0), ("theta", 2)}
    assert all(m["curve_problems"] == 4 for m in curve)


def test_curves_draw_only_what_a_run_logged():
    logged = {"theta": [{"step": 1, "td_loss": 1.0}, {"step": 2, "td_loss": 1.0}]}
    assert [title for *_, title in curve_panels([logged])] == ["theta: L_Q (TD loss)"]
    assert curve_panels([{}]) == []


def test_ordering_verdict_and_the_m_of_figure_5():
    stats = lambda *means: {o: {"mean": m} for o, m in zip(("passed", "failed", "runtime_error", "compile_error"), means)}
    assert ordering_verdict(stats(1.0, 0.5, 0.0, -1.0)) == "yes"
    assert ordering_verdict(stats(1.0, None, 2.0, -1.0)) == \
        "no: passed ≤ runtime error (only of passed, runtime error, compile error: no failed programs)"
    assert ordering_verdict(stats(None, None, 0.5, -1.0)) == \
        "yes (only of runtime error, compile error: no passed, failed programs)"
    assert ordering_verdict(stats(None, None, None, -1.0)) == "too few outcomes seen"
    assert ms_for(256) == [16, 32, 64, 128, 256] and ms_for(40) == [16, 32]
    assert ms_for(10) == [1, 2, 4, 8, 10] and ms_for(16) == [1, 2, 4, 8, 16]
