"""A training run: its directory and the files in it, and the checkpoint it starts from. Everything
that trains, evaluates or ranks a run opens it through here; its config (TrainConfig, the presets,
the checks that read no file) is bcoder.config, which the light commands read alone.

The run directory holds config.json (the resolved config), ckpt/ (sft's theta_ckpt and
tokenizer, unless --model names one), replay.db (every program scored), phi/ and theta/ (the
Q-models), metrics.jsonl (every logged step), curves.png, eval.json, eval_samples.jsonl,
report.md and state/ (the resume checkpoints: model, optimiser, scheduler, RNG and data
position, and a marker per finished stage).
"""
import json
import shutil
import sqlite3
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from bcoder import distributed as dist
from bcoder.config import (CKPT_DIR, CONFIG_FILE, METRICS_FILE, RESULT_NEUTRAL, STATE_DIR, TrainingError, check_config,
                           config_dict, flag, read_records)
from bcoder.data.loading import load_split
from bcoder.files import RunLock, write_atomic, write_atomic_with
from bcoder.causal import CausalQModel, CausalQModelConfig, load_causal_checkpoint
from bcoder.model import QModel, QModelConfig, load_t5_checkpoint
from bcoder.replay import ReplayStore


def stage_done(run_dir, stage):
    """Whether `stage` finished in the run directory `run_dir` (its marker, written after the stage's results)."""
    return (Path(run_dir) / STATE_DIR / f"{stage}.done").exists()


