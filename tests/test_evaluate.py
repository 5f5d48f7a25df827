"""The evaluate CLI: per-sample lines in input order, summary with pass@k, clear errors."""
import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bcoder.data.problems import default_data_dir
from bcoder.evaluate import main
from bcoder.protocols import pass_at_k

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_dir()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_pass_at_k_matches_the_closed_form():
    for n, c, k in ((10, 3, 0), (10, 11, 1), (10, -1, 1)):
        with pytest.raises(ValueError, match="pass@k needs k >= 1 and 0 <= c <= n"):
            pass_at_k(n, c, k)
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))


def test_cli_on_humaneval_completions(tmp_path):
    problem = json.loads(gzip.open(DATA / "HumanEval.jsonl.gz", "rt").readline())
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"task_id": "HumanEval/0", "completion": problem["canonical_solution"]},
        {"task_id": "HumanEval/0", "completion": "    return True\n"},
        {"task_id": "HumanEval/0", "program": "def has_close_elements(numbers, threshold) return"},
        {"task_id": "HumanEval/0", "completion": "    return 1 / 0\n"}])
    out = tmp_path / "results.jsonl"
    subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--format", "humaneval", "--problems",
                    str(DATA / "HumanEval.jsonl.gz"), "--samples", str(samples), "--out", str(out),
                    "--workers", "2", "--k", "1,2,5"], check=True, cwd=REPO, capture_output=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["outcome"], r["reward"]) for r in rows] == [
        ("passed", 1.0), ("failed", -0.3), ("compile_error", -1.0), ("runtime_error", -0.6)]
    assert rows[0]["tests_passed"] == rows[0]["tests_total"] == 1
    summary = json.loads((tmp_path / "results.summary.json").read_text())
    assert summary["pass@1"] == pytest.approx(0.25) and summary["pass@2"] == pytest.approx(0.5)
    assert "pass@5" not in summary                      # fewer than 5 samples per task


def test_cli_on_mbpp_and_apps(tmp_path, capsys):
    mbpp = json.loads((DATA / "mbpp.jsonl").read_text().splitlines()[1])
    samples = write_jsonl(tmp_path / "mbpp.jsonl", [{"task_id": mbpp["task_id"], "program": mbpp["code"]}])
    main(["--format", "mbpp", "--problems", str(DATA / "mbpp.jsonl"), "--samples", str(samples),
          "--out", str(tmp_path / "mbpp_out.jsonl"), "--workers", "1"])
    [row] = [json.loads(line) for line in (tmp_path / "mbpp_out.jsonl").read_text().splitlines()]
    assert (row["outcome"], row["tests_passed"], row["tests_total"]) == ("passed", 3, 3)
    assert json.loads(capsys.readouterr().out)["pass@1"] == 1.0

    samples = write_jsonl(tmp_path / "apps.jsonl", [{"task_id": 4184, "program": "def is_prime(n): return n > 1 and all(n % d for d in range(2, n))"},
                                                     {"task_id": "4184", "program": "def is_prime(n): return True"}])
    main(["--format", "apps", "--problems", str(DATA / "apps_train_coderl5.jsonl"), "--samples", str(samples),
          "--out", str(tmp_path / "apps_out.jsonl"), "--workers", "1", "--timeout", "5"])
    rows = [json.loads(line) for line in (tmp_path / "apps_out.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["passed", "failed"]


def test_cli_says_which_answer_policy_judged(tmp_path, capsys):
    """Tokens out of order pass APPS's checker (lines as token sets), not the strict default."""
    problem = {"problem_id": 7, "question": "Print 1 to n.", "input_output": {"inputs": ["3\n"], "outputs": ["1 2 3\n"]}}
    problems = write_jsonl(tmp_path / "problems.jsonl", [problem])
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "7", "program": "print(*range(int(input()), 0, -1))"}])
    outcomes = {}
    for policy in ("strict", "apps"):
        main(["--format", "apps", "--problems", str(problems), "--samples", str(samples), "--answers", policy,
              "--out", str(tmp_path / f"{policy}.jsonl"), "--workers", "1", "--timeout", "5"])
        summary = json.loads(capsys.readouterr().out)
        assert summary["answers"] == policy
        outcomes[policy] = json.loads((tmp_path / f"{policy}.jsonl").read_text())["outcome"]
    assert outcomes == {"strict": "failed", "apps": "passed"}


@pytest.mark.parametrize("lines, error", [
    (['{"task_id": "HumanEval/0", "completion": "x"}', '{"task_id": "HumanEval/999", "completion": "x"}'],
     r"samples\.jsonl:2: field 'task_id': unknown task id 'HumanEval/999'"),
    (['{"task_id": "HumanEval/0", "completion": "x"}', "not json"], r"samples\.jsonl:2: not valid JSON"),
    (['{"completion": "x"}'], r"samples\.jsonl:1: missing field 'task_id'"),
    (['{"task_id": "HumanEval/0"}'], r"samples\.jsonl:1: needs a string field 'program' or 'completion'"),
])
def test_cli_reports_bad_samples_with_file_and_line(tmp_path, capsys, lines, error):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--format", "humaneval", "--problems", str(DATA / "HumanEval.jsonl.gz"), "--samples", str(samples),
              "--out", str(tmp_path / "out.jsonl")])
    assert exit_info.value.code == 2 and re.search(error, capsys.readouterr().err)
    assert not (tmp_path / "out.jsonl").exists()
