"""bcoder.train across processes: torchrun with Gloo on the CPU against one process.

One smoke run (sft, sample, phi in one process) is shared; each test copies it and runs a stage
again under `torchrun --standalone --nproc_per_node 2` (a free port each time). Every process runs
one thread (OMP_NUM_THREADS=1), as torchrun's workers do.
"""
import contextlib
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
# n_test 20: two eval chunks (of 16), so both ranks sample; 12 theta steps, a checkpoint every 3.
ARGS = ("--preset", "smoke", "--sft-steps", "8", "--n-test", "20", "--theta-steps", "12", "--checkpoint-every", "3")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def command(processes, out, *args):
    launcher = [sys.executable, "-m", "bcoder.train"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         "-m", "bcoder.train"]
    return [*launcher, *ARGS, "--out", str(out), *args]


def train(processes, out, *args, ok=True):
    result = subprocess.run(command(processes, out, *args), cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=600)
    if ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"sft": a run through sft, "phi": the same through phi}, in one process."""
    root = tmp_path_factory.mktemp("distributed")
    train(1, root / "phi", "--stage", "sft")
    shutil.copytree(root / "phi", root / "sft")
    train(1, root / "phi", "--resume", "--stage", "sample")
    train(1, root / "phi", "--resume", "--stage", "phi")
    return {"sft": root / "sft", "phi": root / "phi", "root": root}


@pytest.fixture(scope="module")
def theta_one(runs):
    """The theta stage of `runs` in one process."""
    out = shutil.copytree(runs["phi"], runs["root"] / "theta_one")
    train(1, out, "--resume", "--stage", "theta")
    return out


def copy(source, destination):
    return Path(shutil.copytree(source, destination, ignore=shutil.ignore_patterns("eval*", "report*")))


def assert_same_weights(expected_dir, got_dir):
    expected = load_file(expected_dir / "model.safetensors")
    got = load_file(got_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def replay_rows(run):
    db = sqlite3.connect(run / "replay.db")
    rows = db.execute("SELECT id, problem_id, program, tokens, outcome, reward, tests, is_ground_truth, model, "
                      "times_sampled FROM programs ORDER BY id").fetchall()
    problems = db.execute("SELECT id, prompt, entry_point FROM problems ORDER BY id").fetchall()
    db.close()
    return [row[:8] + (row[8].replace(str(run), "RUN"),) + row[9:] for row in rows], problems


def test_sharded_sampling_writes_the_same_replay_database(runs, tmp_path):
    two = copy(runs["sft"], tmp_path / "two")
    train(2, two, "--resume", "--stage", "sample")
    expected_rows, expected_problems = replay_rows(runs["phi"])
    got_rows, got_problems = replay_rows(two)
    assert got_problems == expected_problems
    assert len(got_rows) == len(expected_rows) > len(expected_problems)
    assert got_rows == expected_rows


def test_two_processes_train_theta_to_the_weights_of_one(runs, theta_one, tmp_path):
    two = copy(runs["phi"], tmp_path / "two")
    train(2, two, "--resume", "--stage", "theta")
    assert_same_weights(theta_one / "theta", two / "theta")

    def logged(run):
        return [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if m["stage"] == "theta" and "loss" in m]

    for one, other in zip(logged(theta_one), logged(two), strict=True):
        assert one["step"] == other["step"] and one["tokens"] == other["tokens"]  # global counts
        for key in ("loss", "td_loss", "adv_loss", "ce_loss", "grad_norm", "mean_v_gt", "mean_q_generated"):
            assert math.isclose(one[key], other[key], rel_tol=1e-4, abs_tol=1e-6), (key, one, other)


def _approx_equal(expected, got, path=""):
    if isinstance(expected, dict):
        assert isinstance(got, dict) and expected.keys() == got.keys(), path
        for key in expected:
            _approx_equal(expected[key], got[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(expected) == len(got), path
        for i, (a, b) in enumerate(zip(expected, got)):
            _approx_equal(a, b, f"{path}[{i}]")
    elif isinstance(expected, float):  # R~ of batches padded differently: equal to float rounding
        assert math.isclose(expected, got, rel_tol=1e-5, abs_tol=1e-5), (path, expected, got)
    else:
        assert expected == got, (path, expected, got)


def test_sharded_eval_writes_the_eval_json_of_one_process(theta_one, tmp_path):
    one, two = copy(theta_one, tmp_path / "one"), copy(theta_one, tmp_path / "two")
    train(1, one, "--resume", "--stage", "eval")
    train(2, two, "--resume", "--stage", "eval")
    _approx_equal(json.loads((one / "eval.json").read_text()), json.loads((two / "eval.json").read_text()))
    samples = [[json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
               for run in (one, two)]
    _approx_equal(*samples)
    assert len({s["task_id"] for s in samples[0]}) == 20  # both ranks' chunks
    assert (two / "report.md").exists() == (one / "report.md").exists()  # rank 0 wrote it


def _kill_mid_stage(processes, out, *args):
    """Starts the theta stage, kills every process once its first checkpoint is written; that step."""
    process = subprocess.Popen(command(processes, out, *args), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "state" / "theta.pt"
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # torchrun starts each rank in a session of its own. A crash takes them all, so kill them all, and
    # wait until the last is gone: it releases the run's lock.
    doomed = [process.pid, *_descendants(process.pid)]
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    while any((stat := _stat(pid)) and stat[0] != "Z" for pid in doomed) and time.time() < deadline:
        time.sleep(0.01)
    return torch.load(state, weights_only=False)


def _descendants(pid):
    children = {}
    for proc in Path("/proc").glob("[0-9]*"):
        if (stat := _stat(proc.name)) is not None:
            children.setdefault(int(stat[1]), []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _stat(pid):
    """/proc/PID/stat's fields after the command name (state, ppid, ...); None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_a_two_process_checkpoint_resumes_in_one_process(runs, theta_one, tmp_path, fsdp):
    out = copy(runs["phi"], tmp_path / "run")
    args = ("--resume", "--stage", "theta") + (("--fsdp",) if fsdp else ())
    state = _kill_mid_stage(2, out, *args)
    assert 0 < state["step"] < 12 and state["world_size"] == 2 and state["sharded"] == fsdp
    train(1, out, "--resume", "--stage", "theta")
    assert_same_weights(theta_one / "theta", out / "theta")


