"""bcoder: value-based deep RL for program synthesis (B-Coder, ICLR 2024).

Importing `bcoder` is cheap and does not import torch: the sandbox forks untrusted
programs from processes that must stay light. The loss API loads on first use.
"""

_LOSS_API = ("bellman_loss", "token_rewards", "BellmanLoss", "BellmanLossOutput")

__all__ = list(_LOSS_API)


def __getattr__(name):
    if name in _LOSS_API:
        from bcoder import loss

        return getattr(loss, name)
    raise AttributeError(f"module 'bcoder' has no attribute {name!r}")
