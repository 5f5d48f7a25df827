"""A training run's configuration: `TrainConfig`, one dataclass per section (model, data, sample, sft,
loss, phi, theta, train, eval, sandbox), the presets, the checks that read no file, and the flags of
`python -m bcoder.train`, generated from the fields.

Every field has a flat key, unique across the sections: its flag (`--phi-steps` is `phi.steps`), its
name in config.json and in `--print-config`. Each layer receives its own section (bcoder.data.loading
the data section, the sandbox its timeout and workers), never the whole config.

It imports no torch, transformers, peft or bcoder._C: a command's `--help`, a flag error and
`--print-config` answer before any of them loads.
"""
import argparse
import dataclasses
import json
from dataclasses import dataclass, field

from bcoder.data.prompt import MBPP_INSTRUCTION


def _field(default, help, key=None):
    """A config field; `key`: its flat key (flag and config.json name) where it is not the field's name."""
    return field(default=default, metadata={"help": help, "key": key})


# operator: bcoder.reference.OPERATORS; backend: bcoder.ops.BACKENDS. Both modules load torch, so the names
# are written out here (tests/test_cli.py checks that they agree). Keyed by flat key.
CHOICES = {"operator": ("conservative", "optimality"), "loss_backend": ("auto", "cpp", "cuda", "triton", "reference"),
           "loss_path": ("fused", "logits"), "dtype": ("float32", "bfloat16"), "architecture": ("t5", "qwen2", "llama"),
           "adapter": ("auto", "lora", "none"), "td_scale": ("program", "token"), "ce_scale": ("sum", "mean"),
           "value_residual": ("additive", "capped"), "ground_truth": ("reference", "passed"),
           "tiny_maps": (1, 2)}


@dataclass
class ModelConfig:
    """theta_ckpt (a checkpoint, or the shape sft trains from scratch) and the Q-model built on it."""
    checkpoint: str = _field("", "a checkpoint directory (T5 / CodeT5 or a decoder-only causal LM), with its "
                                 "tokenizer, as theta_ckpt (no sft)", key="model")
    architecture: str = _field("t5", "sft's theta_ckpt: t5 (encoder-decoder; layers each side) or a decoder-only "
                                     "qwen2 or llama (layers in all); --model's checkpoint says its own")
    d_model: int = _field(128, "sft's theta_ckpt (tiny presets): model width")
    d_ff: int = _field(512, "sft's theta_ckpt: feed-forward width")
    layers: int = _field(2, "sft's theta_ckpt: encoder and decoder layers")
    heads: int = _field(4, "sft's theta_ckpt: attention heads (dividing d_model)")
    adapter: str = _field("auto", "decoder-only models: phi and theta as LoRA adapters on the frozen base (lora) or "
                                  "full copies of it (none); auto: lora there, copies for T5 (no LoRA path)")
    lora_rank: int = _field(16, "LoRA adapters' rank")
    lora_alpha: float = _field(32.0, "LoRA adapters' alpha (their update is scaled by alpha / rank)")
    lora_targets: str = _field("all-linear", "the modules LoRA adapts: all-linear (every linear layer of the trunk) "
                                             "or comma-separated module names (q_proj,v_proj)")
    share_prompt: bool = _field(True, "decoder-only models: the frozen base encodes each prompt once, for the three "
                                      "policies, which run on the program tokens (the shared encoder's analogue)")
    init_value_from_phi: bool = _field(True, "theta's value starts from phi (no: Figure 1's 'without "
                                             "initialization' ablation, no phi-stage)")


@dataclass
class DataConfig:
    """The problems and how much of each prompt and program the models see."""
    train: str = _field("tiny", "training problems: tiny, mbpp:PATH or apps:PATH", key="data")
    eval: str = _field("", "held-out problems: mbpp:PATH (its test tasks, 11-510) or apps:PATH (every problem there: "
                           "APPS's test split); empty: from --data (tiny: its test set; MBPP: the test tasks; APPS: an "
                           "id-sorted fifth, not the paper's split)", key="eval_data")
    mbpp_instruction: str = _field(MBPP_INSTRUCTION, "the MBPP prompt around {question} (WizardCoder's format)")
    seed: int = _field(0, "tiny set: the seed that generates its problems (so --seed varies training alone)",
                       key="data_seed")
    n_train: int = _field(1000, "tiny set: training problems")
    n_test: int = _field(100, "tiny set: held-out problems")
    tiny_maps: int = _field(1, "tiny set: the longest chain of maps a problem applies; 2 is the harder task (half its "
                               "problems apply two maps one after the other)")
    max_prompt_tokens: int = _field(600, "prompt tokens; a longer prompt loses the end of its question")
    max_program_tokens: int = _field(512, "program tokens in training and scoring; longer programs are cut")


