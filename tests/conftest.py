import secrets

import pytest
import torch


def make_batch(batch, steps, vocab, dtype=torch.float32, lengths=None, ground_truth=None, scale=3.0,
               offset=0.0, generator=None, requires_grad=True):
    """Random inputs of bellman_loss: logits, ckpt_logits, values, actions, mask, rewards, is_ground_truth."""
    g = generator
    logits = (torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    ckpt = (torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64) * scale + offset).to(dtype)
    values = torch.randn(batch, steps, generator=g, dtype=torch.float64).to(dtype)
    actions = torch.randint(0, vocab, (batch, steps), generator=g)
    if lengths is None:
        lengths = torch.randint(1, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps) < torch.as_tensor(lengths).unsqueeze(1)
    rewards = torch.tensor([-1.0, -0.6, -0.3, 1.0], dtype=torch.float64)[torch.randint(0, 4, (batch,), generator=g)].to(dtype)
    if ground_truth is None:
        ground_truth = torch.rand(batch, generator=g) < 0.5
    is_ground_truth = torch.as_tensor(ground_truth, dtype=torch.bool).expand(batch).clone()
    logits.requires_grad_(requires_grad)
    values.requires_grad_(requires_grad)
    return logits, ckpt, values, actions, mask, rewards, is_ground_truth


@pytest.fixture
def generator():
    """Fresh random inputs in every run; the seed is printed (shown on failure) to replay a case."""
    seed = secrets.randbits(31)
    print(f"generator seed: {seed}")
    return torch.Generator().manual_seed(seed)
