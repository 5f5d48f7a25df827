"""A training run: its config (TrainConfig and the presets), its directory and the files in it,
and the checkpoint it starts from. Everything that trains, evaluates, ranks or reports on a run
reads it through here.

The run directory holds config.json (the resolved config), ckpt/ (sft's theta_ckpt and
tokenizer, unless --model names one), replay.db (every program scored), phi/ and theta/ (the
Q-models), metrics.jsonl (every logged step), curves.png, eval.json, eval_samples.jsonl,
report.md and state/ (the resume checkpoints: model, optimiser, scheduler, RNG and data
position, and a marker per finished stage).
"""
import argparse
import dataclasses
import json
import shutil
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from bcoder import distributed as dist
from bcoder.data.loading import load_split
from bcoder.data.prompt import MBPP_INSTRUCTION
from bcoder.data.problems import DataError
from bcoder.files import LockedError, RunLock, write_atomic, write_atomic_with
from bcoder.causal import CausalQModel, CausalQModelConfig, load_causal_checkpoint
from bcoder.model import QModel, QModelConfig, load_t5_checkpoint
from bcoder.ops import BACKENDS
from bcoder.reference import OPERATORS
from bcoder.replay import ReplayError, ReplayStore

STAGES = ("sft", "sample", "phi", "theta", "eval")
CONFIG_FILE, REPLAY_FILE, METRICS_FILE = "config.json", "replay.db", "metrics.jsonl"
EVAL_FILE, EVAL_SAMPLES_FILE, REPORT_FILE, CURVES_FILE = "eval.json", "eval_samples.jsonl", "report.md", "curves.png"
CKPT_DIR, STATE_DIR = "ckpt", "state"


def _field(default, help):
    return field(default=default, metadata={"help": help})


CHOICES = {"operator": OPERATORS, "loss_backend": BACKENDS, "loss_path": ("fused", "logits"),
           "dtype": ("float32", "bfloat16"), "architecture": ("t5", "qwen2", "llama"),
           "adapter": ("auto", "lora", "none")}