class Run:
    """The run directory. Across processes only rank 0 writes to it (state, metrics, markers); every
    rank reads it. `fsdp`: train with FSDP2 instead of DDP (a launch option, not part of the config)."""

    def __init__(self, directory, config, fsdp=False):
        self.dir, self.config, self.fsdp = Path(directory), config, fsdp
        if dist.is_main():
            (self.dir / STATE_DIR).mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return self.dir / name

    def mark_done(self, stage):
        if dist.is_main():
            (self.dir / STATE_DIR / f"{stage}.done").touch()

    def save_state(self, stage, state):
        """Atomically: a kill mid-write leaves the previous checkpoint. Rank 0 only."""
        if dist.is_main():
            write_atomic_with(self.dir / STATE_DIR / f"{stage}.pt", lambda path: torch.save(state, path))

    def load_state(self, stage):
        target = self.dir / STATE_DIR / f"{stage}.pt"
        return torch.load(target, weights_only=False) if target.exists() else None

    def log(self, record):
        if not dist.is_main():
            return
        with open(self.dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def forget_metrics_after(self, stage, step):
        """Drops metrics that a killed run logged past its last checkpoint (and a line it left torn),
        before resuming at `step`."""
        path = self.dir / METRICS_FILE
        if not dist.is_main() or not path.exists():
            return
        records = read_records(path)
        kept = [r for r in records if not (r.get("stage") == stage and r.get("step", -1) >= step)]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def validate(config):
    """TrainingError (or DataError, ReplayError), one line naming the flag, for a config that cannot
    run: before a run directory exists. bcoder.config.check_config's checks of the values, then what the
    run will read: the data files, the checkpoint's config and tokenizer (not its weights) and the replay
    database."""
    check_config(config)
    load_split(config)
    causal = check_checkpoint(Path(config.model)) if config.model else config.architecture != "t5"
    if not causal and config.adapter == "lora":
        raise TrainingError("--adapter lora is for decoder-only models; a T5 theta_ckpt's phi and theta are copies "
                            "(--adapter auto or none)")
    if config.replay:
        with ReplayStore(config.replay, read_only=True):
            pass


def check_checkpoint(directory):
    """TrainingError unless `directory` holds the config of a T5 or decoder-only causal LM and the tokenizer
    of its vocabulary; whether it is causal."""
    if not directory.is_dir():
        raise TrainingError(f"--model {directory}: no such directory")
    try:
        model_config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise TrainingError(f"--model {directory}: no model config there ({error})") from None
    causal = model_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not model_config.is_encoder_decoder
    if model_config.model_type != "t5" and not causal:
        raise TrainingError(f"--model {directory}: a {model_config.model_type!r} model; B-Coder here needs a T5 "
                            f"encoder-decoder (CodeT5) or a decoder-only causal LM (Llama, Qwen2, GPT-2 families)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise TrainingError(f"--model {directory}: no tokenizer files there (one of {', '.join(TOKENIZER_FILES)})")
    tokenizer = tokenizer_in(directory)
    # A model's vocabulary may be padded a little past its tokenizer's (T5: 32128 for 32100 tokens, Qwen2.5:
    # 151936 for 151665, DeepSeek-Coder: 32256 for 32022), never short of it.
    if not len(tokenizer) <= model_config.vocab_size <= len(tokenizer) + max(128, len(tokenizer) // 100):
        raise TrainingError(f"--model {directory}: its tokenizer has {len(tokenizer)} tokens but the model's "
                            f"vocabulary is {model_config.vocab_size}: the tokenizer files are missing or another "
                            f"model's")
    return causal


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "tokenizer.model")


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
            for name, path in (("--model", config.model), ("--replay", config.replay)):
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
    return Path(config.model) if config.model else Path(run_dir) / CKPT_DIR


def is_causal(run_dir, config):
    """Whether theta_ckpt is a decoder-only causal LM (its config says; before sft, --architecture)."""
    directory = ckpt_dir(run_dir, config)
    if (directory / "config.json").is_file():
        return not AutoConfig.from_pretrained(directory).is_encoder_decoder
    return config.architecture != "t5"


def load_ckpt(run_dir, config):
    """theta_ckpt, a T5ForConditionalGeneration or a causal LM; TrainingError naming what is wrong with its
    directory."""
    load = load_causal_checkpoint if is_causal(run_dir, config) else load_t5_checkpoint
    try:
        return load(ckpt_dir(run_dir, config), None)
    except (OSError, ValueError) as error:
        raise TrainingError(str(error)) from None


def q_model_config(run_dir, config, stage):
    """The Q-model config of a run's stage: a QModelConfig for T5, a CausalQModelConfig (adapter, LoRA,
    share_prompt) for a causal LM."""
    common = {"stage": stage, "init_value_from_phi": config.init_value_from_phi}
    if not is_causal(run_dir, config):
        return QModelConfig(**common)
    return CausalQModelConfig(**common, adapter="none" if config.adapter == "none" else "lora",
                              lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                              lora_targets=config.lora_targets, share_prompt=config.share_prompt)


def new_q_model(run_dir, config, stage):
    """A fresh Q-model for `stage` over the run's theta_ckpt."""
    model_class = CausalQModel if is_causal(run_dir, config) else QModel
    return model_class.from_checkpoint(load_ckpt(run_dir, config), q_model_config(run_dir, config, stage))


def load_q_model(run_dir, config, stage):
    """The Q-model the run's `stage` ("phi" or "theta") saved in RUN/<stage>; a causal one on theta_ckpt."""
    directory = Path(run_dir) / stage
    try:
        if is_causal(run_dir, config):
            return CausalQModel.from_pretrained(directory, load_ckpt(run_dir, config))
        return QModel.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise TrainingError(str(error)) from None


def load_tokenizer(run_dir, config):
    """theta_ckpt's tokenizer; TrainingError when its directory has none."""
    return tokenizer_in(ckpt_dir(run_dir, config))


def tokenizer_in(directory):
    """The tokenizer saved in a checkpoint directory; TrainingError when there is none."""
    if not directory.is_dir():
        raise TrainingError(f"{directory}: the checkpoint directory (--model, or the run's ckpt/) does not exist")
    try:
        # A generic tokenizer (bcoder's local one) loads as itself: AutoTokenizer would pick the model type's
        # class from config.json (Qwen2Tokenizer for a qwen2 model), which re-tokenizes with its own rules.
        saved = json.loads((directory / "tokenizer_config.json").read_text()) \
            if (directory / "tokenizer_config.json").is_file() else {}
        generic = saved.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
        tokenizer = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise TrainingError(f"{directory}: no tokenizer beside the model ({error})") from None
    if tokenizer.pad_token is None:   # Llama-style tokenizers have none; every mask here is explicit
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
