"""The Triton Bellman-statistics ops (kernels/bellman.py) against the float64 oracle in bcoder.reference.

Without CUDA the kernels run on CPU tensors under Triton's interpreter, which must be switched on
before the kernels are defined, hence the environment variable set before any bcoder import.
"""
import os

import pytest
import torch
from conftest import assert_cuda_graph_replays, assert_error_within_reference, assert_same_values, make_batch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import bcoder  # noqa: E402
from bcoder import reference  # noqa: E402
from bcoder.kernels import bellman  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INF = float("inf")
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def max_block(dtype):
    """The kernels' chunk width for long rows of `dtype`."""
    return bellman._launch_config(1 << 20, dtype)[0]


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_actions(n, vocab, padding_rows=()):
    actions = torch.randint(0, vocab, (n,), device=DEVICE)
    actions[list(padding_rows)] = -1
    return actions




def float64_backward(logits, actions, argmax, shifted_lse, *grads):
    """The oracle gradient: the reference backward on float64 copies of every float input."""
    return reference.bellman_stats_backward(
        logits.double(), actions, argmax, shifted_lse.double(), *[g.double() for g in grads])


def check_stats(logits, ckpt_logits, actions):
    """Kernel statistics vs the float64 oracle: exact where no rounding is involved (max,
    argmax, gathered, target), and shifted_lse no worse than the same-dtype reference."""
    got = bellman.stats(logits, ckpt_logits, actions)
    oracle = reference.bellman_stats(logits.double(), None if ckpt_logits is None else ckpt_logits.double(), actions)
    same_dtype = reference.bellman_stats(logits, ckpt_logits, actions)
    row_max, argmax, shifted_lse, gathered, target = got
    acc = acc_dtype(logits.dtype)
    assert [t.dtype for t in got] == [acc, torch.int64, acc, acc, acc]
    assert all(t.shape == actions.shape for t in got)
    assert_same_values(row_max, oracle[0])
    assert torch.equal(argmax, oracle[1])
    assert_error_within_reference(shifted_lse, same_dtype[2], oracle[2], acc)
    assert_same_values(gathered, oracle[3])
    assert_same_values(target, oracle[4])
    return got


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_ckpt", [True, False])
def test_forward_matches_reference(dtype, with_ckpt):
    # V = 1, a single partial chunk, and a chunk boundary plus a 7-wide tail.
    for vocab in (1, 300, max_block(dtype) + 7):
        logits = (torch.randn(5, vocab, device=DEVICE) * 4).to(dtype)
        ckpt = (torch.randn(5, vocab, device=DEVICE) * 4).to(dtype) if with_ckpt else None
        check_stats(logits, ckpt, random_actions(5, vocab, padding_rows=[3]))