@dataclass
class TrainConfig:
    """Every field is a flag of `python -m bcoder.train` (`--field-name`); `--help` shows each one's
    meaning, default and choices. docs/method.md#hyper-parameters sets the defaults against the paper's."""
    data: str = _field("tiny", "training problems: tiny, mbpp:PATH or apps:PATH")
    eval_data: str = _field("", "held-out problems: mbpp:PATH (its test tasks, 11-510) or apps:PATH (every problem "
                                "there: APPS's test split); empty: from --data (tiny: its test set; MBPP: the test "
                                "tasks; APPS: an id-sorted fifth, not the paper's split)")
    mbpp_instruction: str = _field(MBPP_INSTRUCTION, "the MBPP prompt around {question} (WizardCoder's format)")
    model: str = _field("", "a T5 / CodeT5 checkpoint directory, with its tokenizer, as theta_ckpt (no sft)")
    replay: str = _field("", "a replay database of an earlier run to start from (no sample stage)")
    seed: int = _field(0, "seed of the training: initialisation, batches and sampling")
    data_seed: int = _field(0, "tiny set: the seed that generates its problems (so --seed varies training alone)")
    n_train: int = _field(1000, "tiny set: training problems")
    n_test: int = _field(100, "tiny set: held-out problems")
    max_prompt_tokens: int = _field(600, "prompt tokens; a longer prompt loses the end of its question")
    max_program_tokens: int = _field(512, "program tokens in training and scoring; longer programs are cut")
    d_model: int = _field(128, "sft's theta_ckpt (tiny presets): model width")
    d_ff: int = _field(512, "sft's theta_ckpt: feed-forward width")
    layers: int = _field(2, "sft's theta_ckpt: encoder and decoder layers")
    heads: int = _field(4, "sft's theta_ckpt: attention heads (dividing d_model)")
    architecture: str = _field("t5", "sft's theta_ckpt: t5 (encoder-decoder; layers each side) or a decoder-only "
                                     "qwen2 or llama (layers in all); --model's checkpoint says its own")
    adapter: str = _field("auto", "decoder-only models: phi and theta as LoRA adapters on the frozen base (lora) or "
                                  "full copies of it (none); auto: lora there, copies for T5 (no LoRA path)")
    lora_rank: int = _field(16, "LoRA adapters' rank")
    lora_alpha: float = _field(32.0, "LoRA adapters' alpha (their update is scaled by alpha / rank)")
    lora_targets: str = _field("all-linear", "the modules LoRA adapts: all-linear (every linear layer of the trunk) "
                                             "or comma-separated module names (q_proj,v_proj)")
    share_prompt: bool = _field(True, "decoder-only models: the frozen base encodes each prompt once, for the three "
                                      "policies, which run on the program tokens (the shared encoder's analogue)")
    sft_steps: int = _field(500, "sft: steps")
    sft_batch: int = _field(64, "sft: global batch (programs)")
    sft_lr: float = _field(2e-3, "sft: peak learning rate (linear decay)")
    samples_per_problem: int = _field(4, "sample: programs per training problem from theta_ckpt")
    sample_temperature: float = _field(1.0, "sample: temperature (0: greedy, one program)")
    top_p: float = _field(0.95, "nucleus sampling's p, in sample and eval")
    sandbox_timeout: float = _field(4.0, "seconds per program and all its tests")
    workers: int = _field(0, "sandbox slots (0: one per core)")
    phi_steps: int = _field(200, "phi-stage: steps")
    phi_batch: int = _field(64, "phi-stage: global batch (programs)")
    phi_lr: float = _field(1e-3, "phi-stage: constant learning rate")
    theta_steps: int = _field(150, "theta-stage: steps")
    theta_batch: int = _field(64, "theta-stage: global batch (programs)")
    theta_lr: float = _field(1e-5, "theta-stage: peak learning rate (linear decay, no warm-up)")
    weight_decay: float = _field(0.05, "AdamW's weight decay")
    rho_real: float = _field(0.5, "share of ground-truth programs in a batch")
    grad_clip: float = _field(1.0, "gradient norm clip")
    dtype: str = _field("float32", "the trained decoders' compute dtype (bfloat16: autocast)")
    gamma: float = _field(0.999, "discount")
    alpha: float = _field(1.0, "the advantage's temperature: A = alpha (l - max l)")
    beta_adv: float = _field(0.1, "weight of L_adv (theta-stage)")
    beta_ce: float = _field(0.5, "weight of L_ce (theta-stage)")
    operator: str = _field("conservative", "the TD target's action (optimality: Figure 1's ablation)")
    init_value_from_phi: bool = _field(True, "theta's value starts from phi (no: Figure 1's 'without "
                                             "initialization' ablation, no phi-stage)")
    loss_backend: str = _field("auto", "the fused op's backend")
    loss_path: str = _field("fused", "fused: the loss from the decoders' hidden states, no [B, T, V] logits; "
                                     "logits: materialise them (for comparison)")
    gradient_checkpointing: bool = _field(False, "recompute the trained decoder's activations in the backward")
    eval_samples: int = _field(16, "eval: programs per held-out problem and policy")
    eval_temperature: float = _field(0.6, "eval: temperature")
    eval_ks: tuple = _field((1, 5), "eval: the k of pass@k, comma-separated")
    rank_m: int = _field(0, "eval: candidates ranked per problem (0: all eval_samples); m < pool: the exact "
                            "mean over its m-subsets")
    filter_samples: int = _field(0, "eval: a second pool of this size for filtered and oracle (0: the main pool)")
    filter_temperature: float = _field(0.4, "eval: the second pool's temperature (the paper: m 1000 at 0.4)")
    max_new_tokens: int = _field(512, "generated tokens per program, in sample and eval alike")
    curve_every: int = _field(0, "every this many phi/theta steps, greedy pass@1 on curve_problems (0: never)")
    curve_problems: int = _field(32, "training problems of Figure 1's pass@1 curve (a fixed, seeded subset)")
    log_every: int = _field(10, "steps between metrics lines")
    checkpoint_every: int = _field(50, "steps between resume checkpoints")


# A resume may change these: they change how a run works, not its results.
RESULT_NEUTRAL = {"workers", "loss_backend", "loss_path", "gradient_checkpointing", "log_every", "checkpoint_every",
                  "curve_every", "curve_problems"}


