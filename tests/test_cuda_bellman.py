"""The CUDA C++ kernels of the bcoder ops (csrc/bellman_cuda.cu) against the float64 oracle.

The kernels stream each row as a scalar head up to the first 16-byte boundary, a body of 16-byte
vectors (8 x fp16/bf16, 4 x fp32, 2 x fp64) loaded four per thread at a time, and a scalar tail,
one block of up to 512 threads per row. The shapes below are chosen to hit every part: rows
shorter than one vector, odd V, row strides and storage offsets that misalign rows, and rows long
enough for several four-vector batches per thread.

Skipped unless a CUDA device is present and bcoder._C was built with the CUDA kernels.
"""
import pytest
import torch
from conftest import assert_cuda_graph_replays, assert_error_within_reference, assert_same_values

import bcoder
from bcoder import reference

try:
    from bcoder import ops  # noqa: F401  (loads bcoder._C, which registers the kernels)
except ImportError:
    ops = None

HAS_CUDA_KERNEL = (
    ops is not None
    and torch.cuda.is_available()
    and torch._C._dispatch_has_kernel_for_dispatch_key("bcoder::bellman_stats", "CUDA")
)
pytestmark = pytest.mark.skipif(not HAS_CUDA_KERNEL, reason="needs a CUDA device and bcoder._C built with CUDA")

DEVICE = "cuda"
INF = float("inf")
NAN = float("nan")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# One 512-thread block covers 512 vectors per pass; 4 passes are batched per thread.
ONE_BATCH = {torch.float16: 8 * 512 * 4, torch.bfloat16: 8 * 512 * 4, torch.float32: 4 * 512 * 4, torch.float64: 2 * 512 * 4}
# (rows, vocab): V = 1, shorter than a vector, odd, around one batch, and a real vocabulary.
SHAPES = [(1, 1), (3, 5), (1, 257), (7, 1001), (4, "batch-1"), (4, "batch+9"), (3, 32128 + 7), (2, 152064)]

stats_op = torch.ops.bcoder.bellman_stats
backward_op = torch.ops.bcoder.bellman_stats_backward
backward_inplace_op = torch.ops.bcoder.bellman_stats_backward_


def vocab_size(vocab, dtype):
    if vocab == "batch-1":
        return ONE_BATCH[dtype] - 1
    if vocab == "batch+9":
        return 3 * ONE_BATCH[dtype] + 9
    return vocab


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_rows(rows, vocab, dtype, row_stride=None, offset=0, scale=4.0):
    """[rows, vocab] of `dtype` inside a wider buffer: row stride `row_stride`, `offset` leading elements."""
    row_stride = vocab if row_stride is None else row_stride
    flat = torch.randn(offset + rows * row_stride, device=DEVICE, dtype=torch.float64) * scale
    return flat.to(dtype)[offset:].view(rows, row_stride)[:, :vocab]


def random_actions(rows, vocab, padding_rows=()):
    actions = torch.randint(0, vocab, (rows,), device=DEVICE)
    actions[list(padding_rows)] = -1
    return actions




