"""What every benchmark in bench/ shares: one input builder, one bandwidth floor, one timer.

Inputs (`make_loss_inputs`, `make_hidden_inputs`, `make_labels`): a theta-stage batch of B
programs of T positions over a vocabulary of V, from a seeded generator on the target device:

    logits, ckpt_logits  [B, T, V]  N(0, scale^2), drawn in float32 and cast to dtype
    values               [B, T]     N(0, 1) in dtype (the raw value-head output u)
    actions              [B, T]     uniform in [0, V)
    mask                 [B, T]     every position real (min_length=None), or lengths uniform in
                                    [min_length, T] (ragged, right-padded)
    rewards              [B]        the sandbox's outcome rewards in turn (REWARDS: passed 1,
                                    failed -0.3, runtime error -0.6, compile error -1)
    is_ground_truth      [B]        round(B f) of the programs for a fraction f, evenly spread
                                    from program 0 (f = 0.5: the even ones), whose real rows
                                    take the dense cross-entropy gradient

They come as named tuples in the order of the functions' parameters, so `fn(*inputs)` and
`fn(**inputs._asdict())` both call `bcoder.bellman_loss` / `bcoder.bellman_loss_from_hidden`.

The bandwidth floor (`floor_bytes`, `copy_bandwidth`; docs/method.md#the-fused-op): the fewest
bytes a pass of the fused op must move, over the bandwidth of a large copy (read + write)
measured in the same run. With N = B T rows, R of them real (padding rows are not read), D real
rows of ground-truth programs (dense gradient) and s bytes per logit:

    forward          read logits and ckpt_logits of the real rows      2 R V s
    backward         write the whole gradient, read the dense rows     (N + D) V s
    forward+backward read both once, write the gradient once           (2 R + N) V s

(without ckpt_logits the forward reads one tensor: R V s). With every row real this is 3 N V s
for a forward+backward. The in-place backward writes the same bytes over the logits.
"""
import statistics
import time
from typing import NamedTuple

import torch

from bcoder.sandbox.schema import REWARDS


class Labels(NamedTuple):
    values: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    is_ground_truth: torch.Tensor


class LossInputs(NamedTuple):
    """The positional arguments of bcoder.bellman_loss (and bcoder.reference.bellman_loss), in order.
    The tests use this one too (tests/conftest.py: make_batch builds it, loss_kwargs passes it by name)."""
    logits: torch.Tensor
    ckpt_logits: torch.Tensor
    values: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    is_ground_truth: torch.Tensor


class HiddenInputs(NamedTuple):
    """The positional arguments of bcoder.bellman_loss_from_hidden."""
    hidden: torch.Tensor
    lm_head_weight: torch.Tensor
    ckpt_hidden: torch.Tensor
    ckpt_lm_head_weight: torch.Tensor
    values: torch.Tensor
    actions: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor
    is_ground_truth: torch.Tensor


