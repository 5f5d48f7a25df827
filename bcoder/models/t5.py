"""B-Coder's dueling Q-model over a Hugging Face T5 / CodeT5 checkpoint (docs/method.md#the-q-function
and docs/method.md#parameter-sets; paper App. G).

Three parameter sets share ONE frozen encoder (each prompt is encoded once per batch):

    theta_ckpt  frozen decoder + LM head        l_ckpt(s, .): the phi-stage advantage, the target argmax
    phi         decoder + value head u_phi      V_phi   = R_max - softabs(u_phi)
    theta       decoder + LM head + h1, h2      V_theta = R_max - softabs(u_phi + h1 - h2),
                                                Q_theta = alpha (l_theta - max l_theta) + V_theta

phi and theta start as copies of theta_ckpt and h2 is a frozen copy of h1 (App. G.2), so when the
theta-stage starts l_theta = l_ckpt and u^r = h1 - h2 = 0, i.e. Q_theta = Q_phi. The model returns
the RAW value u (u_phi, or u_phi + (h1 - h2)); `bellman_loss` applies the cap to the sum.

Value heads read the decoder's final hidden state x (after T5's final layer norm) and are a
one-hidden-layer MLP u(x) = w2 . gelu(W1 x + b1) + b2 by default: the paper (App. G) leaves the
head unspecified, and a non-linear layer lets a head regress returns from features trained for
next-token prediction while costing O(d_model^2), nothing next to a decoder. "linear" is u = w . x + b.

Memory: theta_ckpt, phi and theta hold three decoders, each with its own input embedding (trained
with its decoder; tied to the LM head where the checkpoint ties them). The encoder exists once and
shares theta_ckpt's embedding. Frozen parts run in eval mode and under no_grad.
"""
import copy
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration
from transformers.initialization import no_init_weights

from bcoder.models.base import (
    POLICIES,
    Q_STAGES,
    QMODEL_FILE,
    QModelBase,
    QModelConfig,
    QModelOutput,
    ValueHead,
    require_directory,
    require_files,
)

# The children each stage trains; every other parameter has requires_grad False.
TRAINABLE = {"phi": ("phi_decoder", "phi_value_head"), "theta": ("theta_decoder", "theta_lm_head", "h1")}
WEIGHTS_FILE = "model.safetensors"
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