@dataclass
class SampleConfig:
    """Generating programs: the sample stage's replay data, and the decoding that eval shares."""
    replay: str = _field("", "a replay database of an earlier run to start from (no sample stage)")
    samples_per_problem: int = _field(4, "sample: programs per training problem from theta_ckpt")
    temperature: float = _field(1.0, "sample: temperature (0: greedy, one program)", key="sample_temperature")
    top_p: float = _field(0.95, "nucleus sampling's p, in sample and eval")
    max_new_tokens: int = _field(512, "generated tokens per program, in sample and eval alike")


@dataclass
class SFTConfig:
    """sft: theta_ckpt trained from scratch with cross-entropy (tiny presets; skipped with --model)."""
    steps: int = _field(500, "sft: steps", key="sft_steps")
    batch: int = _field(64, "sft: global batch (programs)", key="sft_batch")
    lr: float = _field(2e-3, "sft: peak learning rate (linear decay)", key="sft_lr")


@dataclass
class LossConfig:
    """The Bellman loss of both stages and the reward model R~ (docs/method.md)."""
    gamma: float = _field(0.999, "discount")
    alpha: float = _field(1.0, "the advantage's temperature: A = alpha (l - max l)")
    beta_adv: float = _field(0.1, "weight of L_adv (theta-stage)")
    beta_ce: float = _field(0.5, "weight of L_ce (theta-stage)")
    operator: str = _field("conservative", "the TD target's action (optimality: Figure 1's ablation)")
    ground_truth: str = _field("reference", "the programs that get L_adv and L_ce: the reference solutions "
                                            "(reference: the paper) or also the generated programs that passed "
                                            "every test (passed: section 4.1's argument applied to them)")
    td_scale: str = _field("program", "L_Q: the mean over programs of each one's mean squared TD error (program: "
                                      "the paper's eq. 15) or the mean over all tokens of the batch (token)")
    ce_scale: str = _field("sum", "L_ce: the mean over ground-truth programs of each one's summed cross-entropy (sum: "
                                  "the paper's eq. 1) or the mean over ground-truth tokens (mean)")
    value_residual: str = _field("additive", "theta's value: V_phi + (h1 - h2), the residual added after the cap "
                                             "(additive: the paper's eq. 16), or the cap of the summed raw values "
                                             "(capped)")
    backend: str = _field("auto", "the fused op's backend", key="loss_backend")
    path: str = _field("fused", "fused: the loss from the decoders' hidden states, no [B, T, V] logits; logits: "
                                "materialise them (for comparison)", key="loss_path")


@dataclass
class PhiConfig:
    """The phi-stage: the value decoder phi pre-trained on L_V (constant learning rate)."""
    steps: int = _field(200, "phi-stage: steps", key="phi_steps")
    batch: int = _field(64, "phi-stage: global batch (programs)", key="phi_batch")
    lr: float = _field(1e-3, "phi-stage: constant learning rate", key="phi_lr")


@dataclass
class ThetaConfig:
    """The theta-stage: conservative fine-tuning on L_ft (linear decay, no warm-up)."""
    steps: int = _field(150, "theta-stage: steps", key="theta_steps")
    batch: int = _field(64, "theta-stage: global batch (programs)", key="theta_batch")
    lr: float = _field(1e-5, "theta-stage: peak learning rate (linear decay, no warm-up)", key="theta_lr")
    controls: bool = _field(True, "also train the CE-only control theta_ce (the same steps, L_Q and L_adv cut from "
                                  "the logits) and rank by the free baselines (theta_ckpt's log-probability, phi's "
                                  "R~): eval reports them beside theta")


@dataclass
class TrainingConfig:
    """What the training loop of sft, phi and theta shares: seed, optimiser, batches, logging."""
    seed: int = _field(0, "seed of the training: initialisation, batches and sampling")
    weight_decay: float = _field(0.05, "AdamW's weight decay")
    rho_real: float = _field(0.5, "share of ground-truth programs in a batch")
    grad_clip: float = _field(1.0, "gradient norm clip (0: none, as the paper)")
    dtype: str = _field("float32", "the trained decoders' compute dtype (bfloat16: autocast)")
    gradient_checkpointing: bool = _field(False, "recompute the trained decoder's activations in the backward")
    curve_every: int = _field(0, "every this many phi/theta steps, greedy pass@1 on curve_problems (0: never)")
    curve_problems: int = _field(32, "training problems of Figure 1's pass@1 curve (a fixed, seeded subset)")
    log_every: int = _field(10, "steps between metrics lines")
    checkpoint_every: int = _field(50, "steps between resume checkpoints")