def test_single_row():
    logits = torch.randn(1, 257, device=DEVICE)
    check_stats(logits, torch.randn(1, 257, device=DEVICE), random_actions(1, 257))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_pick_the_lowest_index(dtype):
    block = max_block(dtype)
    vocab = 2 * block + 5
    logits = torch.zeros(6, vocab, device=DEVICE)
    logits[0, [block + 4, 2 * block + 1]] = 3.0  # equal maxima in two later chunks
    logits[1, [block - 1, block]] = 3.0  # equal maxima on both sides of a chunk boundary
    # row 2: all equal
    logits[3, vocab - 1] = 3.0  # the only maximum in the last column
    logits[4] = torch.randint(-2, 3, (vocab,), device=DEVICE).float()  # ties everywhere
    logits[5, [7, 9]] = 3.0  # equal maxima within one chunk
    ckpt = logits.flip(0).roll(block // 2, dims=1).clone()
    logits, ckpt = logits.to(dtype), ckpt.to(dtype)
    row_max, argmax, *_ = check_stats(logits, ckpt, random_actions(6, vocab))
    assert argmax.tolist()[:4] == [block + 4, block - 1, 0, vocab - 1]


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")  # the interpreter's numpy
def test_negative_infinity():
    block = max_block(torch.float32)
    vocab = 2 * block + 7
    logits = torch.randn(6, vocab, device=DEVICE)
    logits[0, :block] = -INF  # a whole -inf chunk before the finite ones
    logits[1] = -INF  # a whole -inf row
    logits[2, : vocab - 1] = -INF  # the only finite entry in the last column
    logits[3, ::3] = -INF  # scattered -inf
    logits[4, block:] = -INF  # whole -inf chunks after the finite ones
    ckpt = torch.randn(6, vocab, device=DEVICE)
    ckpt[:, :block] = -INF
    ckpt[5] = -INF
    actions = random_actions(6, vocab)
    actions[1] = 3
    row_max, argmax, shifted_lse, gathered, target = check_stats(logits, ckpt, actions)
    assert row_max[1] == -INF and shifted_lse[1] == -INF and argmax[1] == 0
    assert argmax[2] == vocab - 1 and row_max[2] == logits[2, -1] and shifted_lse[2] == 0
    assert not torch.isnan(shifted_lse).any()
    check_stats(logits, None, actions)


def test_positive_infinity():
    vocab = max_block(torch.float32) + 7
    logits = torch.randn(3, vocab, device=DEVICE)
    logits[0, [vocab - 3, 4000]] = INF  # the first +inf wins, across chunks
    logits[1, :3] = -INF
    logits[1, 3] = INF
    logits[2, vocab - 5 :] = INF  # +inf only in the tail chunk
    row_max, argmax, shifted_lse, _, _ = check_stats(logits, None, random_actions(3, vocab))
    # Relative to a +inf max the normaliser is inf - inf: NaN, as in the reference.
    assert (row_max == INF).all() and shifted_lse.isnan().all() and argmax.tolist() == [4000, 3, vocab - 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_offsets(dtype):
    # The statistics and the softmax are relative to the max, so an offset of 1e4 costs nothing.
    vocab = 4096 + 7
    logits = (torch.randn(4, vocab, device=DEVICE) * 3 + torch.tensor([[1e4], [-1e4], [0.0], [5e3]], device=DEVICE))
    logits, ckpt = logits.to(dtype), (logits + 1).to(dtype)
    actions = random_actions(4, vocab)
    _, argmax, shifted_lse, *_ = check_stats(logits, ckpt, actions)
    grads = [torch.randn(4, device=DEVICE) for _ in range(3)]
    args = (logits, actions, argmax, shifted_lse, *grads)
    oracle = float64_backward(*args)
    assert_error_within_reference(bellman.stats_backward(*args), reference.bellman_stats_backward(*args), oracle, dtype)


def test_nan_makes_max_and_shifted_lse_nan():
    vocab = 4096 + 7
    logits = torch.randn(4, vocab, device=DEVICE)
    logits[0, 5] = float("nan")
    logits[1, vocab - 1] = float("nan")
    logits[2, 100:] = -INF
    logits[2, 3] = float("nan")
    ckpt = torch.randn(4, vocab, device=DEVICE)
    row_max, argmax, shifted_lse, gathered, target = bellman.stats(logits, ckpt, random_actions(4, vocab))
    assert torch.isnan(row_max[:3]).all() and torch.isnan(shifted_lse[:3]).all()
    assert torch.isfinite(row_max[3]) and torch.isfinite(shifted_lse[3])
    row_max, _, shifted_lse, _, target = bellman.stats(logits, None, random_actions(4, vocab))
    assert torch.isnan(row_max[:3]).all() and torch.isnan(shifted_lse[:3]).all() and torch.isnan(target[:3]).all()


def test_padding_rows_are_zero():
    vocab = 300
    logits = torch.randn(4, vocab, device=DEVICE)
    logits[1] = float("nan")  # a padding row is never read
    actions = random_actions(4, vocab, padding_rows=[1, 3])
    got = check_stats(logits, torch.randn(4, vocab, device=DEVICE), actions)
    for t in got:
        assert (t[[1, 3]] == 0).all()


def test_row_strides():
    vocab = 4096 + 7
    logits = torch.randn(5, vocab + 13, device=DEVICE)[:, :vocab]
    ckpt = torch.randn(5, vocab + 64, device=DEVICE)[:, 3 : vocab + 3]
    actions = torch.stack([random_actions(5, vocab, padding_rows=[2])] * 2, dim=1)[:, 0]  # [N] with stride 2
    row_max, argmax, shifted_lse, gathered, target = check_stats(logits, ckpt, actions)
    grads = [torch.randn(5, 2, device=DEVICE)[:, 1] for _ in range(3)]
    expected = reference.bellman_stats_backward(logits, actions, argmax, shifted_lse, *grads)
    grad = bellman.stats_backward(logits, actions, argmax, shifted_lse, *grads)
    assert_error_within_reference(grad, expected, expected, torch.float32)


def make_backward_inputs(dtype, vocab, n=6):
    """Rows 0-2 dense (grad_shifted_lse != 0), rows 3-4 sparse (grad_shifted_lse == 0), row 5
    padding; row 1's action is its argmax, so both sparse coefficients land on one column, and
    row 2's max is its first column, the first one an in-place pass overwrites."""
    logits = (torch.randn(n, vocab, device=DEVICE) * 3).to(dtype)
    logits[2, 0] = 20.0
    actions = random_actions(n, vocab, padding_rows=[n - 1])
    _, argmax, shifted_lse, _, _ = bellman.stats(logits, None, actions)
    actions[1] = argmax[1]
    acc = acc_dtype(dtype)
    grad_max = torch.randn(n, device=DEVICE, dtype=acc)
    grad_shifted_lse = torch.randn(n, device=DEVICE, dtype=acc)
    grad_shifted_lse[3:5] = 0
    grad_gathered = torch.randn(n, device=DEVICE, dtype=acc)
    return logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("vocab", [1, 300, 4096 + 7])
def test_backward_matches_reference(dtype, vocab):
    args = make_backward_inputs(dtype, vocab)
    grad = bellman.stats_backward(*args)
    assert grad.dtype == dtype and grad.shape == args[0].shape and grad.is_contiguous()
    oracle = float64_backward(*args)
    same_dtype = reference.bellman_stats_backward(*args)
    assert_error_within_reference(grad, same_dtype, oracle, dtype)
    # Sparse and padding rows involve no rounding beyond the single cast. The interpreter casts
    # float32 to bfloat16 by truncation (GPUs round to nearest even), so there it is 1 ulp off.
    if not (dtype == torch.bfloat16 and DEVICE == "cpu"):
        assert_same_values(grad[3:], same_dtype[3:])
    assert (grad[-1] == 0).all()


def test_sparse_rows_read_no_logits():
    logits, actions, argmax, shifted_lse, *grads = make_backward_inputs(torch.float32, 300)
    logits[3:] = float("nan")
    shifted_lse[3:] = float("nan")
    grad = bellman.stats_backward(logits, actions, argmax, shifted_lse, *grads)
    assert torch.isfinite(grad[3:]).all()
    assert (grad[3:5] != 0).sum(dim=1).le(2).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_equals_out_of_place(dtype):
    vocab = 4096 + 7
    wide = (torch.randn(6, vocab + 9, device=DEVICE) * 3).to(dtype)
    logits, actions, argmax, shifted_lse, *grads = make_backward_inputs(dtype, vocab)
    wide[:, :vocab] = logits
    strided = wide[:, :vocab]
    expected = bellman.stats_backward(strided, actions, argmax, shifted_lse, *grads)
    tail = wide[:, vocab:].clone()
    assert bellman.stats_backward_(strided, actions, argmax, shifted_lse, *grads) is None
    assert torch.equal(strided, expected)
    assert torch.equal(wide[:, vocab:], tail)


def test_empty_batch():
    logits = torch.randn(0, 50, device=DEVICE)
    actions = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    row_max, argmax, shifted_lse, gathered, target = bellman.stats(logits, None, actions)
    assert row_max.shape == (0,) and argmax.dtype == torch.int64
    zeros = torch.zeros(0, device=DEVICE)
    assert bellman.stats_backward(logits, actions, argmax, shifted_lse, zeros, zeros, zeros).shape == (0, 50)


def test_rejects_bad_inputs():
    actions = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous last dim"):
        bellman.stats(torch.randn(50, 3, device=DEVICE).t(), None, actions)
    with pytest.raises(ValueError, match="float16, bfloat16, float32 or float64"):
        bellman.stats(torch.zeros(3, 50, dtype=torch.int32, device=DEVICE), None, actions)
    with pytest.raises(ValueError, match="ckpt_logits must match"):
        bellman.stats(torch.randn(3, 50, device=DEVICE), torch.randn(3, 50, device=DEVICE).double(), actions)
    with pytest.raises(ValueError, match="actions"):
        bellman.stats(torch.randn(3, 50, device=DEVICE), None, actions.int())


def test_op_registration():
    logits = torch.randn(4, 300, device=DEVICE)
    actions = random_actions(4, 300, padding_rows=[2])
    stats = bellman.stats(logits, torch.randn(4, 300, device=DEVICE), actions)
    grads = [torch.randn(4, device=DEVICE) for _ in range(3)]
    backward_args = (logits, actions, stats[1], stats[2], *grads)
    # The interpreter runs kernels eagerly only, so the AOT-dispatch (compile) checks need CUDA.
    utils = None if DEVICE == "cuda" else ("test_schema", "test_autograd_registration", "test_faketensor")
    for op, args in (
        (bellman.stats, (logits, torch.randn(4, 300, device=DEVICE), actions)),
        (bellman.stats, (logits, None, actions, True)),
        (bellman.stats_backward, backward_args),
        (bellman.stats_backward_, (logits.clone(), *backward_args[1:])),
    ):
        torch.library.opcheck(op, args, **({} if utils is None else {"test_utils": utils}))


def float64_copy(inputs):
    return [x.detach().double().requires_grad_(x.requires_grad) if x.is_floating_point() else x for x in inputs]


def outputs_and_grads(fn, inputs, values_at):
    """fn(*inputs) -> ([outputs..., d logits, d values], logits): the gradients are of its first
    output summed (a loss or token rewards) w.r.t. inputs[0] and inputs[values_at]. The logits
    are a fresh copy: the in-place backward overwrites them."""
    logits = inputs[0].detach().clone().requires_grad_()
    outputs = fn(logits, *inputs[1:])
    outputs = tuple(outputs) if isinstance(outputs, tuple) else (outputs,)
    grads = torch.autograd.grad(outputs[0].sum(), (logits, inputs[values_at]))
    return [*(out.detach() for out in outputs), *grads], logits


def assert_backend_matches_float64(fn, inputs, values_at, dtype):
    """fn(*inputs, backend="triton") against fn(backend="reference") on float64 copies (the oracle):
    every output and gradient no worse than the same-dtype reference's, elementwise."""
    got, _ = outputs_and_grads(lambda *x: fn(*x, backend="triton"), inputs, values_at)
    same_dtype, _ = outputs_and_grads(lambda *x: fn(*x, backend="reference"), inputs, values_at)
    oracle, _ = outputs_and_grads(lambda *x: fn(*x, backend="reference"), float64_copy(inputs), values_at)
    assert len(got) == len(oracle)
    for actual, reference_value, oracle_value in zip(got, same_dtype, oracle):
        assert actual.shape == oracle_value.shape
        assert_error_within_reference(actual, reference_value, oracle_value, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("operator", ["conservative", "optimality"])
@pytest.mark.parametrize("inplace_backward", [False, True])
def test_bellman_loss_matches_reference(dtype, operator, inplace_backward, generator):
    # bcoder.bellman_loss(backend="triton") end to end: the ops, their autograd (bcoder/ops.py)
    # and the loss tail. Long enough rows for two chunks in float32; some programs ground truth
    # (dense rows), some not (two non-zeros per row), ragged lengths (padding rows).
    inputs = make_batch(3, 4, max_block(torch.float32) + 5, dtype, ground_truth=[True, False, True],
                        lengths=[4, 2, 3], generator=generator)
    with torch.no_grad():
        inputs[0][0, 1] += 1e4  # a large logit offset: exact through shifted_lse

    def loss(*args, backend):
        return bcoder.bellman_loss(*args, operator=operator, backend=backend, inplace_backward=inplace_backward)

    assert_backend_matches_float64(loss, inputs, 2, dtype)
    outputs, logits = outputs_and_grads(lambda *x: loss(*x, backend="triton"), inputs, 2)
    # In place, the logits' gradient is written over the logits' own memory.
    assert (outputs[-2].data_ptr() == logits.data_ptr()) == inplace_backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_token_rewards_match_reference(dtype, generator):
    logits, _, values, actions, mask, _, _ = make_batch(3, 5, 300, dtype, lengths=[5, 1, 3], generator=generator)
    assert_backend_matches_float64(bcoder.token_rewards, (logits, values, actions, mask), 1, dtype)
    rewards = bcoder.token_rewards(logits, values, actions, mask, backend="triton")
    assert (rewards[~mask] == 0).all()


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_parity_at_vocabulary_scale(dtype):
    vocab = 32128
    logits = (torch.randn(64, vocab, device=DEVICE) * 4).to(dtype)
    logits[0, : vocab // 2] = -INF
    actions = random_actions(64, vocab, padding_rows=[5, 6])
    ckpt = (torch.randn(64, vocab, device=DEVICE) * 4).to(dtype)
    row_max, argmax, shifted_lse, *_ = check_stats(logits, ckpt, actions)
    acc = acc_dtype(dtype)
    grads = [torch.randn(64, device=DEVICE, dtype=acc) for _ in range(3)]
    grads[1][32:] = 0
    args = (logits, actions, argmax, shifted_lse, *grads)
    oracle = float64_backward(*args)
    assert_error_within_reference(bellman.stats_backward(*args), reference.bellman_stats_backward(*args), oracle, dtype)


@cuda_only
def test_gpu_torch_compile():
    logits = torch.randn(16, 1000, device=DEVICE)
    ckpt = torch.randn(16, 1000, device=DEVICE)
    actions = random_actions(16, 1000, padding_rows=[3])

    def stats_and_grad(logits, ckpt, actions):
        row_max, argmax, shifted_lse, gathered, target = bellman.stats(logits, ckpt, actions)
        grads = (target - row_max, shifted_lse.sigmoid(), gathered.cos())
        grad = bellman.stats_backward(logits, actions, argmax, shifted_lse, *grads)
        return row_max, argmax, shifted_lse, gathered, target, grad

    compiled = torch.compile(stats_and_grad, fullgraph=True)
    for got, expected in zip(compiled(logits, ckpt, actions), stats_and_grad(logits, ckpt, actions)):
        torch.testing.assert_close(got, expected)


@cuda_only
def test_gpu_cuda_graph_capture():
    vocab = 32128
    logits = torch.randn(32, vocab, device=DEVICE, dtype=torch.bfloat16)
    ckpt = torch.randn(32, vocab, device=DEVICE, dtype=torch.bfloat16)
    actions = random_actions(32, vocab, padding_rows=[0])
    grads = [torch.randn(32, device=DEVICE) for _ in range(3)]

    def step():
        row_max, argmax, shifted_lse, gathered, target = bellman.stats(logits, ckpt, actions)
        grad = bellman.stats_backward(logits, actions, argmax, shifted_lse, *grads)
        return row_max, argmax, shifted_lse, gathered, target, grad

    def refill():
        logits.copy_(torch.randn_like(logits))
        ckpt.copy_(torch.randn_like(ckpt))
        actions.copy_(random_actions(32, vocab, padding_rows=[1]))

    assert_cuda_graph_replays(step, refill)
