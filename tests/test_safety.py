"""Nothing lost, nothing garbled: bad input fails before any work with one line naming the flag or the
file, destructive writes are guarded, results are written atomically (a kill leaves the old file or the
new one), and one process at a time writes a run."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from smoke_run import REPO, smoke_run_dir

from bcoder.config import FIELDS, PRESETS, flag
from bcoder.data.mbpp import load_mbpp
from bcoder.data.problems import DataError, default_data_dir
from bcoder.files import RunLock, replace_directory, write_atomic
from bcoder.train import main

DATA = default_data_dir()
SMOKE = ("--preset", "smoke", "--sft-steps", "2", "--n-train", "4", "--n-test", "2", "--samples-per-problem", "1",
         "--phi-steps", "1", "--theta-steps", "1", "--eval-samples", "1", "--eval-temperature", "0",
         "--max-new-tokens", "8", "--workers", "1", "--curve-every", "0")


def refused(capsys, *args):
    """bcoder.train's one-line message for args, which must exit 2 before any work."""
    with pytest.raises(SystemExit) as exited:
        main([*SMOKE, *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished small run (through eval)."""
    out = tmp_path_factory.mktemp("safety") / "run"
    result = subprocess.run([sys.executable, "-m", "bcoder.train", *SMOKE, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# ----- bad flags, found before any work -----

@pytest.mark.parametrize("args, message", [
    (("--operator", "conservativ"), "invalid choice: 'conservativ'"),
    (("--loss-backend", "cpu"), "invalid choice: 'cpu'"),
    (("--dtype", "float16"), "invalid choice: 'float16'"),
    (("--dtype", "bf16"), "invalid choice: 'bf16'"),
])
def test_a_typo_in_a_choice_fails_at_once(capsys, tmp_path, args, message):
    err = refused(capsys, *args, "--out", str(tmp_path / "run"))
    assert message in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (("--theta-steps", "0"), "--theta-steps must be an integer >= 1, got 0"),
    (("--phi-batch", "-1"), "--phi-batch must be an integer >= 1"),
    (("--sandbox-timeout", "0"), "--sandbox-timeout must be > 0"),
    (("--sample-temperature", "0", "--samples-per-problem", "3"),
     "--sample-temperature 0 is greedy decoding, one program per problem: --samples-per-problem must be 1, got 3"),
    (("--eval-ks", "0,-1"), "--eval-ks must be integers >= 1, got 0,-1"),
    (("--rho-real", "1.5"), "--rho-real must be in [0, 1], got 1.5"),
    (("--workers", "-2"), "--workers must be an integer >= 0"),
    (("--rank-m", "9"), "--rank-m 9 ranks more candidates than --eval-samples 1"),
    (("--model", "/nonexistent/ckpt"), "--model /nonexistent/ckpt: no such directory"),
    (("--replay", "/nonexistent/replay.db"), "/nonexistent/replay.db: no replay database there"),
    (("--data", "mbpp:/nonexistent/mbpp.jsonl"), "/nonexistent/mbpp.jsonl"),
    (("--data", "csv:file"), "--data must be 'tiny', 'mbpp:PATH' or 'apps:PATH'"),
])
def test_a_bad_value_fails_before_a_run_directory_exists(capsys, tmp_path, args, message):
    err = refused(capsys, *args, "--out", str(tmp_path / "run"))
    assert message in err and not (tmp_path / "run").exists(), err


def test_help_shows_every_flag_with_its_meaning_default_and_choices():
    text = subprocess.run([sys.executable, "-m", "bcoder.train", "--help"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"}, timeout=300).stdout
    options = text.split("the run's config", 1)[1]
    entries = re.split(r"\n  (?=--)", options)       # one entry per option: its flags, then its help
    for key, _, _ in FIELDS:
        [entry] = [e for e in entries if re.match(rf"{flag(key)}[ ,\n]", e)]   # not --data for --data-seed
        assert len(entry.split()) > 4 and "(default:" in entry, flag(key)
    assert "{conservative,optimality}" in text and "{float32,bfloat16}" in text and "--overwrite" in text


def test_a_checkpoint_without_its_tokenizer_is_refused(capsys, tmp_path, run_dir):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "ckpt", bare)
    for name in os.listdir(bare):
        if "token" in name or name.endswith(".json") and name not in ("config.json", "generation_config.json"):
            os.remove(bare / name)
    err = refused(capsys, "--model", str(bare), "--out", str(tmp_path / "run"))
    assert str(bare) in err and ("tokenizer" in err) and not (tmp_path / "run").exists()


# ----- destructive writes -----

def test_overwrite_only_replaces_a_bcoder_run(capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    err = refused(capsys, "--out", str(home), "--overwrite")
    assert "--overwrite replaces only a bcoder run directory" in err and (home / "thesis.tex").read_text()
    err = refused(capsys, "--out", str(home))
    assert "holds files that are not a bcoder run" in err


def test_overwrite_never_deletes_its_own_inputs(capsys, tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    for name, path in (("--replay", run / "replay.db"), ("--model", run / "ckpt")):
        err = refused(capsys, "--out", str(run), "--overwrite", name, str(path))
        assert f"{name} {path} lies inside {run}, which --overwrite would delete" in err and path.exists()


def test_resume_compares_only_what_changes_results(capsys, tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    err = refused(capsys, "--out", str(run), "--resume", "--theta-lr", "0.5", "--gamma", "0.9")
    assert "--gamma (0.999 there, 0.9 now); --theta-lr (1e-05 there, 0.5 now)" in err
    main([*SMOKE, "--out", str(run), "--resume", "--loss-backend", "reference", "--workers", "2"])  # done: no-op


def test_a_run_is_written_by_one_process_at_a_time(capsys, tmp_path, run_dir):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    with RunLock(run):
        err = refused(capsys, "--out", str(run), "--resume")
    assert f"{run} is in use by another process (pid {os.getpid()})" in err


def test_an_out_that_is_a_file_or_a_fresh_run_without_samples(capsys, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert f"--out {file} is a file" in refused(capsys, "--out", str(file))
    fresh = tmp_path / "fresh"
    err = refused(capsys, "--out", str(fresh), "--stage", "phi")
    assert f"the phi stage reads {fresh / 'ckpt'} or --model, which is not there: run the sft stage first" in err
    err = refused(capsys, "--out", str(fresh), "--stage", "phi", "--model", str(smoke_run_dir() / "ckpt"))
    assert f"reads {fresh / 'replay.db'} or --replay, which is not there: run the sample stage first" in err
    err = refused(capsys, "--out", str(fresh), "--stage", "eval", "--model", str(smoke_run_dir() / "ckpt"))
    assert f"the eval stage reads {fresh / 'theta'}, which is not there: run the theta stage first" in err
    assert not fresh.exists()


@pytest.mark.parametrize("tool", ["evaluate", "rank"])
def test_evaluate_and_rank_never_overwrite_without_force(tmp_path, tool):
    run = smoke_run_dir()
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "tiny-test-0", "program": "x = 1"}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious")
    base = [sys.executable, "-m", f"bcoder.{tool}", "--run", str(run), "--samples", str(samples)]
    for args, message in (([], f"{out} exists: pass --force"), (["--force"], None)):
        result = subprocess.run([*base, "--out", str(out), *args], cwd=REPO, capture_output=True, text=True,
                                timeout=300)
        if message:
            assert result.returncode == 2 and message in result.stderr and out.read_text() == "precious"
            assert "Traceback" not in result.stderr
    same = subprocess.run([*base, "--out", str(samples)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert same.returncode == 2 and "is both the output and --samples" in same.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = subprocess.run([*base[:-1], str(empty), "--out", str(tmp_path / "o2.jsonl")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"{empty}: no samples" in result.stderr


def test_evaluate_run_keeps_the_runs_eval_json_without_force(run_dir):
    before = (run_dir / "eval.json").read_bytes()
    result = subprocess.run([sys.executable, "-m", "bcoder.evaluate", "--run", str(run_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "eval.json exists: pass --force" in result.stderr
    assert (run_dir / "eval.json").read_bytes() == before


def test_report_writes_only_into_a_run_and_reads_what_a_kill_left(tmp_path, run_dir):
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-m", "bcoder.report", str(elsewhere)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "not a run directory" in result.stderr and not list(elsewhere.iterdir())
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"stage": "theta", "step": 9, "lo')                  # torn by a kill
    result = subprocess.run([sys.executable, "-m", "bcoder.report", str(run)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (run / "eval.json").write_text('{"ckpt": ')
    result = subprocess.run([sys.executable, "-m", "bcoder.report", str(run)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "eval.json: not valid JSON" in result.stderr and "Traceback" not in result.stderr


def test_a_non_integer_mbpp_task_id_names_the_line(tmp_path):
    record = json.loads((DATA / "mbpp.jsonl").read_text().splitlines()[0])
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "task_id": "eleven"}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: field 'task_id' should be an integer"):
        load_mbpp(path)


def test_training_shows_its_losses(tmp_path, run_dir):
    """The theta-stage's progress line (stderr) shows the loss and each of its terms, TD, L_adv and L_ce,
    at the values the stage logs for its last step in metrics.jsonl (to the 4 digits shown)."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns(".lock", "theta.*"))   # theta not yet trained
    result = subprocess.run([sys.executable, "-m", "bcoder.train", *SMOKE, "--out", str(run), "--resume",
                             "--stage", "theta"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    bars = [line for line in re.split(r"[\r\n]", result.stderr) if line.startswith("theta")]
    assert bars, result.stderr[-2000:]
    shown = dict(re.findall(r"(\w+)=([^,\]\s]+)", bars[-1]))     # tqdm's postfix: name=value, ...
    logged = [record for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if record["stage"] == "theta" and "loss" in record][-1]
    assert shown == {name: f"{logged[name]:.4g}" for name in ("loss", "td_loss", "adv_loss", "ce_loss")}, bars[-1]


# ----- atomic writes, under SIGKILL -----

WRITER = """
import json, sys
from bcoder.files import replace_directory, write_atomic
target, kind = sys.argv[1], sys.argv[2]
version = 0
while True:
    version += 1
    body = json.dumps({"version": version, "payload": "x" * (1 << 20)})
    if kind == "file":
        write_atomic(target, body)
    else:
        def fill(directory):
            for name in ("a.json", "b.json"):
                open(f"{directory}/{name}", "w").write(body)
        replace_directory(target, fill)
"""


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_kill_leaves_the_old_version_or_the_new_one(tmp_path, kind):
    target = tmp_path / ("out.json" if kind == "file" else "ckpt")
    if kind == "file":
        write_atomic(target, json.dumps({"version": 0, "payload": ""}))
    else:
        replace_directory(target, lambda d: [(d / n).write_text(json.dumps({"version": 0})) for n in ("a.json",
                                                                                                    "b.json")])
    rng = random.Random(0)
    for _ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], cwd=REPO)
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if kind == "file":
            assert isinstance(json.loads(target.read_text())["version"], int)
        else:
            versions = {json.loads((target / name).read_text())["version"] for name in ("a.json", "b.json")}
            assert len(versions) == 1
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != target.name]
        for name in leftovers:                       # a kill may leave its temporary: never the target
            assert name.startswith(f".{target.name}"), name
            shutil.rmtree(tmp_path / name) if (tmp_path / name).is_dir() else (tmp_path / name).unlink()


def test_bcoder_writes_its_results_only_through_the_atomic_helpers():
    """No module writes a result file in place (the sandbox's scratch files, the replay store's SQLite
    transactions and appends to metrics.jsonl aside: a kill tears at most its last line, which every
    reader skips)."""
    offenders = []
    for path in (REPO / "bcoder").rglob("*.py"):
        if path.name == "files.py" or "sandbox" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(pattern in line for pattern in (".write_text(", ".write_bytes(", 'open(', ".savefig(",
                                                   "torch.save(", "shutil.copy")) \
                    and "write_atomic" not in line and '"r' not in line and "'r" not in line \
                    and "opener(" not in line and 'METRICS_FILE, "a")' not in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    # QModel / CausalQModel.save_pretrained: into a directory that is replaced whole
    allowed = {"bcoder/models/t5.py", "bcoder/models/causal.py"}
    assert [o for o in offenders if o.split(":")[0] not in allowed] == []


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_presets_are_valid(name):
    """Each preset passes every check a run makes before it starts (bcoder.stages.validate: the values, the data
    files, --model's config and tokenizer, --replay), the paper preset once given the --model and --data it
    leaves to the command line: a T5 checkpoint and MBPP."""
    from bcoder.config import config_from_flags, still_needed
    from bcoder.stages import validate
    from bcoder.train import parse_args

    given = {"paper": ("--model", str(smoke_run_dir() / "ckpt"), "--data", f"mbpp:{DATA / 'mbpp.jsonl'}")}
    config = config_from_flags(parse_args(["--preset", name, *given.get(name, ())])[1])
    assert still_needed(name, config) == []
    try:
        validate(config)
    except Exception as error:  # what validate raises is the flag's one-line message
        pytest.fail(f"--preset {name} is refused: {type(error).__name__}: {error}")