@dataclass
class EvalConfig:
    """The eval stage: pools sampled from theta_ckpt and theta on the held-out problems, and the protocols."""
    samples: int = _field(16, "eval: programs per held-out problem and policy", key="eval_samples")
    temperature: float = _field(0.6, "eval: temperature", key="eval_temperature")
    ks: tuple = _field((1, 5), "eval: the k of pass@k, comma-separated", key="eval_ks")
    rank_m: int = _field(0, "eval: candidates ranked per problem (0: all eval_samples); m < pool: the exact mean "
                            "over its m-subsets")
    filter_samples: int = _field(0, "eval: a second pool of this size for filtered and oracle (0: the main pool)")
    filter_temperature: float = _field(0.4, "eval: the second pool's temperature (the paper: m 1000 at 0.4)")


@dataclass
class JudgeConfig:
    """The sandbox that runs every program against its tests (bcoder.sandbox)."""
    timeout: float = _field(4.0, "CPU seconds per program and all its tests (wall-clock limit 3x)",
                            key="sandbox_timeout")
    workers: int = _field(0, "sandbox slots (0: one per core)")


@dataclass
class TrainConfig:
    """A run's config, by section; every field is a flag of `python -m bcoder.train` (`--help` shows each
    one's meaning, default and choices). docs/method.md#hyper-parameters sets the defaults against the
    paper's."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    phi: PhiConfig = field(default_factory=PhiConfig)
    theta: ThetaConfig = field(default_factory=ThetaConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sandbox: JudgeConfig = field(default_factory=JudgeConfig)


# (flat key, section name, the section's field) of every field, in the order --help lists them.
FIELDS = [(f.metadata["key"] or f.name, section.name, f) for section in dataclasses.fields(TrainConfig)
          for f in dataclasses.fields(section.default_factory)]
KEYS = {key: (section, f.name) for key, section, f in FIELDS}
assert len(KEYS) == len(FIELDS), "two fields share a flat key"


def flag(key):
    """The command-line flag of a field's flat key."""
    return "--" + key.replace("_", "-")


def config_dict(config):
    """The config as flat, JSON-able plain data, {key: value} (config.json's content)."""
    return json.loads(json.dumps({key: getattr(getattr(config, section), name)
                                  for key, (section, name) in KEYS.items()}))


def with_values(config, **values):
    """A copy of `config` with the fields of these flat keys set."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"no config fields {sorted(unknown)}")
    sections = {}
    for key, value in values.items():
        section, name = KEYS[key]
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **changes)
                                          for section, changes in sections.items()})


def config_from_dict(saved):
    """The TrainConfig of flat config.json data; keys it lacks keep their defaults (runs written before a
    field existed), keys no field has are ignored (fields since removed)."""
    values = {key: tuple(saved[key]) if f.type is tuple else saved[key] for key, _, f in FIELDS if key in saved}
    return with_values(TrainConfig(), **values)


# A resume may change these: they change how a run works, not its results.
RESULT_NEUTRAL = {"workers", "loss_backend", "loss_path", "gradient_checkpointing", "log_every", "checkpoint_every",
                  "curve_every", "curve_problems"}

# The tiny presets' sizes: programs of the tiny set are short, and Figure 1's curve every 25 steps.
_TINY = with_values(TrainConfig(), max_new_tokens=96, curve_every=25)
# Every stage in seconds, for tests.
_SMOKE = with_values(TrainConfig(), n_train=24, n_test=8, d_model=32, d_ff=64, heads=2, sft_steps=30, sft_batch=16,
                     samples_per_problem=2, phi_steps=6, phi_batch=8, theta_steps=6, theta_batch=8, eval_samples=2,
                     max_new_tokens=48, curve_every=3, curve_problems=4, log_every=2, checkpoint_every=2)
PRESETS = {
    # The paper's loss and weights (bench/RESULTS.md, "The θ-stage against its controls": no setting tried beat
    # the CE-only control by more than the noise over seeds, so none replaces them).
    "tiny": _TINY,
    "smoke": _SMOKE,
    # A decoder-only Qwen2-style model of the tiny preset's size, LoRA adapters for phi and theta.
    "tiny-causal": with_values(_TINY, architecture="qwen2", theta_lr=1e-4),
    "smoke-causal": with_values(_SMOKE, architecture="qwen2", lora_rank=4),
    # The paper's App. H, for a downloaded CodeT5 / CodeRL checkpoint (--model) on APPS or MBPP (--data,
    # --eval-data): phi at a constant 1e-5 for 18k steps of 256, theta at a peak 3e-5 decaying linearly over
    # 10k steps of 128, 256 samples per problem, 600/512 tokens, no gradient clipping. Evaluated as Table 1
    # (2500 samples at temperature 0.6: pass@1 and @5 ranked from m = 256, pass@1000 from all 2500; the oracle
    # on those) and Table 2 (filtered: a pool of 1000 at temperature 0.4).
    "paper": with_values(TrainConfig(), data="", samples_per_problem=256, sandbox_timeout=4.0, phi_steps=18000,
                         phi_batch=256, phi_lr=1e-5, theta_steps=10000, theta_batch=128, theta_lr=3e-5,
                         weight_decay=0.05, rho_real=0.5, alpha=1.0, beta_adv=0.1, beta_ce=0.5, max_prompt_tokens=600,
                         max_program_tokens=512, max_new_tokens=512, eval_samples=2500, rank_m=256,
                         eval_ks=(1, 5, 1000), eval_temperature=0.6, filter_samples=1000, filter_temperature=0.4,
                         grad_clip=0.0, curve_every=500, log_every=50, checkpoint_every=500),
}
NEEDS = {"paper": ("model", "data")}   # the flat keys a preset leaves to the command line
PRESET_HELP = ("the defaults the flags start from: tiny (every stage on the CPU in minutes), smoke (seconds, for "
               "tests), tiny-causal and smoke-causal (the same with a decoder-only Qwen2-style model, LoRA adapters), "
               "paper (the paper's App. H; needs --model and --data)")


# ----- the checks that read no file -----

class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what was kept."""