PRESETS = {
    # beta_ce 1000: the best of the theta-stage settings tried over 3 seeds (bench/RESULTS.md, "The theta-stage
    # over seeds"): at this scale the TD and L_adv gradients flatten theta's policy and every lighter setting
    # samples worse than theta_ckpt; a dominant L_ce keeps the policy where theta_ckpt's is, while the value head
    # h1 (which only L_Q reaches) still learns R~. The paper's 0.5 stays the default and --preset paper's.
    "tiny": TrainConfig(max_new_tokens=96, curve_every=25, beta_ce=1000.0),
    "smoke": TrainConfig(n_train=24, n_test=8, d_model=32, d_ff=64, heads=2, sft_steps=30, sft_batch=16,
                         samples_per_problem=2, phi_steps=6, phi_batch=8, theta_steps=6, theta_batch=8,
                         eval_samples=2, max_new_tokens=48, curve_every=3, curve_problems=4, log_every=2,
                         checkpoint_every=2),
    # A decoder-only Qwen2-style model of the tiny preset's size, LoRA adapters for phi and theta.
    "tiny-causal": TrainConfig(architecture="qwen2", max_new_tokens=96, curve_every=25, theta_lr=1e-4),
    "smoke-causal": TrainConfig(architecture="qwen2", n_train=24, n_test=8, d_model=32, d_ff=64, heads=2, sft_steps=30,
                                sft_batch=16, samples_per_problem=2, phi_steps=6, phi_batch=8, theta_steps=6,
                                theta_batch=8, eval_samples=2, max_new_tokens=48, curve_every=3, curve_problems=4,
                                log_every=2, checkpoint_every=2, lora_rank=4),
    # The paper's App. H, for a downloaded CodeT5 / CodeRL checkpoint (--model) on APPS or MBPP (--data,
    # --eval-data): phi at a constant 1e-5 for 18k steps of 256, theta at a peak 3e-5 decaying linearly over
    # 10k steps of 128, 256 samples per problem, 600/512 tokens; evaluated at temperature 0.6 with m = 256.
    "paper": TrainConfig(data="", samples_per_problem=256, sandbox_timeout=4.0,
                         phi_steps=18000, phi_batch=256, phi_lr=1e-5, theta_steps=10000, theta_batch=128,
                         theta_lr=3e-5, weight_decay=0.05, rho_real=0.5, alpha=1.0, beta_adv=0.1, beta_ce=0.5,
                         max_prompt_tokens=600, max_program_tokens=512, max_new_tokens=512, eval_samples=256,
                         rank_m=256, eval_temperature=0.6, curve_every=500, log_every=50, checkpoint_every=500),
}
NEEDS = {"paper": ("model", "data")}   # what a preset leaves to the command line


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what was kept."""


# What a command line reports in one line (exit status 2, no traceback): bad input, not a bug.
EXPECTED_ERRORS = (TrainingError, DataError, ReplayError, LockedError, ValueError, OSError, sqlite3.Error)


def exit_with(program, error):
    print(f"{program}: {error}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (not the usage block), exit status 2."""

    def error(self, message):
        exit_with(self.prog, f"{message} (--help lists the flags)")


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
    run: before a run directory exists. Reads what the run will read: the data files, the
    checkpoint's config and tokenizer (not its weights) and the replay database."""
    def flag(name):
        return "--" + name.replace("_", "-")

    values = dataclasses.asdict(config)
    for name, choices in CHOICES.items():
        if values[name] not in choices:
            raise TrainingError(f"{flag(name)} must be one of {', '.join(choices)}, got {values[name]!r}")
    at_least = {1: ("sft_steps", "sft_batch", "phi_steps", "phi_batch", "theta_steps", "theta_batch",
                    "samples_per_problem", "eval_samples", "curve_problems", "log_every", "checkpoint_every",
                    "max_prompt_tokens", "max_program_tokens", "max_new_tokens", "n_train", "n_test", "d_model",
                    "d_ff", "layers", "heads", "lora_rank"),
                0: ("workers", "rank_m", "filter_samples", "curve_every", "seed", "data_seed")}
    for low, names in at_least.items():
        for name in names:
            if not isinstance(values[name], int) or values[name] < low:
                raise TrainingError(f"{flag(name)} must be an integer >= {low}, got {values[name]!r}")
    bounds = {**{name: ("> 0", lambda v: v > 0) for name in ("sandbox_timeout", "sft_lr", "phi_lr", "theta_lr",
                                                               "alpha", "grad_clip", "lora_alpha")},
              **{name: (">= 0", lambda v: v >= 0) for name in ("sample_temperature", "eval_temperature",
                                                                "filter_temperature", "weight_decay", "beta_adv",
                                                                "beta_ce")},
              **{name: ("in [0, 1]", lambda v: 0 <= v <= 1) for name in ("rho_real", "gamma")},
              "top_p": ("in (0, 1]", lambda v: 0 < v <= 1)}
    for name, (bound, holds) in bounds.items():
        value = values[name]
        if not isinstance(value, (int, float)) or value != value or not holds(value):
            raise TrainingError(f"{flag(name)} must be {bound}, got {value!r}")
    if not config.eval_ks or min(config.eval_ks) < 1:
        raise TrainingError(f"--eval-ks must be integers >= 1, got {','.join(map(str, config.eval_ks)) or 'none'}")
    for temperature, samples in (("sample_temperature", "samples_per_problem"), ("eval_temperature", "eval_samples")):
        if values[temperature] == 0 and values[samples] != 1:
            raise TrainingError(f"{flag(temperature)} 0 is greedy decoding, one program per problem: "
                                f"{flag(samples)} must be 1, got {values[samples]}")
    if config.rank_m > config.eval_samples:
        raise TrainingError(f"--rank-m {config.rank_m} ranks more candidates than --eval-samples {config.eval_samples}")
    if config.d_model % config.heads:
        raise TrainingError(f"--heads {config.heads} must divide --d-model {config.d_model}")
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
            changed = [f"--{k.replace('_', '-')} ({saved.get(k)!r} there, {v!r} now)"
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


def config_dict(config):
    """The config as JSON-able plain data (config.json's content)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


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
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in saved:
            values[f.name] = tuple(saved[f.name]) if f.type is tuple else saved[f.name]
    return TrainConfig(**values)


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
