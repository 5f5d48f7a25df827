"""A training run's directory: the names of its files, its lock, its resume state and its records.
Everything that trains, evaluates, ranks or reports on a run opens it through here.

RUN/config.json     the resolved config (flat keys: bcoder.config)
RUN/ckpt/           sft's theta_ckpt and tokenizer (unless --model names one)
RUN/replay.db       every program scored (bcoder.replay)
RUN/phi/, theta/    the Q-models (bcoder.models); control/ theta's CE-only control
RUN/metrics.jsonl   every logged step; curves.png its figures
RUN/eval.json       the eval stage's report; eval_samples.jsonl its samples; report.md in words
RUN/state/          the resume checkpoints (model, optimiser, scheduler, RNG and data position) and a
                    marker per finished stage
RUN/.lock           held by the one process that writes the run

It loads no torch, transformers or model at import (the report and the commands' flag errors read run
directories without them); saving and loading resume state imports torch when it happens.
"""
import json
import shutil
import sqlite3
from pathlib import Path

from bcoder.config import RESULT_NEUTRAL, TrainingError, config_dict, config_from_dict, flag
from bcoder.files import RunLock, write_atomic, write_atomic_with
from bcoder.replay import ReplayStore

STAGES = ("sft", "sample", "phi", "theta", "control", "eval")
CONFIG_FILE, REPLAY_FILE, METRICS_FILE = "config.json", "replay.db", "metrics.jsonl"
EVAL_FILE, EVAL_SAMPLES_FILE, REPORT_FILE, CURVES_FILE = "eval.json", "eval_samples.jsonl", "report.md", "curves.png"
CKPT_DIR, STATE_DIR = "ckpt", "state"


def stage_done(run_dir, stage):
    """Whether `stage` finished in the run directory `run_dir` (its marker, written after the stage's results)."""
    return (Path(run_dir) / STATE_DIR / f"{stage}.done").exists()


class Run:
    """The run directory. Across processes only the writer (rank 0) writes to it (state, metrics, markers);
    every rank reads it. `fsdp`: train with FSDP2 instead of DDP (a launch option, not part of the config)."""

    def __init__(self, directory, config, writes=True, fsdp=False):
        self.dir, self.config, self.writes, self.fsdp = Path(directory), config, writes, fsdp
        if writes:
            (self.dir / STATE_DIR).mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return self.dir / name

    def mark_done(self, stage):
        if self.writes:
            (self.dir / STATE_DIR / f"{stage}.done").touch()

    def save_state(self, stage, state):
        """Atomically: a kill mid-write leaves the previous checkpoint. The writer only."""
        import torch

        if self.writes:
            write_atomic_with(self.dir / STATE_DIR / f"{stage}.pt", lambda path: torch.save(state, path))

    def load_state(self, stage):
        import torch

        target = self.dir / STATE_DIR / f"{stage}.pt"
        return torch.load(target, weights_only=False) if target.exists() else None

    def log(self, record):
        if not self.writes:
            return
        with open(self.dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def forget_metrics_after(self, stage, step):
        """Drops metrics that a killed run logged past its last checkpoint (and a line it left torn),
        before resuming at `step`."""
        path = self.dir / METRICS_FILE
        if not self.writes or not path.exists():
            return
        records = read_records(path)
        kept = [r for r in records if not (r.get("stage") == stage and r.get("step", -1) >= step)]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def open_run(out, config, resume, overwrite):
    """The run directory `out` for a validated config: created, resumed (the config.json there must
    agree on every field that changes results) or replaced (--overwrite: only a bcoder run, and not
    one that --model or --replay lies inside). Writes config.json; never deletes anything else."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file, not a directory")
    holds_run = (out / CONFIG_FILE).is_file() and (out / STATE_DIR).is_dir()
    lock = RunLock(out).__enter__() if holds_run else None   # before anything changes: one writer per run
    try:
        lock = _prepare_run_directory(out, config, resume, overwrite, holds_run, lock)
    except BaseException:
        if lock:
            lock.__exit__()
        raise
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, config)
    run.lock = lock or RunLock(out).__enter__()     # held until this process ends
    write_atomic(out / CONFIG_FILE, json.dumps(config_dict(config), indent=2) + "\n")
    return run


def _prepare_run_directory(out, config, resume, overwrite, holds_run, lock):
    """open_run's checks on an existing `out`, and --overwrite's removal; returns the lock still held."""
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        if overwrite:
            if not holds_run:
                raise TrainingError(f"--overwrite replaces only a bcoder run directory; {out} holds something else")
            for name, path in (("--model", config.model.checkpoint), ("--replay", config.sample.replay)):
                if path and (Path(path).resolve() == out or out in Path(path).resolve().parents):
                    raise TrainingError(f"{name} {path} lies inside {out}, which --overwrite would delete")
            shutil.rmtree(out)
            lock.__exit__()
            lock = None
        elif not holds_run:
            raise TrainingError(f"--out {out} holds files that are not a bcoder run: choose an empty directory")
        elif not resume:
            raise TrainingError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
        else:
            try:
                saved = json.loads((out / CONFIG_FILE).read_text())
            except ValueError as error:
                raise TrainingError(f"{out / CONFIG_FILE}: not valid JSON ({error})") from None
            changed = [f"{flag(k)} ({saved.get(k)!r} there, {v!r} now)"
                       for k, v in config_dict(config).items() if k not in RESULT_NEUTRAL and saved.get(k) != v]
            if changed:
                raise TrainingError(f"--resume: {out} was started with other settings that change results: "
                                    f"{'; '.join(changed)}")
    return lock


def copy_replay(source, target):
    """A consistent copy of a replay database (SQLite's backup: the WAL's content included), written
    atomically."""
    def backup(path):
        with ReplayStore(source, read_only=True) as store:
            copy = sqlite3.connect(path)
            store.db.backup(copy)
            copy.close()

    write_atomic_with(target, backup)


def ckpt_dir(run_dir, config):
    """theta_ckpt's directory (model and tokenizer): --model, else the run's own ckpt/ (sft)."""
    return Path(config.model.checkpoint) if config.model.checkpoint else Path(run_dir) / CKPT_DIR


def read_run_config(run_dir):
    """The run's TrainConfig from its config.json; fields the file lacks keep their defaults (runs
    written before a field existed)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TrainingError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    try:
        saved = json.loads(path.read_text())
    except ValueError as error:
        raise TrainingError(f"{path}: not valid JSON ({error})") from None
    return config_from_dict(saved)


def read_records(path):
    """The JSON records of a JSON-lines file the run writes, skipping a line a kill left torn."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