def check_stats(logits, ckpt_logits, actions):
    """Kernel statistics vs the float64 oracle: exact where no rounding is involved (max, argmax,
    gathered, target) and shifted_lse no worse than the same-dtype reference. Rows holding a NaN
    only check max and shifted_lse (NaN): the contract leaves their argmax unspecified."""
    got = stats_op(logits, ckpt_logits, actions)
    double_ckpt = None if ckpt_logits is None else ckpt_logits.double()
    oracle = reference.bellman_stats(logits.double(), double_ckpt, actions)
    same_dtype = reference.bellman_stats(logits, ckpt_logits, actions)
    acc = acc_dtype(logits.dtype)
    assert [t.dtype for t in got] == [acc, torch.int64, acc, acc, acc]
    assert all(t.shape == actions.shape and t.device == logits.device for t in got)
    row_max, argmax, shifted_lse, gathered, target = got
    assert_same_values(row_max, oracle[0])
    assert_error_within_reference(shifted_lse, same_dtype[2], oracle[2], acc)
    assert_same_values(gathered, oracle[3])
    defined = ~logits.isnan().any(dim=1)
    if ckpt_logits is not None:
        defined &= ~ckpt_logits.isnan().any(dim=1)
    assert torch.equal(argmax[defined], oracle[1][defined])
    assert_same_values(target[defined], oracle[4][defined])
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_forward_matches_reference(rows, vocab, dtype):
    vocab = vocab_size(vocab, dtype)
    logits = random_rows(rows, vocab, dtype)
    ckpt = random_rows(rows, vocab, dtype)
    actions = random_actions(rows, vocab, padding_rows=[1] if rows > 2 else [])
    check_stats(logits, ckpt, actions)
    check_stats(logits, None, actions)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_misaligned_row_strides(dtype, offset):
    # Row stride V + 3 with a storage offset: every row starts at a different 16-byte phase, and
    # logits and ckpt_logits are misaligned differently.
    vocab = 4096 + 5
    logits = random_rows(8, vocab, dtype, row_stride=vocab + 3, offset=offset)
    ckpt = random_rows(8, vocab, dtype, row_stride=vocab + 11, offset=offset + 2)
    check_stats(logits, ckpt, random_actions(8, vocab, padding_rows=[6]))
    check_stats(logits, None, random_actions(8, vocab))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_ties_pick_the_lowest_index(dtype, offset):
    vocab = 3 * ONE_BATCH[dtype] + 9
    per_vector = 128 // torch.finfo(dtype).bits  # elements per 16-byte vector
    cases = [
        (3, 4),  # within one vector (or head)
        (per_vector + 1, 2 * per_vector + 1),  # two vectors of neighbouring threads
        (5, 512 * per_vector + 5),  # the same thread, one pass apart
        (vocab - 2, vocab - 1),  # in the scalar tail
        (0, vocab // 2, vocab - 1),  # first column
        (ONE_BATCH[dtype] + 1, 2 * ONE_BATCH[dtype] + 1),  # different four-vector batches
    ]
    logits = random_rows(len(cases) + 1, vocab, dtype, row_stride=vocab + 1, offset=offset)
    ckpt = random_rows(len(cases) + 1, vocab, dtype, row_stride=vocab + 1, offset=offset)
    for i, columns in enumerate(cases):
        logits[i, list(columns)] = 100.0
        ckpt[i, list(columns[::-1])] = 50.0
    logits[len(cases)] = 1.5  # all equal
    ckpt[len(cases)] = 1.5
    _, argmax, *_ = check_stats(logits, ckpt, random_actions(len(cases) + 1, vocab))
    assert argmax.tolist() == [columns[0] for columns in cases] + [0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_infinity(dtype):
    vocab = 2 * ONE_BATCH[dtype] + 7
    logits = random_rows(7, vocab, dtype, row_stride=vocab + 1, offset=1)
    logits[0, : ONE_BATCH[dtype]] = -INF  # whole -inf batches before the finite values
    logits[1] = -INF  # a whole -inf row
    logits[2, : vocab - 1] = -INF  # the only finite entry in the scalar tail
    logits[3, ::3] = -INF  # scattered
    logits[4, ONE_BATCH[dtype] :] = -INF  # whole -inf batches after the finite values
    logits[5, 1:] = -INF  # the only finite entry in the head
    ckpt = random_rows(7, vocab, dtype)
    ckpt[:, : ONE_BATCH[dtype]] = -INF
    ckpt[6] = -INF  # an all -inf checkpoint row: target column 0
    actions = random_actions(7, vocab)
    row_max, argmax, shifted_lse, _, target = check_stats(logits, ckpt, actions)
    assert row_max[1] == -INF and shifted_lse[1] == -INF and argmax[1] == 0
    assert argmax[2] == vocab - 1 and row_max[2] == logits[2, -1].double() and shifted_lse[2] == 0
    assert argmax[5] == 0 and row_max[5] == logits[5, 0].double() and shifted_lse[5] == 0
    assert target[6] == logits[6, 0].double()
    assert not torch.isnan(shifted_lse).any()
    check_stats(logits, None, actions)


def test_positive_infinity():
    vocab = ONE_BATCH[torch.float32] + 7
    logits = random_rows(3, vocab, torch.float32)
    logits[0, [vocab - 3, 4000]] = INF  # the first +inf wins
    logits[1, :3] = -INF
    logits[1, 3] = INF
    logits[2, vocab - 5 :] = INF  # +inf only in the tail
    row_max, argmax, shifted_lse, _, _ = check_stats(logits, None, random_actions(3, vocab))
    # Relative to a +inf max the normaliser is inf - inf: NaN, as in the reference.
    assert (row_max == INF).all() and shifted_lse.isnan().all() and argmax.tolist() == [4000, 3, vocab - 5]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_makes_max_and_shifted_lse_nan(dtype):
    vocab = ONE_BATCH[dtype] + 7
    logits = random_rows(5, vocab, dtype, row_stride=vocab + 1, offset=1)
    logits[0, 0] = NAN  # head
    logits[1, vocab - 1] = NAN  # tail
    logits[2, 100:] = -INF
    logits[2, 3] = NAN  # with -inf
    logits[3] = NAN
    stats = check_stats(logits, random_rows(5, vocab, dtype), random_actions(5, vocab))
    row_max, _, shifted_lse, _, target = stats
    assert torch.isnan(row_max[:4]).all() and torch.isnan(shifted_lse[:4]).all()
    assert torch.isfinite(row_max[4]) and torch.isfinite(shifted_lse[4])
    row_max, _, shifted_lse, _, target = check_stats(logits, None, random_actions(5, vocab))
    assert torch.isnan(target[:4]).all()  # target = max without a checkpoint


def test_padding_rows_are_zero_and_unread():
    vocab = 1001
    logits = random_rows(4, vocab, torch.float32)
    logits[1] = NAN  # a padding row is never read
    actions = random_actions(4, vocab, padding_rows=[1, 3])
    for t in check_stats(logits, random_rows(4, vocab, torch.float32), actions):
        assert (t[[1, 3]] == 0).all()


def make_backward_inputs(dtype, vocab, rows=7, row_stride=None, offset=0):
    """Rows 0-2 dense (grad_shifted_lse != 0), rows 3-5 sparse (grad_shifted_lse == 0), the last
    row padding; row 1's action is its argmax, so both sparse coefficients land on one column, and
    row 2's max is its first column, which an in-place pass overwrites while the max is needed."""
    logits = random_rows(rows, vocab, dtype, row_stride=row_stride, offset=offset, scale=3.0)
    logits[2, 0] = 20.0
    actions = random_actions(rows, vocab, padding_rows=[rows - 1])
    _, argmax, shifted_lse, _, _ = stats_op(logits, None, actions)
    actions[1] = argmax[1]
    acc = acc_dtype(dtype)
    grad_max = torch.randn(rows, device=DEVICE, dtype=acc)
    grad_shifted_lse = torch.randn(rows, device=DEVICE, dtype=acc)
    grad_shifted_lse[3 : rows - 1] = 0
    grad_gathered = torch.randn(rows, device=DEVICE, dtype=acc)
    return logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_backward_matches_reference(rows, vocab, dtype):
    vocab = vocab_size(vocab, dtype)
    args = make_backward_inputs(dtype, vocab, rows=max(rows, 7))
    grad = backward_op(*args)
    assert grad.dtype == dtype and grad.shape == args[0].shape and grad.is_contiguous()
    logits, actions, argmax, shifted_lse, *grads = args
    oracle = reference.bellman_stats_backward(
        logits.double(), actions, argmax, shifted_lse.double(), *[g.double() for g in grads])
    same_dtype = reference.bellman_stats_backward(*args)
    assert_error_within_reference(grad, same_dtype, oracle, dtype)
    # Sparse and padding rows involve no rounding beyond the single cast.
    assert_same_values(grad[3:], same_dtype[3:])
    assert (grad[-1] == 0).all()


def test_sparse_rows_read_no_logits():
    logits, actions, argmax, shifted_lse, *grads = make_backward_inputs(torch.float32, 1001)
    logits[3:] = NAN
    shifted_lse[3:] = NAN
    grad = backward_op(logits, actions, argmax, shifted_lse, *grads)
    assert torch.isfinite(grad[3:]).all()
    assert (grad[3:6] != 0).sum(dim=1).le(2).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
def test_inplace_backward_equals_out_of_place(dtype, offset):
    # Strided, misaligned rows: out of place, loads and the contiguous output's stores have
    # different 16-byte phases (element-wise loads); in place they share them (vector loads).
    vocab = ONE_BATCH[dtype] + 5
    row_stride = vocab + 9
    args = make_backward_inputs(dtype, vocab, row_stride=row_stride, offset=offset)
    logits = args[0]
    expected = backward_op(*args)
    oracle_input = [a.clone() for a in args]
    beyond_rows = logits.as_strided((logits.shape[0], row_stride - vocab), (row_stride, 1), logits.storage_offset() + vocab)
    untouched = beyond_rows.clone()
    assert backward_inplace_op(*args) is None
    assert torch.equal(logits, expected)
    assert torch.equal(beyond_rows, untouched)
    assert torch.equal(expected, backward_op(*oracle_input))  # deterministic


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_offsets(dtype):
    # The statistics and the softmax are relative to the max, so an offset of 1e4 costs nothing.
    vocab = ONE_BATCH[dtype] + 7
    offsets = torch.tensor([[1e4], [-1e4], [0.0], [5e3]], device=DEVICE, dtype=torch.float64)
    logits = (random_rows(4, vocab, torch.float64, scale=3.0) + offsets).to(dtype)
    actions = random_actions(4, vocab)
    _, argmax, shifted_lse, *_ = check_stats(logits, (logits.double() + 1).to(dtype), actions)
    grads = [torch.randn(4, device=DEVICE) for _ in range(3)]
    args = (logits, actions, argmax, shifted_lse, *grads)
    oracle = reference.bellman_stats_backward(
        logits.double(), actions, argmax, shifted_lse.double(), *[g.double() for g in grads])
    assert_error_within_reference(backward_op(*args), reference.bellman_stats_backward(*args), oracle, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", ["conservative", "optimality"])
@pytest.mark.parametrize("inplace_backward", [False, True])
def test_bellman_loss_matches_reference(dtype, operator, inplace_backward):
    # bcoder.bellman_loss(backend="cuda") end to end against the float64 reference: no worse than
    # the same-dtype reference in the loss parts and both gradients.
    batch, steps, vocab = 3, 16, 4096 + 5
    logits = (torch.randn(batch, steps, vocab, device=DEVICE, dtype=torch.float64) * 3).to(dtype)
    logits[0, 3] += 1e4
    ckpt = (torch.randn(batch, steps, vocab, device=DEVICE, dtype=torch.float64) * 3).to(dtype)
    values = torch.randn(batch, steps, device=DEVICE, dtype=dtype)
    actions = torch.randint(0, vocab, (batch, steps), device=DEVICE)
    mask = torch.arange(steps, device=DEVICE) < torch.tensor([[steps], [5], [11]], device=DEVICE)
    rewards = torch.tensor([1.0, -0.3, -1.0], device=DEVICE, dtype=dtype)
    is_ground_truth = torch.tensor([True, False, True], device=DEVICE)

    def run(logits, values, backend, inplace=False):
        logits = logits.detach().clone().requires_grad_()
        values = values.detach().clone().requires_grad_()
        out = bcoder.bellman_loss(logits, ckpt.to(logits.dtype), values, actions, mask, rewards.to(values.dtype),
                                  is_ground_truth, operator=operator, backend=backend, inplace_backward=inplace)
        grads = torch.autograd.grad(out.loss, (logits, values))
        return [*(part.detach() for part in out), *grads]

    got = run(logits, values, "cuda", inplace_backward)
    same_dtype = run(logits, values, "reference")
    oracle = run(logits.double(), values.double(), "reference")
    for actual, same_dtype_value, oracle_value in zip(got, same_dtype, oracle):
        assert_error_within_reference(actual, same_dtype_value, oracle_value, dtype)


def test_empty_batch():
    logits = torch.randn(0, 50, device=DEVICE)
    actions = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    row_max, argmax, shifted_lse, gathered, target = stats_op(logits, None, actions)
    assert row_max.shape == (0,) and argmax.dtype == torch.int64
    zeros = torch.zeros(0, device=DEVICE)
    assert backward_op(logits, actions, argmax, shifted_lse, zeros, zeros, zeros).shape == (0, 50)


def test_rejects_bad_inputs():
    logits = torch.randn(3, 50, device=DEVICE)
    actions = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    with pytest.raises(RuntimeError, match="unit column stride"):
        stats_op(torch.randn(50, 3, device=DEVICE).t(), None, actions)
    with pytest.raises(RuntimeError, match="float16, bfloat16, float32 or float64"):
        stats_op(logits.int(), None, actions)
    with pytest.raises(RuntimeError, match="ckpt_logits must match"):
        stats_op(logits, logits.double(), actions)
    with pytest.raises(RuntimeError, match="actions"):
        stats_op(logits, None, actions.int())
    with pytest.raises(RuntimeError, match="actions"):
        stats_op(logits, None, actions.cpu())
    _, argmax, shifted_lse, *_ = stats_op(logits, None, actions)
    with pytest.raises(RuntimeError, match="grad_shifted_lse"):
        backward_op(logits, actions, argmax, shifted_lse, shifted_lse, shifted_lse.double(), shifted_lse)
    with pytest.raises(RuntimeError, match="unit column stride"):
        backward_inplace_op(torch.randn(50, 3, device=DEVICE).t(), actions, argmax, *[shifted_lse] * 4)


def test_opcheck():
    vocab = 1001
    logits = random_rows(4, vocab, torch.float32, row_stride=vocab + 3, offset=1)
    actions = random_actions(4, vocab, padding_rows=[2])
    stats = stats_op(logits, random_rows(4, vocab, torch.float32), actions)
    grads = [torch.randn(4, device=DEVICE) for _ in range(3)]
    backward_args = (logits, actions, stats[1], stats[2], *grads)
    for op, args in (
        (stats_op, (logits, random_rows(4, vocab, torch.float32), actions)),
        (stats_op, (logits, None, actions)),
        (backward_op, backward_args),
        (backward_inplace_op, (logits.clone(), *backward_args[1:])),
    ):
        torch.library.opcheck(op, args)


def test_cuda_graph_capture():
    vocab = 32128
    logits = random_rows(32, vocab, torch.bfloat16)
    ckpt = random_rows(32, vocab, torch.bfloat16)
    actions = random_actions(32, vocab, padding_rows=[0])
    grads = [torch.randn(32, device=DEVICE) for _ in range(3)]
    grads[1][16:] = 0

    def step():
        row_max, argmax, shifted_lse, gathered, target = stats_op(logits, ckpt, actions)
        grad = backward_op(logits, actions, argmax, shifted_lse, *grads)
        in_place = logits.clone()
        backward_inplace_op(in_place, actions, argmax, shifted_lse, *grads)
        return row_max, argmax, shifted_lse, gathered, target, grad, in_place

    def refill():
        logits.copy_(torch.randn_like(logits))
        ckpt.copy_(torch.randn_like(ckpt))
        actions.copy_(random_actions(32, vocab, padding_rows=[1]))

    assert_cuda_graph_replays(step, refill)
