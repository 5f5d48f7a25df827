"""What every Q-model shares: its config, its outputs, the value head, and the interface the stages,
the scorer and the sampler use (QModel over T5 in bcoder.models.t5, CausalQModel over a decoder-only LM
in bcoder.models.causal). docs/method.md#the-q-function has the math.
"""
import abc
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

Q_STAGES = ("phi", "theta")
VALUE_HEADS = ("mlp", "linear")
POLICIES = ("theta", "ckpt")
QMODEL_FILE = "bcoder_qmodel.json"


@dataclass
class QModelConfig:
    """stage: "phi" (pre-train V_phi) or "theta" (fine-tune Q_theta).
    value_head: "mlp" or "linear"; value_head_width: the MLP's hidden width (None: d_model).
    init_value_from_phi: False is the paper's "without initialization" ablation (Fig. 1): no phi and
    no residual head; the theta-stage value is a freshly initialised head h1, u = h1(x_theta)."""
    stage: str = "phi"
    value_head: str = "mlp"
    value_head_width: int | None = None
    init_value_from_phi: bool = True

    def __post_init__(self):
        if self.stage not in Q_STAGES:
            raise ValueError(f"stage must be one of {Q_STAGES}, got {self.stage!r}")
        if self.value_head not in VALUE_HEADS:
            raise ValueError(f"value_head must be one of {VALUE_HEADS}, got {self.value_head!r}")
        if not self.init_value_from_phi and self.stage == "phi":
            raise ValueError('init_value_from_phi=False (the "without initialization" ablation) has no phi: '
                             'use stage="theta"')


@dataclass
class QModelOutput:
    """Teacher-forced outputs; position t is the state s_t = (prompt, a_<t) and predicts a_t.

    values [B, T]: the raw value-head output u: u_phi (both stages), or h1 in the "without initialization"
    ablation. value_residual [B, T]: theta's residual head h1 - h2 (theta-stage, with phi), else None;
    bcoder.models.q_loss.value_terms combines the two as eq. 16 (V_phi + residual) or capped.
    logits [B, T, V]: l_theta (theta-stage) or l_ckpt (phi-stage, frozen). ckpt_logits [B, T, V]: l_ckpt,
    no grad. hidden / ckpt_hidden [B, T, H]: the decoder states with T5's LM-head rescale applied, so
    hidden @ model.lm_head_weight.T == logits and ckpt_hidden @ model.ckpt_lm_head_weight.T == ckpt_logits
    (for bcoder.fused_head.bellman_loss_from_hidden). Fields not asked for are None.
    """
    values: torch.Tensor
    logits: torch.Tensor | None = None
    ckpt_logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    ckpt_hidden: torch.Tensor | None = None
    value_residual: torch.Tensor | None = None


class ValueHead(nn.Module):
    """u(x) = w2 . gelu(W1 x + b1) + b2 ("mlp") or w . x + b ("linear"), x [..., H] -> u [...]."""

    def __init__(self, d_model, kind="mlp", width=None):
        super().__init__()
        if kind == "mlp":
            width = width or d_model
            self.net = nn.Sequential(nn.Linear(d_model, width), nn.GELU(), nn.Linear(width, 1))
        else:
            self.net = nn.Linear(d_model, 1)

    def forward(self, hidden):
        return self.net(hidden).squeeze(-1)


class QModelBase(nn.Module, abc.ABC):
    """The Q-model interface. A Q-model holds three parameter sets over one checkpoint: theta_ckpt
    (frozen), phi (value pre-training) and theta (fine-tuning); `set_stage` picks the set that trains.

    forward(prompt_ids, prompt_mask, programs, return_logits=True, return_hidden=False, head=None) gives a
    QModelOutput (or, with `head`, head(output, model): the loss computed inside the forward, so that a
    DDP/FSDP2 wrapper sees one call). lm_head_weight / ckpt_lm_head_weight are the LM heads that map
    QModelOutput.hidden / ckpt_hidden to logits (the fused LM-head loss reads them).
    """

    causal: bool   # a decoder-only LM (prompt and program in one sequence) rather than an encoder-decoder

    @property
    def stage(self):
        return self.config.stage

    def set_stage(self, stage):
        """Makes exactly trainable_parameters(stage) trainable and freezes every other parameter."""
        self.config = dataclasses.replace(self.config, stage=stage)
        trainable = {id(p) for p in self.trainable_parameters(stage)}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
        return self.train(self.training)

    @abc.abstractmethod
    def trainable_parameters(self, stage=None):
        """The parameters `stage` (default: the current one) trains, each once: what the optimiser gets."""

    @abc.abstractmethod
    def checkpoint_activations(self, enabled=True):
        """Recompute the trained trunk's activations in the backward instead of keeping them."""

    @abc.abstractmethod
    def policy_model(self, policy="theta"):
        """A generate()-able model of the policy "theta" or "ckpt" (theta_ckpt), sharing these weights."""

    @abc.abstractmethod
    def save_pretrained(self, directory):
        """Writes the Q-model (its config, heads and trained weights) into `directory`."""

    @property
    @abc.abstractmethod
    def lm_head_weight(self):
        """[V, H]: the LM head of the stage's policy (theta's; theta_ckpt's in the phi-stage)."""

    @property
    @abc.abstractmethod
    def ckpt_lm_head_weight(self):
        """[V, H]: theta_ckpt's LM head."""

def program_mask(programs, eos_token_id):
    """[B, T] bool mask of bellman_loss: each program's tokens up to and including its first EOS (the
    whole row if it has none, as `generate` leaves a program cut at max_new_tokens)."""
    is_eos = programs == eos_token_id
    return torch.cumsum(is_eos, dim=1) - is_eos.long() == 0


def require_directory(directory, what):
    if not directory.exists():
        raise FileNotFoundError(f"{what} not found: {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(f"{what} is not a directory: {directory}")


def require_files(directory, names, what):
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        found = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{directory} is not {what}: missing {', '.join(missing)} "
                                f"(found: {found or 'nothing'})")