class QModel(QModelBase):
    """The dueling Q-model: `QModel.from_checkpoint(t5_dir_or_model)` to start, `from_pretrained` to
    resume. `set_stage` picks what trains; `forward` gives logits and raw values for `bellman_loss`.

    Submodules: ckpt (the whole frozen theta_ckpt T5ForConditionalGeneration; its encoder is the shared
    encoder), phi_decoder, phi_value_head, theta_decoder, theta_lm_head, h1, h2.
    """

    causal = False

    def __init__(self, ckpt: T5ForConditionalGeneration, config: QModelConfig | None = None):
        """Wraps ckpt as theta_ckpt (taken over, not copied: it is frozen in place) and initialises phi and
        theta from it. Prefer `from_checkpoint`, which also accepts a directory."""
        super().__init__()
        self.config = copy.deepcopy(config) if config is not None else QModelConfig()
        self.ckpt = ckpt
        d_model, like = ckpt.config.d_model, ckpt.lm_head.weight
        head = lambda: ValueHead(d_model, self.config.value_head, self.config.value_head_width).to(like)
        if self.config.init_value_from_phi:
            self.phi_decoder = copy.deepcopy(ckpt.decoder)
            self.phi_value_head = head()
        # Copied together so a tied LM head stays tied to theta's own input embedding.
        self.theta_decoder, self.theta_lm_head = copy.deepcopy((ckpt.decoder, ckpt.lm_head))
        self.h1 = head()
        if self.config.init_value_from_phi:
            self.h2 = copy.deepcopy(self.h1)
        self.set_stage(self.config.stage)

    # ----- building, saving, loading -----

    @classmethod
    def from_checkpoint(cls, checkpoint, config: QModelConfig | None = None, dtype: torch.dtype | None = None):
        """A fresh Q-model from a plain T5 / CodeT5 checkpoint (theta_ckpt): a local directory that
        `T5ForConditionalGeneration.from_pretrained` reads, or a loaded T5ForConditionalGeneration (taken
        over and frozen in place). phi and theta are initialised from it."""
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = load_t5_checkpoint(Path(checkpoint), dtype)
        elif not isinstance(checkpoint, T5ForConditionalGeneration):
            raise TypeError("checkpoint must be a T5ForConditionalGeneration or a directory holding one, "
                            f"got {type(checkpoint).__name__}")
        elif dtype is not None:
            checkpoint = checkpoint.to(dtype)
        return cls(checkpoint, config)

    def save_pretrained(self, directory):
        """Writes model.safetensors (every weight; tied and shared tensors stored once) and
        bcoder_qmodel.json (this QModelConfig, the T5 config, theta_ckpt's generation config, dtype)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))
        meta = {"qmodel": asdict(self.config), "t5": self.ckpt.config.to_dict(),
                "generation": self.ckpt.generation_config.to_dict(),
                "dtype": str(self.ckpt.dtype).removeprefix("torch.")}
        (directory / QMODEL_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory):
        """The Q-model written by `save_pretrained`, exactly (weights, heads, stage), on the CPU."""
        directory = Path(directory)
        require_directory(directory, "Q-model directory")
        if not (directory / QMODEL_FILE).is_file() and (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} has no {QMODEL_FILE} but a config.json: it looks like a plain "
                                    "Hugging Face checkpoint; start from it with QModel.from_checkpoint")
        require_files(directory, (QMODEL_FILE, WEIGHTS_FILE), "a bcoder Q-model saved by QModel.save_pretrained")
        meta = json.loads((directory / QMODEL_FILE).read_text())
        with no_init_weights():  # every weight is overwritten by the strict load below
            ckpt = T5ForConditionalGeneration(T5Config.from_dict(meta["t5"]))
            ckpt.tie_weights()  # skipped with the initialisation; the saved file stores tied weights once
            model = cls(ckpt.to(getattr(torch, meta["dtype"])), QModelConfig(**meta["qmodel"]))
        ckpt.generation_config = GenerationConfig.from_dict(meta["generation"])
        load_model(model, directory / WEIGHTS_FILE, strict=True)
        return model

    # ----- stages -----

    def checkpoint_activations(self, enabled=True):
        """Activation checkpointing in the decoder the current stage trains (phi's or theta's): its
        layers' activations are recomputed in the backward instead of kept, which at CodeT5's shapes
        is most of a step's memory once the fused LM head has removed the logits."""
        decoder = self.phi_decoder if self.stage == "phi" else self.theta_decoder
        if enabled:
            decoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif decoder.is_activation_checkpointing:
            decoder.activation_checkpointing_disable()
        return self

    def trainable_parameters(self, stage=None):
        """The parameters `stage` (default: the current one) trains, each once (a tied LM head and
        embedding are one parameter): what to hand the optimizer."""
        stage = stage or self.stage
        if stage not in Q_STAGES:
            raise ValueError(f"stage must be one of {Q_STAGES}, got {stage!r}")
        unique = {}
        for name in TRAINABLE[stage]:
            if not hasattr(self, name):
                raise ValueError(f'stage "{stage}" needs {name}, which the "without initialization" ablation lacks')
            unique.update((id(p), p) for p in getattr(self, name).parameters())
        return list(unique.values())

    def train(self, mode=True):
        """Only the current stage's modules train (dropout on); frozen ones stay in eval mode."""
        self.training = mode
        for name, child in self.named_children():
            child.train(mode and name in TRAINABLE[self.stage])
        return self

    # ----- teacher-forced forward -----

    @property
    def encoder(self):
        """The shared frozen encoder (theta_ckpt's)."""
        return self.ckpt.encoder

    @property
    def lm_head_weight(self):
        """[V, H] weight of the stage's LM head (theta's; theta_ckpt's in the phi-stage)."""
        return (self.theta_lm_head if self.stage == "theta" else self.ckpt.lm_head).weight

    @property
    def ckpt_lm_head_weight(self):
        """[V, H] weight of theta_ckpt's frozen LM head."""
        return self.ckpt.lm_head.weight

    @property
    def output_scale(self):
        """T5 scales the decoder output by d_model^-0.5 before a tied LM head (v1.1 checkpoints do not)."""
        config = self.ckpt.config
        return config.d_model ** -0.5 if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings) else 1.0

    def forward(self, prompt_ids, prompt_mask, programs, return_logits=True, return_hidden=False, head=None):
        """prompt_ids, prompt_mask [B, S]; programs [B, T] token ids a_0..a_T (right-padded, any pad).
        Returns a QModelOutput, or head(output, self) when `head` is given.

        The decoders read the programs shifted right behind the decoder start token, so position t
        is s_t = (prompt, a_<t) and predicts a_t, the convention of bellman_loss. The encoder runs
        once and feeds every decoder. return_logits=False skips the [B, T, V] logits (for the fused
        LM-head loss, which takes return_hidden=True's hidden states and the LM-head weights).
        `head` runs that loss inside forward, where a DDP or FSDP2 wrapper has the LM-head weights
        in place (FSDP2 gathers a module's parameters only during its forward).
        """
        output = self._outputs(prompt_ids, prompt_mask, programs, return_logits, return_hidden)
        return output if head is None else head(output, self)

    def _outputs(self, prompt_ids, prompt_mask, programs, return_logits, return_hidden) -> QModelOutput:
        if not (return_logits or return_hidden):
            raise ValueError("nothing to return: ask for return_logits and/or return_hidden")
        with torch.no_grad():
            encoded = self.encoder(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state
            decoder_input = self.ckpt._shift_right(programs)

            def decode(decoder):  # in the grad mode of its caller: the trained decoder runs outside no_grad
                return decoder(input_ids=decoder_input, encoder_hidden_states=encoded,
                               encoder_attention_mask=prompt_mask, use_cache=False).last_hidden_state

            ckpt_hidden = decode(self.ckpt.decoder) * self.output_scale
            ckpt_logits = self.ckpt.lm_head(ckpt_hidden) if return_logits else None
            if self.stage == "theta" and self.config.init_value_from_phi:
                u_phi = self.phi_value_head(decode(self.phi_decoder))  # phi is frozen in the theta-stage
        ckpt_hidden = ckpt_hidden if return_hidden else None
        if self.stage == "phi":
            values = self.phi_value_head(decode(self.phi_decoder))
            return QModelOutput(values, ckpt_logits, ckpt_logits, ckpt_hidden, ckpt_hidden)

        theta_state = decode(self.theta_decoder)
        values, residual = self.h1(theta_state), None
        if self.config.init_value_from_phi:
            values, residual = u_phi, values - self.h2(theta_state)   # exactly 0 while h1 == h2
        hidden = theta_state * self.output_scale
        logits = self.theta_lm_head(hidden) if return_logits else None
        return QModelOutput(values, logits, ckpt_logits, hidden if return_hidden else None, ckpt_hidden, residual)

    # ----- sampling -----

    def policy_model(self, policy="theta") -> T5ForConditionalGeneration:
        """A T5ForConditionalGeneration over this model's weights (no copy): "theta" is the shared encoder
        with theta's decoder and LM head, "ckpt" is theta_ckpt itself. Its softmax(logits) is the B-Coder
        policy (docs/method.md#the-q-function), so HF `generate` on it samples B-Coder. Train/eval modes are those
        of the shared modules."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if policy == "ckpt":
            return self.ckpt
        with torch.device("meta"):  # a shell: every submodule is replaced by a shared one below
            view = T5ForConditionalGeneration(self.ckpt.config)
        view.shared, view.encoder = self.theta_decoder.embed_tokens, self.ckpt.encoder
        view.decoder, view.lm_head = self.theta_decoder, self.theta_lm_head
        view.generation_config = copy.deepcopy(self.ckpt.generation_config)
        view.training = self.theta_decoder.training
        return view


def load_t5_checkpoint(directory, dtype):
    """T5ForConditionalGeneration.from_pretrained(directory), local files only, after checks that name
    what is wrong."""
    require_directory(directory, "checkpoint directory")
    if (directory / QMODEL_FILE).is_file():
        raise ValueError(f"{directory} holds a saved bcoder Q-model, not a plain T5 checkpoint: "
                         "load it with QModel.from_pretrained")
    require_files(directory, ("config.json",), "a Hugging Face checkpoint directory")
    hf_config = json.loads((directory / "config.json").read_text())
    if hf_config.get("model_type") != "t5":
        architectures = ", ".join(hf_config.get("architectures") or ["unknown architecture"])
        raise ValueError(f"{directory} holds a {hf_config.get('model_type')!r} model ({architectures}); B-Coder "
                         "needs a T5 / CodeT5 encoder-decoder (model_type 't5', T5ForConditionalGeneration); "
                         "a decoder-only model takes bcoder.models.CausalQModel")
    if not any((directory / name).is_file() for name in HF_WEIGHT_FILES):
        found = sorted(p.name for p in directory.iterdir())
        raise FileNotFoundError(f"{directory} has a T5 config but no weights: expected one of {HF_WEIGHT_FILES} "
                                f"(found: {found})")
    return T5ForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
