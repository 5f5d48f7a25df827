"""B-Coder's dueling Q-model over a decoder-only causal LM (Llama, Qwen2, GPT-2 families; any
`AutoModelForCausalLM` whose logits are its LM head applied to its final hidden state).

The prompt and the program form one sequence; position t of the program is the state
s_t = (prompt, a_<t) and predicts a_t, as in the T5 model (bcoder.models.t5), and only program
positions enter the loss. The three parameter sets of docs/method.md#parameter-sets:

    theta_ckpt  the base model, frozen                       l_ckpt: the phi-stage advantage, the target argmax
    phi         base + adapter "phi" + value head u_phi       V_phi   = R_max - softabs(u_phi)
    theta       base + adapter "theta" + h1, h2 (h1's copy)   V_theta = R_max - softabs(u_phi + h1 - h2)

adapter "lora" (peft): phi and theta are LoRA adapters on ONE copy of the base weights, and theta_ckpt is
that base with the adapters switched off, so theta_ckpt costs no memory. A fresh adapter's B matrix is
zero, so at the start phi and theta compute the base's hidden states exactly and the identities of the T5
path hold: l_theta = l_ckpt, u^r = h1 - h2 = 0, Q_theta = Q_phi. theta keeps the base's LM head (LoRA
adapts the trunk's linear layers, not the output layer), so the fused LM-head loss reads one head weight.
adapter "none": phi is a full copy of the base's trunk and theta of the whole LM (small models).

share_prompt: the analogue of the paper's shared frozen encoder. The frozen base encodes the prompt ONCE
into a key/value cache that all three policies attend to; each runs only over the program tokens (and
the prompt's last token, whose output predicts a_0), so the adapters act on program tokens only and no
gradient flows through the prompt. Without it every policy runs the whole sequence and its adapter acts on
the prompt too. The two agree exactly while the adapters are zero (at the start of each stage) and differ
once they train, as a separate encoder would.

Value heads read the final hidden state (after the trunk's final norm); bcoder.models.ValueHead.
"""
import copy
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

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
from bcoder.sampling import left_pad

ADAPTERS = ("lora", "none")
HEADS_FILE, WEIGHTS_FILE = "value_heads.safetensors", "model.safetensors"
HEADS, COPIES = ("phi_value_head", "h1", "h2"), ("phi_trunk", "theta_lm")   # in HEADS_FILE and WEIGHTS_FILE
# Trained modules per (adapter, stage); LoRA's trained adapter weights are found by name.
TRAINED = {("lora", "phi"): ("phi_value_head",), ("lora", "theta"): ("h1",),
           ("none", "phi"): ("phi_trunk", "phi_value_head"), ("none", "theta"): ("theta_lm", "h1")}


@dataclass
class CausalQModelConfig(QModelConfig):
    """QModelConfig's fields, and: adapter "lora" or "none" (full copies); lora_rank, lora_alpha and
    lora_targets (peft's target_modules: "all-linear" or comma-separated module names); share_prompt (the
    prompt's key/value cache from the frozen base, shared by the three policies)."""
    adapter: str = "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: str = "all-linear"
    share_prompt: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise ValueError(f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank} and {self.lora_alpha}")

    def lora_config(self):
        from peft import LoraConfig

        targets = self.lora_targets if self.lora_targets == "all-linear" else self.lora_targets.split(",")
        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, target_modules=targets, lora_dropout=0.0)


