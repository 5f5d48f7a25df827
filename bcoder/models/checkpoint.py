"""theta_ckpt and what is built on it: `Checkpoint` reads a checkpoint directory once, decides once
whether it holds a T5 encoder-decoder or a decoder-only causal LM, and builds, saves and loads the
Q-models over it with their tokenizer; `new_checkpoint` is the model sft trains from scratch.
"""
import json
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from bcoder.models.causal import CausalQModel, CausalQModelConfig, load_causal_checkpoint
from bcoder.models.t5 import QModel, QModelConfig, load_t5_checkpoint


class CheckpointError(ValueError):
    """A checkpoint directory that cannot serve: the message names it and what is wrong."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json", "tokenizer.model")


def is_causal(model_config):
    """Whether a Hugging Face model config is a decoder-only causal LM (else it must be T5)."""
    return model_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not model_config.is_encoder_decoder


class Checkpoint:
    """theta_ckpt's directory. `architecture` says what it will hold while it is still empty (before sft
    writes it); once it holds a model, its config.json says, read here once."""

    def __init__(self, directory, architecture="t5"):
        self.directory = Path(directory)
        if (self.directory / "config.json").is_file():
            self.causal = is_causal(AutoConfig.from_pretrained(self.directory))
        else:
            self.causal = architecture != "t5"

    def load(self):
        """theta_ckpt, a T5ForConditionalGeneration or a causal LM; CheckpointError naming what is wrong with its
        directory."""
        load = load_causal_checkpoint if self.causal else load_t5_checkpoint
        try:
            return load(self.directory, None)
        except (OSError, ValueError) as error:
            raise CheckpointError(str(error)) from None

    def tokenizer(self):
        """The tokenizer saved beside the model; CheckpointError when there is none."""
        return tokenizer_in(self.directory)

    def q_model_config(self, model, stage):
        """The Q-model config of `stage` from the run's model section: a QModelConfig for T5, a
        CausalQModelConfig (adapter, LoRA, share_prompt) for a causal LM."""
        common = {"stage": stage, "init_value_from_phi": model.init_value_from_phi}
        if not self.causal:
            return QModelConfig(**common)
        return CausalQModelConfig(**common, adapter="none" if model.adapter == "none" else "lora",
                                  lora_rank=model.lora_rank, lora_alpha=model.lora_alpha,
                                  lora_targets=model.lora_targets, share_prompt=model.share_prompt)

    def new_q_model(self, model, stage):
        """A fresh Q-model for `stage` over theta_ckpt (model: the run's model section)."""
        model_class = CausalQModel if self.causal else QModel
        return model_class.from_checkpoint(self.load(), self.q_model_config(model, stage))

    def load_q_model(self, directory):
        """The Q-model saved in `directory` (a run's phi/ or theta/); a causal one over theta_ckpt."""
        try:
            if self.causal:
                return CausalQModel.from_pretrained(directory, self.load())
            return QModel.from_pretrained(directory)
        except (OSError, ValueError) as error:
            raise CheckpointError(str(error)) from None


def check_checkpoint(directory):
    """CheckpointError unless `directory` (--model) holds the config of a T5 or decoder-only causal LM and the
    tokenizer of its vocabulary; whether it is causal. Reads no weights."""
    if not directory.is_dir():
        raise CheckpointError(f"--model {directory}: no such directory")
    try:
        model_config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"--model {directory}: no model config there ({error})") from None
    if model_config.model_type != "t5" and not is_causal(model_config):
        raise CheckpointError(f"--model {directory}: a {model_config.model_type!r} model; B-Coder here needs a T5 "
                            f"encoder-decoder (CodeT5) or a decoder-only causal LM (Llama, Qwen2, GPT-2 families)")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"--model {directory}: no tokenizer files there (one of {', '.join(TOKENIZER_FILES)})")
    tokenizer = tokenizer_in(directory)
    # A model's vocabulary may be padded a little past its tokenizer's (T5: 32128 for 32100 tokens, Qwen2.5:
    # 151936 for 151665, DeepSeek-Coder: 32256 for 32022), never short of it.
    if not len(tokenizer) <= model_config.vocab_size <= len(tokenizer) + max(128, len(tokenizer) // 100):
        raise CheckpointError(f"--model {directory}: its tokenizer has {len(tokenizer)} tokens but the model's "
                            f"vocabulary is {model_config.vocab_size}: the tokenizer files are missing or another "
                            f"model's")
    return is_causal(model_config)


def tokenizer_in(directory):
    """The tokenizer saved in a checkpoint directory; CheckpointError when there is none."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: the checkpoint directory (--model, or the run's ckpt/) does not exist")
    try:
        # A generic tokenizer (bcoder's local one) loads as itself: AutoTokenizer would pick the model type's
        # class from config.json (Qwen2Tokenizer for a qwen2 model), which re-tokenizes with its own rules.
        saved = json.loads((directory / "tokenizer_config.json").read_text()) \
            if (directory / "tokenizer_config.json").is_file() else {}
        generic = saved.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
        tokenizer = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{directory}: no tokenizer beside the model ({error})") from None
    if tokenizer.pad_token is None:   # Llama-style tokenizers have none; every mask here is explicit
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def new_checkpoint(model, tokenizer, max_positions):
    """(theta_ckpt's class, its config) for sft: a T5 or a decoder-only model of the model section's size,
    over `tokenizer`'s vocabulary; a decoder-only one attends over `max_positions` (prompt and program)."""
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if model.architecture == "t5":
        return T5ForConditionalGeneration, T5Config(
            vocab_size=len(tokenizer), d_model=model.d_model, d_ff=model.d_ff, d_kv=model.d_model // model.heads,
            num_layers=model.layers, num_heads=model.heads, dropout_rate=0.0, feed_forward_proj="relu",
            decoder_start_token_id=tokenizer.pad_token_id, **special)
    model_class, config_class = {"qwen2": (Qwen2ForCausalLM, Qwen2Config), "llama": (LlamaForCausalLM, LlamaConfig)}[
        model.architecture]
    return model_class, config_class(
        vocab_size=len(tokenizer), hidden_size=model.d_model, intermediate_size=model.d_ff,
        num_hidden_layers=model.layers, num_attention_heads=model.heads, num_key_value_heads=model.heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
        **special)
