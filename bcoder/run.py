"""A training run: its config (TrainConfig and the presets), its directory and the files in it,
and the checkpoint it starts from. Everything that trains, evaluates, ranks or reports on a run
reads it through here.

The run directory holds config.json (the resolved config), ckpt/ (sft's theta_ckpt and
tokenizer, unless --model names one), replay.db (every program scored), phi/ and theta/ (the
Q-models), metrics.jsonl (every logged step), curves.png, eval.json, eval_samples.jsonl,
report.md and state/ (the resume checkpoints: model, optimiser, scheduler, RNG and data
position, and a marker per finished stage).
"""
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bcoder import distributed as dist
from bcoder.data.prompt import MBPP_INSTRUCTION
from bcoder.model import load_t5_checkpoint

STAGES = ("sft", "sample", "phi", "theta", "eval")
CONFIG_FILE, REPLAY_FILE, METRICS_FILE = "config.json", "replay.db", "metrics.jsonl"
EVAL_FILE, EVAL_SAMPLES_FILE, REPORT_FILE, CURVES_FILE = "eval.json", "eval_samples.jsonl", "report.md", "curves.png"
CKPT_DIR, STATE_DIR = "ckpt", "state"


@dataclass
class TrainConfig:
    data: str = "tiny"                # training problems: "tiny" | "mbpp:PATH" | "apps:PATH"
    eval_data: str = ""               # held-out problems: "mbpp:PATH" (its test tasks, ids 11-510) | "apps:PATH"
                                      # (every problem there: APPS's test split); "" = from --data (tiny: its
                                      # test set; MBPP: the test tasks; APPS: an id-sorted fifth, not the paper's)
    mbpp_instruction: str = MBPP_INSTRUCTION  # the MBPP prompt around "{question}" (WizardCoder's format)
    model: str = ""                   # a T5 checkpoint directory (with its tokenizer) instead of sft
    replay: str = ""                  # an existing replay database to start from (skips sampling)
    seed: int = 0
    n_train: int = 1000               # tiny data set sizes
    n_test: int = 100
    max_prompt_tokens: int = 600      # docs/method.md#training
    max_program_tokens: int = 512
    # the theta_ckpt trained from scratch by sft (tiny presets)
    d_model: int = 128
    d_ff: int = 512
    layers: int = 2
    heads: int = 4
    sft_steps: int = 500
    sft_batch: int = 64
    sft_lr: float = 2e-3
    # sample
    samples_per_problem: int = 4
    sample_temperature: float = 1.0
    top_p: float = 0.95
    sandbox_timeout: float = 4.0
    workers: int = 0                  # sandbox workers; 0 = one per core
    # phi and theta stages (docs/method.md#training; presets scale the step counts and learning rates)
    phi_steps: int = 200
    phi_batch: int = 64
    phi_lr: float = 1e-3
    theta_steps: int = 150
    theta_batch: int = 64
    theta_lr: float = 1e-5
    weight_decay: float = 0.05
    rho_real: float = 0.5
    grad_clip: float = 1.0
    dtype: str = "float32"            # "float32" | "bfloat16" (autocast on the trained decoders)
    gamma: float = 0.999
    alpha: float = 1.0
    beta_adv: float = 0.1
    beta_ce: float = 0.5
    operator: str = "conservative"    # or "optimality": the ablation of Figure 1
    init_value_from_phi: bool = True  # False: theta-stage without phi and the residual head (Figure 1's
                                      # "without initialization" ablation)
    loss_backend: str = "auto"
    loss_path: str = "fused"          # "fused": bellman_loss_from_hidden, no [B, T, V] logits; "logits": logits,
                                      # then bellman_loss (for comparison)
    gradient_checkpointing: bool = False  # recompute the trained decoder's activations in the backward
    # eval (docs/method.md#ranking-and-the-protocols; bcoder.evaluate.evaluate_run): a pool of eval_samples
    # programs per held-out problem and policy at eval_temperature, all scored by R~ under theta and run
    # against all the tests (and the example tests alone, for filtered)
    eval_samples: int = 16
    eval_temperature: float = 0.6
    eval_ks: tuple = (1, 5)
    rank_m: int = 0                   # ranked/filtered/oracle from m of the pool (0: m = eval_samples);
                                      # m < pool: exact average over the pool's m-subsets
    filter_samples: int = 0           # > 0: filtered and oracle use a second pool of this size...
    filter_temperature: float = 0.4   # ...sampled at this temperature (paper: m=1000, temperature 0.4)
    max_new_tokens: int = 512         # the program cap, for training samples and evaluation alike
    curve_every: int = 0              # > 0: every this many phi/theta steps, greedy pass@1 on curve_problems
    curve_problems: int = 32          # training problems (a fixed, seeded subset): the pass@1 curve of Figure 1
    log_every: int = 10
    checkpoint_every: int = 50


