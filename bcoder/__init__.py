"""bcoder: value-based deep RL for program synthesis (B-Coder, ICLR 2024).

Importing `bcoder` is cheap and does not import torch: the sandbox forks untrusted
programs from processes that must stay light. The loss API loads on first use.
"""

# public name -> the bcoder module defining it, imported on first access
_LAZY_API = {
    "bellman_loss": "loss",
    "token_rewards": "loss",
    "BellmanLoss": "loss",
    "BellmanLossOutput": "loss",
    "bellman_loss_from_hidden": "fused_head",
}

__all__ = list(_LAZY_API)


def __getattr__(name):
    if name in _LAZY_API:
        import importlib

        return getattr(importlib.import_module(f"bcoder.{_LAZY_API[name]}"), name)
    raise AttributeError(f"module 'bcoder' has no attribute {name!r}")
