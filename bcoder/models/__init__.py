"""The Q-models: the interface they share (base), B-Coder's dueling Q-model over a T5 encoder-decoder (t5)
and over a decoder-only causal LM with LoRA adapters (causal), the checkpoint they are built on and the
builder that reads it once (checkpoint), and their loss on a batch (q_loss)."""
from bcoder.models.base import QModelBase, QModelConfig, QModelOutput, ValueHead, program_mask
from bcoder.models.causal import CausalQModel, CausalQModelConfig
from bcoder.models.checkpoint import Checkpoint, CheckpointError, check_checkpoint, new_checkpoint, tokenizer_in
from bcoder.models.q_loss import q_loss
from bcoder.models.t5 import QModel

__all__ = ["CausalQModel", "CausalQModelConfig", "Checkpoint", "CheckpointError", "QModel", "QModelBase",
           "QModelConfig", "QModelOutput", "ValueHead", "check_checkpoint", "new_checkpoint", "program_mask", "q_loss",
           "tokenizer_in"]
