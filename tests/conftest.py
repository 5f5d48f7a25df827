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


def assert_same_values(actual, expected):
    """Exact equality (NaN == NaN, inf == inf), after promoting both to float64."""
    torch.testing.assert_close(actual.double(), expected.double(), rtol=0, atol=0, equal_nan=True)


def assert_error_within_reference(actual, same_dtype_reference, oracle, dtype):
    """|actual - oracle| <= |same-dtype reference - oracle| + one ulp of `dtype` + 1e-6 (elementwise);
    non-finite oracle entries must be matched exactly."""
    actual, same_dtype_reference, oracle = actual.double(), same_dtype_reference.double(), oracle.double()
    finite = torch.isfinite(oracle)
    assert_same_values(actual[~finite], oracle[~finite])
    eps, floor = (1e-13, 1e-13) if dtype == torch.float64 else (torch.finfo(dtype).eps, 1e-6)
    allowed = (same_dtype_reference - oracle).abs() + eps * oracle.abs() + floor
    excess = ((actual - oracle).abs() - allowed)[finite]
    assert excess.numel() == 0 or excess.max() <= 0, f"error exceeds the reference's by {excess.max().item()}"


def assert_cuda_graph_replays(step, refill):
    """Captures step() in a CUDA graph (after a warm-up outside the capture: allocator pools, lazy
    module loading, kernel compilation), refills its static inputs with refill(), replays, and
    checks the captured outputs equal a fresh eager step() on the new inputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    refill()
    graph.replay()
    for got, expected in zip(captured, step()):
        assert torch.equal(got, expected)