class PromptLayer(DynamicLayer):
    """One layer's cached prompt keys and values, never changed: `update` returns them with the new
    tokens' appended but keeps only the prompt's, so a cache serves any number of forwards (and the
    recomputation of activation checkpointing)."""

    def __init__(self, keys, values):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def causal_inputs(prompt_ids, prompt_mask, programs):
    """(input_ids, attention_mask, position_ids) [B, S + T - 1] of the sequences prompt + a_0..a_{T-2}:
    each prompt moved to end at column S - 1 (left padding), so the output at column S - 1 + t is the
    state s_t and predicts a_t; positions count the real tokens only, so padding changes nothing."""
    if not bool(prompt_mask.any(dim=1).all()):
        raise ValueError("every prompt needs at least one token")
    left_ids, left_mask = left_pad(prompt_ids, prompt_mask, 0)
    ids = torch.cat([left_ids, programs[:, :-1]], dim=1)
    mask = torch.cat([left_mask, torch.ones_like(programs[:, :-1], dtype=torch.bool)], dim=1)
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask.long(), positions


def causal_lm_loss(model, prompt_ids, prompt_mask, programs, program_mask):
    """The mean cross-entropy of a causal LM on the program tokens given their prompts (sft)."""
    ids, mask, positions = causal_inputs(prompt_ids, prompt_mask, programs)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, prompt_ids.shape[1] - 1:]
    return nn.functional.cross_entropy(logits[program_mask].float(), programs[program_mask])


def trunk_of(lm):
    """The transformer under a causal LM's head (`lm.model`, `lm.transformer`, ...)."""
    return getattr(lm, lm.base_model_prefix)


