"""The command lines answer at once: `--help` and every flag error of bcoder.train, bcoder.evaluate,
bcoder.rank, bcoder.report and bcoder.data, `--print-config`, and judging given samples load no torch,
transformers, peft or bcoder._C (bench/cli.py measures their wall time)."""
import json
import subprocess
import sys

import pytest
from smoke_run import REPO

from bcoder.config import CHOICES, PRESETS, config_dict
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import default_data_dir
from bcoder.train import main

HEAVY = ("torch", "transformers", "peft", "bcoder._C")
# Runs `python -m bcoder.<command> ARGS` for each ARGS in turn in one process; after each, one JSON line:
# the exit status, the heavy modules loaded so far, stdout and the last line of stderr.
PROBE = """
import contextlib, io, json, runpy, sys
command, cases = sys.argv[1], json.loads(sys.argv[2])
for args in cases:
    sys.argv = ["python -m bcoder." + command, *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module("bcoder." + command, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
    print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules], "stdout": out.getvalue(),
                      "stderr": (err.getvalue().strip().splitlines() or [""])[-1],
                      "bcoder": sorted(m for m in sys.modules if m.startswith("bcoder"))}))
""" % (HEAVY,)


def probe(command, *cases):
    done = subprocess.run([sys.executable, "-c", PROBE, command, json.dumps(cases)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


FLAG_ERRORS = {
    "train": [(["--theta-stesp", "3"], "unrecognized arguments: --theta-stesp"),
              (["--dtype", "bf16"], "invalid choice: 'bf16'"),
              (["--theta-steps", "many"], "invalid int value: 'many'"),
              (["--theta-steps", "0", "--out", "x"], "--theta-steps must be an integer >= 1, got 0"),
              (["--rank-m", "99", "--print-config"], "--rank-m 99 ranks more candidates than --eval-samples 16"),
              (["--preset", "paper", "--out", "x"], "--preset paper needs --model and --data"),
              ([], "--out is required")],
    "evaluate": [(["--fromat", "mbpp"], "unrecognized arguments: --fromat"),
                 (["--format", "csv"], "invalid choice: 'csv'"),
                 (["--workers", "0"], "--workers must be >= 1, got 0"),
                 (["--k", "1,x"], "--k takes comma-separated integers"),
                 (["--format", "mbpp"], "--format, --problems, --samples and --out are required")],
    "rank": [(["--run", "r", "--samples", "s", "--out", "o", "--batch", "x"], "invalid int value: 'x'"),
             (["--run", "r", "--samples", "s", "--out", "o", "--format", "csv"], "invalid choice: 'csv'"),
             (["--run", "r", "--samples", "s", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
             (["--run", "r"], "the following arguments are required: --samples, --out")],
    "report": [(["run", "--ablaton", "x=y"], "unrecognized arguments: --ablaton"),
               ([], "the following arguments are required: run")],
    "data": [(["fetch", "mbpp"], "the following arguments are required: --out"),
             (["fetch", "nothing", "--out", "x"], "invalid choice: 'nothing'"),
             (["fecth"], "invalid choice: 'fecth'")],
}


@pytest.mark.parametrize("command", sorted(FLAG_ERRORS))
def test_help_and_flag_errors_load_no_model_stack(command):
    cases = [["--help"]] + [args for args, _ in FLAG_ERRORS[command]]
    help, *errors = probe(command, *cases)
    assert help["code"] == 0 and "usage:" in help["stdout"] and help["heavy"] == []
    for (args, message), result in zip(FLAG_ERRORS[command], errors):
        assert result["code"] == 2 and message in result["stderr"], (args, result)
        assert result["heavy"] == [], (args, result["heavy"])


def test_print_config_of_every_preset_alone():
    results = probe("train", *[["--preset", name, "--print-config"] for name in PRESETS])
    for name, result in zip(PRESETS, results):
        assert result["code"] == 0 and result["heavy"] == [], (name, result)
        assert json.loads(result["stdout"]) == config_dict(PRESETS[name])
        needs = "a run of --preset paper also needs --model and --data" if name == "paper" else ""
        assert result["stderr"] == (f"bcoder.train: {needs}" if needs else ""), (name, result["stderr"])


def test_print_config_shows_the_flags_given(capsys):
    main(["--preset", "paper", "--model", "ckpt", "--print-config", "--theta-steps", "7", "--no-share-prompt"])
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed == {**config_dict(PRESETS["paper"]), "model": "ckpt", "theta_steps": 7, "share_prompt": False}
    assert err.strip() == "bcoder.train: a run of --preset paper also needs --data"


def test_a_run_of_a_preset_still_needs_its_flags(capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["--preset", "paper", "--model", "ckpt", "--out", str(tmp_path / "run")])
    assert exited.value.code == 2 and "--preset paper needs --data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_judging_samples_loads_no_model_stack(tmp_path):
    """`bcoder.evaluate --samples` without --run: only the sandbox, the data loaders and the protocols (and the
    light config and files they share); the references pass, a wrong program fails."""
    problems = load_mbpp(default_data_dir() / "mbpp.jsonl")[:3]
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text("".join(line + "\n" for line in (default_data_dir() / "mbpp.jsonl").read_text().splitlines()[:3]))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p.task_id, "program": program}) + "\n"
                               for p in problems for program in (p.solutions[0], "def f(: pass")))
    out = tmp_path / "results.jsonl"
    [result] = probe("evaluate", ["--format", "mbpp", "--problems", str(mbpp), "--samples", str(samples),
                                  "--out", str(out), "--workers", "2", "--k", "1"])
    assert result["code"] == 0 and result["heavy"] == [], result
    light = ("bcoder", "bcoder.cli", "bcoder.config", "bcoder.files", "bcoder.protocols", "bcoder.replay", "bcoder.run")
    assert [m for m in result["bcoder"] if m not in light and not m.startswith(("bcoder.data", "bcoder.sandbox"))] == []
    outcomes = [json.loads(line)["outcome"] for line in out.read_text().splitlines()]
    assert outcomes == ["passed", "compile_error"] * 3
    assert json.loads(result["stdout"])["pass@1"] == 0.5


def test_the_report_and_the_run_directory_load_no_model_stack():
    """bcoder.report reads run directories through bcoder.run: neither loads torch, transformers or _C."""
    done = subprocess.run([sys.executable, "-c", "import json, sys, bcoder.report, bcoder.run; "
                           f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []


def test_the_choices_are_the_ops_and_the_references():
    from bcoder.ops import BACKENDS
    from bcoder.reference import OPERATORS

    assert CHOICES["operator"] == OPERATORS and CHOICES["loss_backend"] == BACKENDS