def test_a_global_batch_must_split_over_the_processes(runs, tmp_path):
    out = copy(runs["phi"], tmp_path / "run")
    result = train(2, out, "--resume", "--stage", "theta", "--theta-batch", "7", ok=False)
    assert result.returncode != 0 and "--theta-batch 7 is the global batch" in result.stderr


def test_the_causal_q_model_trains_under_fsdp_as_in_one_process(tmp_path):
    """smoke-causal (LoRA adapters on one shared base, called once per policy in a step) through phi in one
    process, with Figure 1's curve every 3 steps (rank 0 measures, the others gather once per point); its
    theta stage under FSDP in 2 processes gives the adapters and heads of one process."""
    causal = ("--preset", "smoke-causal", "--sft-steps", "8", "--theta-steps", "4", "--checkpoint-every", "2")

    def run(processes, out, *args):
        launcher = [sys.executable, "-m", "bcoder.train"] if processes == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
             "-m", "bcoder.train"]
        result = subprocess.run([*launcher, *causal, "--out", str(out), *args], cwd=REPO, env=ENV,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]

    base = tmp_path / "base"
    for stage in ("sft", "sample"):
        run(1, base, "--resume", "--stage", stage)
    sharded = copy(base, tmp_path / "sharded")
    run(2, sharded, "--resume", "--stage", "phi", "--fsdp")
    curve = [m["step"] for m in map(json.loads, (sharded / "metrics.jsonl").read_text().splitlines())
             if m.get("stage") == "phi" and "train_pass@1" in m]
    assert curve == [0, 3, 6]
    run(1, base, "--resume", "--stage", "phi")
    shutil.rmtree(sharded / "phi")
    shutil.copytree(base / "phi", sharded / "phi")   # theta starts from the same phi in both
    run(1, base, "--resume", "--stage", "theta")
    run(2, sharded, "--resume", "--stage", "theta", "--fsdp")
    for name in ("theta/theta/adapter_model.safetensors", "theta/value_heads.safetensors"):
        expected, got = load_file(base / name), load_file(sharded / name)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")