class CausalQModel(QModelBase):
    """The dueling Q-model on a causal LM, with the T5 QModel's interface (forward, set_stage,
    trainable_parameters, policy_model, save_pretrained / from_pretrained, checkpoint_activations).

    Submodules: lm (adapter "lora": the peft model over the base, adapters "phi" and "theta"; "none": the
    frozen base), phi_trunk and theta_lm ("none" only), phi_value_head, h1, h2.
    """

    causal = True

    def __init__(self, base, config: CausalQModelConfig | None = None):
        """Wraps `base` (a causal LM, taken over and frozen in place) as theta_ckpt and adds phi and theta."""
        super().__init__()
        self.config = copy.deepcopy(config) if config is not None else CausalQModelConfig()
        if getattr(base.config, "is_encoder_decoder", False):
            raise ValueError(f"{type(base).__name__} is an encoder-decoder: use bcoder.models.QModel")
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(base.config, name, None):
                raise ValueError(f"{type(base).__name__} transforms its logits ({name}); the Q-model needs logits "
                                 "that are the LM head applied to the final hidden state")
        base.requires_grad_(False)
        width = base.config.get_text_config().hidden_size
        like = base.get_output_embeddings().weight
        head = lambda: ValueHead(width, self.config.value_head, self.config.value_head_width).to(like)
        adapters = ("phi", "theta") if self.config.init_value_from_phi else ("theta",)
        if self.config.adapter == "lora":
            from peft import get_peft_model

            with warnings.catch_warnings():   # peft asks transformers a deprecated question; not ours to answer
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                self.lm = get_peft_model(base, self.config.lora_config(), adapter_name=adapters[0])
                for name in adapters[1:]:
                    self.lm.add_adapter(name, self.config.lora_config())
        else:
            self.lm = base
            if self.config.init_value_from_phi:
                self.phi_trunk = copy.deepcopy(trunk_of(base))
            self.theta_lm = copy.deepcopy(base)   # the whole LM: a tied head stays tied to theta's embedding
        if self.config.init_value_from_phi:
            self.phi_value_head = head()
        self.h1 = head()
        if self.config.init_value_from_phi:
            self.h2 = copy.deepcopy(self.h1)
        self.set_stage(self.config.stage)

    # ----- building, saving, loading -----

    @classmethod
    def from_checkpoint(cls, checkpoint, config: CausalQModelConfig | None = None, dtype=None):
        """A fresh Q-model over a causal LM: a local directory or a loaded model (taken over, frozen)."""
        if not isinstance(checkpoint, nn.Module):
            checkpoint = load_causal_checkpoint(Path(checkpoint), dtype)
        elif dtype is not None:
            checkpoint = checkpoint.to(dtype)
        return cls(checkpoint, config)

    def _parts(self, names):
        """The named submodules this model has, as one module (what a weights file holds)."""
        return nn.ModuleDict({name: getattr(self, name) for name in names if hasattr(self, name)})

    @property
    def base(self):
        """theta_ckpt's LM (with LoRA: the base model, adapters injected)."""
        return self.lm.get_base_model() if self.config.adapter == "lora" else self.lm

    def save_pretrained(self, directory):
        """Writes bcoder_qmodel.json (this config, the base's config, generation config and dtype) and
        value_heads.safetensors; with LoRA, each adapter in peft's format (phi/ and theta/, each an
        adapter_config.json and adapter_model.safetensors that `PeftModel.from_pretrained(base, "DIR/theta")`
        loads), else model.safetensors with phi's trunk and theta's LM. The base's weights stay where they
        are (from_pretrained takes them from the base directory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = self.base
        meta = {"qmodel": asdict(self.config), "causal": True, "base": base.config.to_dict(),
                "generation": base.generation_config.to_dict(), "dtype": str(base.dtype).removeprefix("torch.")}
        (directory / QMODEL_FILE).write_text(json.dumps(meta, indent=2))
        save_model(self._parts(HEADS), str(directory / HEADS_FILE))
        if self.config.adapter == "lora":
            self.lm.save_pretrained(directory)
        else:
            save_model(self._parts(COPIES), str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory, base):
        """The Q-model written by `save_pretrained`, on `base` (theta_ckpt's directory or loaded model)."""
        directory = Path(directory)
        require_directory(directory, "Q-model directory")
        require_files(directory, (QMODEL_FILE, HEADS_FILE), "a bcoder causal Q-model saved by save_pretrained")
        meta = json.loads((directory / QMODEL_FILE).read_text())
        if not meta.get("causal"):
            raise ValueError(f"{directory} holds a T5 Q-model: load it with bcoder.models.QModel.from_pretrained")
        config = CausalQModelConfig(**meta["qmodel"])
        model = cls.from_checkpoint(base, config, dtype=getattr(torch, meta["dtype"]))
        saved, loaded = meta["base"], model.base.config.to_dict()
        differ = [k for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers")
                  if saved.get(k) != loaded.get(k)]
        if differ:
            raise ValueError(f"{directory} was trained on another base model: {', '.join(differ)} differ")
        load_model(model._parts(HEADS), directory / HEADS_FILE, strict=True)
        if config.adapter == "lora":
            from peft import set_peft_model_state_dict

            for name in model.lm.peft_config:
                require_files(directory / name, ("adapter_model.safetensors",), f"adapter {name!r}")
                result = set_peft_model_state_dict(model.lm, load_file(directory / name / "adapter_model.safetensors"),
                                                   adapter_name=name)
                if result.unexpected_keys:
                    raise ValueError(f"{directory / name}: weights the model lacks: {result.unexpected_keys[:3]}")
        else:
            load_model(model._parts(COPIES), directory / WEIGHTS_FILE, strict=True)
        model.base.generation_config = GenerationConfig.from_dict(meta["generation"])
        return model.set_stage(config.stage)

    # ----- stages -----

    def trainable_parameters(self, stage=None):
        """The parameters `stage` (default: the current one) trains, each once."""
        stage = stage or self.stage
        if stage not in Q_STAGES:
            raise ValueError(f"stage must be one of {Q_STAGES}, got {stage!r}")
        if stage == "phi" and not self.config.init_value_from_phi:
            raise ValueError('stage "phi" needs phi, which the "without initialization" ablation lacks')
        unique = {}
        for name in TRAINED[self.config.adapter, stage]:
            unique.update((id(p), p) for p in getattr(self, name).parameters())
        if self.config.adapter == "lora":
            unique.update((id(p), p) for name, p in self.lm.named_parameters()
                          if "lora_" in name and stage in name.split("."))
        return list(unique.values())

    def train(self, mode=True):
        """The trained modules in training mode; the frozen policies run in eval mode whatever this says."""
        self.training = mode
        for name, child in self.named_children():
            child.train(mode and (name in TRAINED[self.config.adapter, self.stage] or
                                  (name == "lm" and self.config.adapter == "lora")))
        return self

    def checkpoint_activations(self, enabled=True):
        """Activation checkpointing in the trunk the stage trains (with LoRA, the shared one): its layers'
        activations are recomputed in the backward instead of kept."""
        if self.config.adapter == "lora":
            module = self.base
        else:
            module = self.theta_lm if self.stage == "theta" else self.phi_trunk
        if enabled:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            # The shared prompt cache is only read (PromptLayer never stores), so the recomputation sees the
            # same keys and values: the layers may keep it under checkpointing.
            for layer in module.modules():
                if isinstance(layer, GradientCheckpointingLayer):
                    layer._can_checkpoint_with_cache = True
        elif module.is_activation_checkpointing:
            module.activation_checkpointing_disable()
        return self

    # ----- teacher-forced forward -----

    @property
    def lm_head_weight(self):
        """[V, H] weight of the stage's LM head (theta's; with LoRA and in the phi-stage, the base's)."""
        lm = self.theta_lm if self.config.adapter == "none" and self.stage == "theta" else self.base
        return lm.get_output_embeddings().weight

    @property
    def ckpt_lm_head_weight(self):
        return self.base.get_output_embeddings().weight

    def _route(self, policy):
        """With LoRA: the shared layers compute `policy` (adapters off for "ckpt"). Set on each LoRA layer
        directly: peft's own switches also change which parameters require gradients."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if "_lora_layers" not in self.__dict__:
            self.__dict__["_lora_layers"] = [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self.__dict__["_lora_layers"]:
            layer._disable_adapters = policy == "ckpt"
            if policy != "ckpt":
                layer._active_adapter = [policy]

    def _trunk(self, policy):
        """The transformer computing `policy` ("ckpt", "phi" or "theta")."""
        if self.config.adapter == "lora":
            self._route(policy)
            return trunk_of(self.base)
        return {"ckpt": trunk_of(self.lm), "phi": getattr(self, "phi_trunk", None),
                "theta": trunk_of(self.theta_lm) if hasattr(self, "theta_lm") else None}[policy]

    def forward(self, prompt_ids, prompt_mask, programs, return_logits=True, return_hidden=False, head=None):
        """prompt_ids, prompt_mask [B, S] (right-padded); programs [B, T] a_0..a_T. Returns the T5 model's
        QModelOutput (position t: s_t, predicting a_t), or head(output, self) when `head` is given."""
        output = self._outputs(prompt_ids, prompt_mask, programs, return_logits, return_hidden)
        return output if head is None else head(output, self)

    def _outputs(self, prompt_ids, prompt_mask, programs, return_logits, return_hidden) -> QModelOutput:
        if not (return_logits or return_hidden):
            raise ValueError("nothing to return: ask for return_logits and/or return_hidden")
        ids, mask, positions = causal_inputs(prompt_ids, prompt_mask, programs)
        start = prompt_ids.shape[1] - 1     # the column of s_0
        trained = self.stage

        def hidden(policy):  # in the grad mode of its caller
            trunk = self._trunk(policy)
            was_training = trunk.training
            trunk.train(was_training and policy == trained)
            try:
                if cache is None:
                    return trunk(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 use_cache=False).last_hidden_state[:, start:]
                prompt_cache = DynamicCache()
                prompt_cache.layers = [PromptLayer(k, v) for k, v in cache]
                return trunk(input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[:, start:],
                             cache=prompt_cache, use_cache=False).last_hidden_state
            finally:
                trunk.train(was_training)

        with torch.no_grad():
            cache = None
            if self.config.share_prompt and start > 0:
                cache = self.encode_prompts(ids[:, :start], mask[:, :start], positions[:, :start])
            ckpt_hidden = hidden("ckpt")
            ckpt_logits = self.base.get_output_embeddings()(ckpt_hidden) if return_logits else None
            if trained == "theta" and self.config.init_value_from_phi:
                u_phi = self.phi_value_head(hidden("phi"))
        ckpt_hidden_out = ckpt_hidden if return_hidden else None
        if trained == "phi":
            values = self.phi_value_head(hidden("phi"))
            return QModelOutput(values, ckpt_logits, ckpt_logits, ckpt_hidden_out, ckpt_hidden_out)
        theta_state = hidden("theta")
        values, residual = self.h1(theta_state), None
        if self.config.init_value_from_phi:
            values, residual = u_phi, values - self.h2(theta_state)   # exactly 0 while h1 == h2
        head_module = (self.theta_lm if self.config.adapter == "none" else self.base).get_output_embeddings()
        logits = head_module(theta_state) if return_logits else None
        return QModelOutput(values, logits, ckpt_logits, theta_state if return_hidden else None, ckpt_hidden_out,
                            residual)

    # ----- sampling -----

    def policy_model(self, policy="theta"):
        """A generate-able model of `policy` ("theta" or "ckpt") over this model's weights: theta_ckpt is the
        base LM; theta is theta's LM, or with share_prompt a SharedPromptPolicy, whose prompts the base
        encodes as in training. With LoRA the shared base is routed to the policy until the Q-model routes
        it again (its next forward or policy_model call): generate from it before either."""
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if self.config.adapter == "lora":
            self._route(policy)
        lm = self.theta_lm if self.config.adapter == "none" and policy == "theta" else self.base
        if policy == "theta" and self.config.share_prompt:
            return SharedPromptPolicy(self, lm)
        return lm

    def encode_prompts(self, input_ids, attention_mask, position_ids):
        """The frozen base's key/value cache of left-padded prompts, [(keys, values)] per layer."""
        trunk = self._trunk("ckpt")
        was_training = trunk.training
        trunk.eval()
        with torch.no_grad():
            cache = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=True).cache
        trunk.train(was_training)
        return [(layer.keys, layer.values) for layer in cache.layers]


