"""Runs of bcoder.train for the tests, one helper per use:

- train(preset, *args): one `python -m bcoder.train --preset PRESET ARGS` from the repository's root.
- full_run(preset, out): a run of a preset through every stage (a test module's fixture: the T5
  tests' "smoke", the causal tests' "smoke-causal").
- killed_and_resumed(preset, run, tmp_path): the theta-stage of a run done straight and done killed
  mid-stage then resumed, to compare.
- smoke_run_dir(): one small smoke-preset run per test session, shared by the test modules that need a
  trained run (ranking, protocols, report, safety): the smoke preset cut down so that it trains and
  evaluates in ~30 s. Its 120 sft steps are what it takes for the policy to learn its 8 training
  problems' references (test_rank checks that R~ ranks each above its mutations).
"""
import atexit
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--sft-steps", "120", "--n-train", "8", "--n-test", "4", "--samples-per-problem", "1", "--phi-steps", "2",
        "--theta-steps", "2", "--eval-samples", "4", "--max-new-tokens", "16", "--workers", "2")
_run = None


def train_command(preset, *args):
    return [sys.executable, "-m", "bcoder.train", "--preset", preset, *args]


def train(preset, *args):
    """`python -m bcoder.train --preset PRESET ARGS`, run from the repository's root: its CompletedProcess
    (stdout and stderr captured as text)."""
    return subprocess.run(train_command(preset, *args), cwd=REPO, capture_output=True, text=True, timeout=600)


def full_run(preset, out, *args):
    """A run of `preset` (and ARGS) through every stage, into `out`; out. Fails the test where it fails."""
    result = train(preset, *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def smoke_run_dir():
    """The session's cut-down smoke run (every stage done, report written); made on first use, removed at
    exit."""
    global _run
    if _run is None:
        root = Path(tempfile.mkdtemp(prefix="bcoder-smoke-"))
        atexit.register(shutil.rmtree, root, True)
        _run = full_run("smoke", root / "run", *ARGS)
    return _run


def killed_and_resumed(preset, run, tmp_path, steps=12, every=3):
    """(straight, killed): two copies of `run` (a full run of `preset`) as they stood before the theta-stage,
    each given a theta-stage of `steps` steps checkpointed every `every`. straight's runs it at once;
    killed's is SIGKILLed in the middle (after its first checkpoint, before its last) and resumed."""
    args = ("--theta-steps", str(steps), "--checkpoint-every", str(every))
    printed = train(preset, *args, "--print-config")   # the config.json a run with these flags writes
    assert printed.returncode == 0, printed.stderr[-3000:]

    def ignore(directory, names):   # the theta-stage's outputs: the top level's, and its state (not phi/theta)
        if Path(directory) == run:
            return [n for n in names if n in ("theta", ".lock") or n.startswith(("theta.", "eval"))]
        return [n for n in names if Path(directory) == run / "state" and n.startswith("theta.")]

    def through_phi(name):
        copy = Path(shutil.copytree(run, tmp_path / name, ignore=ignore))
        assert not (copy / "state" / "theta.pt").exists()   # the copy's theta-stage starts at its first step
        (copy / "config.json").write_text(printed.stdout)
        return copy

    resume = ("--resume", "--stage", "theta", *args)
    straight, killed = through_phi("straight"), through_phi("killed")
    result = train(preset, "--out", str(straight), *resume)
    assert result.returncode == 0, result.stderr[-3000:]

    process = subprocess.Popen(train_command(preset, "--out", str(killed), *resume), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "state" / "theta.pt"
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(state, weights_only=False)["step"]
    assert 0 < step < steps, f"killed at step {step}, not mid-stage"
    result = train(preset, "--out", str(killed), *resume)
    assert result.returncode == 0, result.stderr[-3000:]
    return straight, killed