def generator(device="cpu", seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def make_labels(programs, steps, vocab, dtype=torch.float32, device="cpu", ground_truth_fraction=0.5,
                min_length=None, requires_grad=True, gen=None):
    """values, actions, mask, rewards, is_ground_truth of a batch (see the module's docstring)."""
    gen = generator(device) if gen is None else gen
    values = torch.randn(programs, steps, generator=gen, device=device).to(dtype).requires_grad_(requires_grad)
    actions = torch.randint(0, vocab, (programs, steps), generator=gen, device=device)
    if min_length is None:
        mask = torch.ones(programs, steps, dtype=torch.bool, device=device)
    else:
        lengths = torch.randint(min_length, steps + 1, (programs,), generator=gen, device=device)
        mask = torch.arange(steps, device=device) < lengths.unsqueeze(1)
    rewards = torch.tensor(list(REWARDS.values()), device=device).repeat(programs // 4 + 1)[:programs].to(dtype)
    # c = round(B f) programs, evenly spread from program 0: b is one when b c mod B < c
    # (f = 1/2: the even programs; 1/4: every fourth)
    count = round(programs * ground_truth_fraction)
    is_ground_truth = (torch.arange(programs, device=device) * count) % programs < count
    return Labels(values, actions, mask, rewards, is_ground_truth)


def make_loss_inputs(programs, steps, vocab, dtype=torch.float32, device="cpu", ground_truth_fraction=0.5,
                     min_length=None, scale=3.0, seed=0, requires_grad=True):
    """LossInputs of a batch of `programs` x `steps` rows; logits and values require grad."""
    gen = generator(device, seed)
    logits = (torch.randn(programs, steps, vocab, generator=gen, device=device) * scale).to(dtype)
    ckpt_logits = (torch.randn(programs, steps, vocab, generator=gen, device=device) * scale).to(dtype)
    labels = make_labels(programs, steps, vocab, dtype, device, ground_truth_fraction, min_length,
                         requires_grad, gen)
    return LossInputs(logits.requires_grad_(requires_grad), ckpt_logits, *labels)


def make_hidden_inputs(programs, steps, hidden_size, vocab, dtype=torch.float32, device="cpu",
                       ground_truth_fraction=0.5, min_length=None, seed=0, requires_grad=True, exact=False):
    """HiddenInputs: hidden [B, T, H], lm_head_weight [V, H] (both trained), the checkpoint's
    hidden states and weight near them (frozen), and the labels as in make_labels.

    Gaussian by default (hidden N(0, 1), weights N(0, 1/H)). exact=True puts them on a grid instead
    (hidden in {-2..2}, weights in {-1, -1/2, 0, 1/2, 1}, the checkpoint's one grid step away), so
    that every logit is a multiple of 1/2 computed exactly in any summation order (float32
    accumulation while 9 H < 2^24): a chunked matmul, a full one and a float64 oracle then
    see the same logits and pick the same argmax, which rounding could otherwise move."""
    gen = generator(device, seed)

    def grid(*shape, low=-2, high=2):
        return torch.randint(low, high + 1, shape, generator=gen, device=device).float()

    if exact:
        hidden = grid(programs, steps, hidden_size)
        weight = grid(vocab, hidden_size) / 2
        ckpt_hidden = hidden + grid(*hidden.shape, low=-1, high=1)
        ckpt_weight = weight + grid(*weight.shape, low=-1, high=1) / 2
    else:
        hidden = torch.randn(programs, steps, hidden_size, generator=gen, device=device)
        weight = torch.randn(vocab, hidden_size, generator=gen, device=device) / hidden_size**0.5
        ckpt_hidden = hidden + 0.1 * torch.randn(hidden.shape, generator=gen, device=device)
        ckpt_weight = weight + 0.01 * torch.randn(weight.shape, generator=gen, device=device)
    labels = make_labels(programs, steps, vocab, dtype, device, ground_truth_fraction, min_length,
                         requires_grad, gen)
    return HiddenInputs(hidden.to(dtype).requires_grad_(requires_grad), weight.to(dtype).requires_grad_(requires_grad),
                        ckpt_hidden.to(dtype), ckpt_weight.to(dtype), *labels)


def logits_then_loss(inputs, backend="auto", **options):
    """The loss of HiddenInputs the unfused way: logits = hidden @ W.T, ckpt_logits under no_grad,
    then bcoder.bellman_loss. Returns its BellmanLossOutput."""
    import bcoder

    logits = inputs.hidden @ inputs.lm_head_weight.T
    with torch.no_grad():
        ckpt_logits = inputs.ckpt_hidden @ inputs.ckpt_lm_head_weight.T
    return bcoder.bellman_loss(logits, ckpt_logits, *inputs[4:], backend=backend, **options)


def floor_bytes(inputs, which="fwd+bwd"):
    """The fewest bytes a pass of the fused op moves on LossInputs: which = "forward", "backward"
    or "fwd+bwd" (see the module's docstring)."""
    batch, steps, vocab = inputs.logits.shape
    row_bytes = vocab * inputs.logits.element_size()
    real = int(inputs.mask.sum())
    dense = int((inputs.mask & inputs.is_ground_truth.unsqueeze(1)).sum())
    read = (1 if inputs.ckpt_logits is None else 2) * real
    rows = {"forward": read, "backward": batch * steps + dense, "fwd+bwd": read + batch * steps}
    if which not in rows:
        raise ValueError(f"which must be one of {tuple(rows)}, got {which!r}")
    return rows[which] * row_bytes


def median_ms(fn, device="cpu", repeats=5, warmup=1):
    """Median milliseconds of fn(): triton.testing.do_bench (L2 flushed between runs) on CUDA,
    wall clock of `repeats` runs after `warmup` untimed ones elsewhere."""
    if torch.device(device).type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth(device="cpu", nbytes=None):
    """Bytes per second of a large copy_ on `device`, read + write counted (2 nbytes per copy):
    the practical ceiling of a memory-bound kernel. nbytes: 256 MiB on CPU, 2 GiB on CUDA."""
    if nbytes is None:
        nbytes = (2 << 30) if torch.device(device).type == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    return 2 * nbytes / (median_ms(lambda: dst.copy_(src), device) * 1e-3)


def resident_bytes(field="VmRSS"):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss():
    """Resets the process's peak resident set (VmHWM) to its current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_rise(fn):
    """Bytes by which the process's peak resident set rises above its current one while fn()
    runs (VmHWM, reset through /proc/self/clear_refs first; Linux)."""
    reset_peak_rss()
    before = resident_bytes("VmRSS")
    fn()
    return max(resident_bytes("VmHWM") - before, 0)