class SharedPromptPolicy:
    """theta's policy as the share_prompt Q-model computes it, for sampling: the base encodes each prompt
    but its last token, theta continues from there (the last prompt token, then its own tokens).
    `generate` takes Hugging Face generate's arguments, with left-padded prompts."""

    def __init__(self, qmodel, lm):
        self.qmodel, self.lm = qmodel, lm

    @property
    def config(self):
        return self.lm.config

    def parameters(self):
        return self.lm.parameters()

    def eval(self):
        self.qmodel.eval()
        return self

    def generate(self, input_ids, attention_mask, num_return_sequences=1, **kwargs):
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        if input_ids.shape[1] < 2:
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        prompt = self.qmodel.encode_prompts(input_ids[:, :-1], attention_mask[:, :-1], positions[:, :-1])
        if self.qmodel.config.adapter == "lora":
            self.qmodel._route("theta")
        cache = DynamicCache()
        for index, (keys, values) in enumerate(prompt):
            cache.update(keys, values, index)
        return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)


CAUSAL_TYPES_HINT = "a decoder-only AutoModelForCausalLM (Llama, Qwen2, GPT-2 families)"


def load_causal_checkpoint(directory, dtype=None):
    """AutoModelForCausalLM.from_pretrained(directory), local files only, after checks that name what is wrong."""
    require_directory(directory, "checkpoint directory")
    if (directory / QMODEL_FILE).is_file():
        raise ValueError(f"{directory} holds a saved bcoder Q-model, not a base checkpoint")
    require_files(directory, ("config.json",), "a Hugging Face checkpoint directory")
    config = AutoConfig.from_pretrained(directory)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{directory} holds an encoder-decoder ({config.model_type}), not {CAUSAL_TYPES_HINT}")
    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