def check_config(config):
    """TrainingError, one line naming the flag, for a value no run accepts. Reads no file: bcoder.stages.validate
    adds the checks of the data, --model and --replay."""
    values = config_dict(config)
    for name, choices in CHOICES.items():
        if values[name] not in choices:
            raise TrainingError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {values[name]!r}")
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
                                                               "alpha", "lora_alpha")},
              **{name: (">= 0", lambda v: v >= 0) for name in ("grad_clip", "sample_temperature", "eval_temperature",
                                                                "filter_temperature", "weight_decay", "beta_adv",
                                                                "beta_ce")},
              **{name: ("in [0, 1]", lambda v: 0 <= v <= 1) for name in ("rho_real", "gamma")},
              "top_p": ("in (0, 1]", lambda v: 0 < v <= 1)}
    for name, (bound, holds) in bounds.items():
        value = values[name]
        if not isinstance(value, (int, float)) or value != value or not holds(value):
            raise TrainingError(f"{flag(name)} must be {bound}, got {value!r}")
    ks = config.eval.ks
    if not ks or min(ks) < 1:
        raise TrainingError(f"--eval-ks must be integers >= 1, got {','.join(map(str, ks)) or 'none'}")
    for temperature, samples in (("sample_temperature", "samples_per_problem"), ("eval_temperature", "eval_samples")):
        if values[temperature] == 0 and values[samples] != 1:
            raise TrainingError(f"{flag(temperature)} 0 is greedy decoding, one program per problem: "
                                f"{flag(samples)} must be 1, got {values[samples]}")
    if config.eval.rank_m > config.eval.samples:
        raise TrainingError(f"--rank-m {config.eval.rank_m} ranks more candidates than --eval-samples "
                            f"{config.eval.samples}")
    if config.model.d_model % config.model.heads:
        raise TrainingError(f"--heads {config.model.heads} must divide --d-model {config.model.d_model}")


def still_needed(preset, config):
    """The flags a run of `preset` still needs (NEEDS) that `config` leaves empty."""
    values = config_dict(config)
    return [flag(key) for key in NEEDS.get(preset, ()) if not values[key]]


# ----- the flags, generated from the fields -----

def add_config_flags(parser):
    """--preset and one flag per field (default None: the preset's value stands)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help=PRESET_HELP + " (default: tiny)")
    group = parser.add_argument_group("the run's config (defaults: the tiny preset's)")
    tiny = config_dict(PRESETS["tiny"])
    for key, _, f in FIELDS:
        default = tiny[key]
        shown = ",".join(map(str, default)) if f.type is tuple else repr(default) if f.type is str else default
        help = f"{f.metadata['help']} (default: {shown})".replace("%", "%%")
        if f.type is bool:
            group.add_argument(flag(key), action=argparse.BooleanOptionalAction, default=None, help=help)
        elif f.type is tuple:
            group.add_argument(flag(key), type=_integers, default=None, metavar="K,K", help=help)
        else:
            group.add_argument(flag(key), type=f.type, default=None, choices=CHOICES.get(key), help=help)


def config_from_flags(args):
    """The TrainConfig of parsed flags: the preset's, with every flag given on the command line."""
    given = {key: getattr(args, key) for key in KEYS if getattr(args, key) is not None}
    return with_values(PRESETS[args.preset], **given)


def _integers(text):
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