PRESETS = {
    "tiny": TrainConfig(max_new_tokens=96, curve_every=25),
    "smoke": TrainConfig(n_train=24, n_test=8, d_model=32, d_ff=64, heads=2, sft_steps=30, sft_batch=16,
                         samples_per_problem=2, phi_steps=6, phi_batch=8, theta_steps=6, theta_batch=8,
                         eval_samples=2, max_new_tokens=48, curve_every=3, curve_problems=4, log_every=2,
                         checkpoint_every=2),
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


class Run:
    """The run directory. Across processes only rank 0 writes to it (state, metrics, markers); every
    rank reads it. `fsdp`: train with FSDP2 instead of DDP (a launch option, not part of the config)."""

    def __init__(self, directory, config, fsdp=False):
        self.dir, self.config, self.fsdp = Path(directory), config, fsdp
        if dist.is_main():
            (self.dir / STATE_DIR).mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return self.dir / name

    def done(self, stage):
        return (self.dir / STATE_DIR / f"{stage}.done").exists()

    def mark_done(self, stage):
        if dist.is_main():
            (self.dir / STATE_DIR / f"{stage}.done").touch()

    def save_state(self, stage, state):
        """Atomically: a kill mid-write leaves the previous checkpoint. Rank 0 only."""
        if not dist.is_main():
            return
        target = self.dir / STATE_DIR / f"{stage}.pt"
        torch.save(state, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)

    def load_state(self, stage):
        target = self.dir / STATE_DIR / f"{stage}.pt"
        return torch.load(target, weights_only=False) if target.exists() else None

    def log(self, record):
        if not dist.is_main():
            return
        with open(self.dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")

    def forget_metrics_after(self, stage, step):
        """Drops metrics that a killed run logged past its last checkpoint, before resuming at `step`."""
        path = self.dir / METRICS_FILE
        if not dist.is_main() or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if not (json.loads(line).get("stage") == stage and json.loads(line).get("step", -1) >= step)]
        path.write_text("".join(line + "\n" for line in kept))


def open_run(out, config, resume, overwrite):
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise TrainingError(f"{out} already holds a run: pass --resume to continue it or --overwrite to replace it")
        elif (out / CONFIG_FILE).exists():
            saved = json.loads((out / CONFIG_FILE).read_text())
            changed = {k: (saved.get(k), v) for k, v in config_dict(config).items() if saved.get(k) != v}
            if changed:
                raise TrainingError(f"--resume with a different config than {out / CONFIG_FILE}: {changed}")
    run = Run(out, config)
    (out / CONFIG_FILE).write_text(json.dumps(config_dict(config), indent=2) + "\n")
    return run


def config_dict(config):
    """The config as JSON-able plain data (config.json's content)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_run_config(run_dir):
    """The run's TrainConfig from its config.json; fields the file lacks keep their defaults (runs
    written before a field existed)."""
    saved = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in saved:
            values[f.name] = tuple(saved[f.name]) if f.type is tuple else saved[f.name]
    return TrainConfig(**values)


def ckpt_dir(run_dir, config):
    """theta_ckpt's directory (model and tokenizer): --model, else the run's own ckpt/ (sft)."""
    return Path(config.model) if config.model else Path(run_dir) / CKPT_DIR


def load_ckpt(run_dir, config):
    """theta_ckpt, a T5ForConditionalGeneration; TrainingError naming what is wrong with its directory."""
    try:
        return load_t5_checkpoint(ckpt_dir(run_dir, config), None)
    except (OSError, ValueError) as error:
        raise TrainingError(str(error)) from None


def load_tokenizer(run_dir, config):
    """theta_ckpt's tokenizer; TrainingError when its directory has none."""
    directory = ckpt_dir(run_dir, config)
    if not directory.is_dir():
        raise TrainingError(f"{directory}: the checkpoint directory (--model, or the run's ckpt/) does not exist")
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise TrainingError(f"{directory}: no tokenizer beside the model ({error})") from None
