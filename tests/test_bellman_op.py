"""The fused Bellman op's contract (bcoder/ops.py, docs/method.md#the-fused-op), one suite for every backend.

Each test takes the `backend` fixture (tests/conftest.py), one case per backend: "cpp", the C++
kernel on CPU tensors; "triton", the Triton kernels on CUDA tensors, or on CPU tensors under
Triton's interpreter when there is no GPU; "cuda", the CUDA C++ kernel (skipped, with the reason,
without a GPU or without the CUDA kernels in bcoder._C). Results are checked against the float64
oracle bcoder.reference on fresh random inputs (the `generator` fixture prints its seed): exactly
where no rounding is involved (max, argmax, gathered, target, the gradient's sparse rows), and
elsewhere no further from the oracle than the same-dtype reference, element by element.

Row lengths are given relative to each backend's block (Backend.block: the C++ kernel's L1 chunk,
the Triton kernels' BLOCK, a CUDA block's batch of four 16-byte vectors per thread), so every
backend sees rows shorter than one vector, partial blocks, block boundaries and tails; storage
offsets and row strides misalign rows against 16-byte vectors (the CUDA kernel's vector loads).
"""
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    assert_cuda_graph_replays,
    assert_error_within_reference,
    assert_same_values,
    loss_kwargs,
    make_batch,
)
from torch._subclasses.fake_tensor import FakeTensorMode

import bcoder
from bcoder import ops, reference

INF = float("inf")
NAN = float("nan")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (rows, vocab), vocab in elements or relative to the backend's block: V = 1, N = 1, V shorter than
# a 16-byte vector, odd V, a block less one, a block and a 7-wide tail, three blocks and 9, and two
# real vocabularies (CodeT5's 32128, off by 7; Qwen's 152064).
REAL_VOCABULARIES = [32128 + 7, 152064]
SHAPES = [(1, 1), (3, 5), (1, 257), (7, 1001), (4, "block-1"), (5, "block+7"), (3, "3block+9"),
          *((2, vocab) for vocab in REAL_VOCABULARIES)]


def vocab_size(backend, vocab, dtype):
    if backend.interpreted and vocab in REAL_VOCABULARIES:
        pytest.skip("real-vocabulary rows are slow under the Triton interpreter (run on a GPU); the "
                    "interpreter sees V below, at and across its block boundaries")
    block = backend.block(dtype)
    return {"block-1": block - 1, "block+7": block + 7, "3block+9": 3 * block + 9}.get(vocab, vocab)


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_rows(backend, rows, vocab, dtype, generator, scale=4.0, row_stride=None, offset=0):
    """[rows, vocab] of `dtype` on the backend's device inside a wider buffer: rows `row_stride`
    (default vocab) elements apart, after `offset` leading elements."""
    row_stride = vocab if row_stride is None else row_stride
    flat = torch.randn(offset + rows * row_stride, generator=generator, dtype=torch.float64) * scale
    return flat.to(dtype).to(backend.device)[offset:].view(rows, row_stride)[:, :vocab]


def random_actions(backend, rows, vocab, generator, padding_rows=()):
    actions = torch.randint(0, vocab, (rows,), generator=generator)
    actions[list(padding_rows)] = -1
    return actions.to(backend.device)


def random_vector(backend, rows, dtype, generator):
    return torch.randn(rows, generator=generator, dtype=torch.float64).to(dtype).to(backend.device)


def strided(vector):
    """The same [N] values with stride 2."""
    return torch.stack([vector, torch.zeros_like(vector)], dim=1)[:, 0]


def float64_backward(logits, actions, argmax, shifted_lse, *grads):
    """The oracle gradient: the reference backward on float64 copies of every float input."""
    return reference.bellman_stats_backward(
        logits.double(), actions, argmax, shifted_lse.double(), *[g.double() for g in grads])


def check_stats(backend, logits, ckpt_logits, actions):
    """The backend's statistics vs the float64 oracle: max and gathered exact, shifted_lse no worse
    than the same-dtype reference; argmax and target exact except on rows holding a NaN, whose argmax
    the contract leaves unspecified."""
    got = backend.ops.stats(logits, ckpt_logits, actions)
    oracle = reference.bellman_stats(logits.double(), None if ckpt_logits is None else ckpt_logits.double(), actions)
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


def make_backward_inputs(backend, rows, vocab, dtype, generator, row_stride=None, offset=0):
    """The backward's arguments for [rows, vocab] logits. Even rows are dense (grad_shifted_lse != 0:
    a ground-truth row's cross-entropy), odd rows sparse (grad_shifted_lse == 0: two non-zeros); with
    3 rows or more the last is padding. Row 0's max is its first column, the first one an in-place
    pass overwrites while the max is still needed; row 1's action is its argmax (both sparse
    coefficients on one column), and so is row 2's (a dense row) when it is not padding."""
    logits = random_rows(backend, rows, vocab, dtype, generator, scale=3.0, row_stride=row_stride, offset=offset)
    logits[0, 0] = 20.0
    actions = random_actions(backend, rows, vocab, generator, padding_rows=[rows - 1] if rows >= 3 else [])
    _, argmax, shifted_lse, _, _ = backend.ops.stats(logits, None, actions)
    coincide = [1] if rows < 4 else [1, 2]
    actions[coincide[: rows - 1]] = argmax[coincide[: rows - 1]]
    grad_max, grad_shifted_lse, grad_gathered = (random_vector(backend, rows, acc_dtype(dtype), generator)
                                                 for _ in range(3))
    grad_shifted_lse[1::2] = 0
    return logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered


# ----- forward -----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_forward_matches_reference(backend, rows, vocab, dtype, generator):
    vocab = vocab_size(backend, vocab, dtype)
    logits = random_rows(backend, rows, vocab, dtype, generator)
    ckpt = random_rows(backend, rows, vocab, dtype, generator)
    actions = random_actions(backend, rows, vocab, generator, padding_rows=[1] if rows > 2 else [])
    check_stats(backend, logits, ckpt, actions)
    check_stats(backend, logits, None, actions)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_strided_misaligned_rows(backend, dtype, offset, generator):
    # Row strides V + 3 and V + 11 after storage offsets: every row starts at a different 16-byte
    # phase, and logits and ckpt_logits are misaligned differently. The [N] arguments have stride 2.
    # Rows longer than a block, but for Triton's interpreter (slow, and blind to alignment).
    vocab = (1000 if backend.interpreted else backend.block(dtype)) + 5
    logits = random_rows(backend, 8, vocab, dtype, generator, row_stride=vocab + 3, offset=offset)
    ckpt = random_rows(backend, 8, vocab, dtype, generator, row_stride=vocab + 11, offset=offset + 2)
    actions = strided(random_actions(backend, 8, vocab, generator, padding_rows=[6]))
    _, argmax, shifted_lse, _, _ = check_stats(backend, logits, ckpt, actions)
    check_stats(backend, logits, None, strided(random_actions(backend, 8, vocab, generator)))
    grads = [random_vector(backend, 8, acc_dtype(dtype), generator) for _ in range(3)]
    grads[1][3:6] = 0
    args = (logits, actions, strided(argmax), strided(shifted_lse), *map(strided, grads))
    grad = backend.ops.backward(*args)
    assert grad.is_contiguous()
    assert_error_within_reference(grad, reference.bellman_stats_backward(*args), float64_backward(*args), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_ties_take_the_first_index(backend, dtype, offset, generator):
    block = backend.block(dtype)
    vocab = 3 * block + 9
    per_vector = 128 // torch.finfo(dtype).bits  # elements of a 16-byte vector
    cases = [  # the columns holding a row's maximum
        (3, 4),  # neighbours within one vector
        (7, 9),  # within one block
        (per_vector + 1, 2 * per_vector + 1),  # two vectors (of neighbouring CUDA threads)
        (5, 512 * per_vector + 5),  # the same CUDA thread, one pass apart
        (block - 1, block),  # both sides of a block boundary
        (block + 4, 2 * block + 1),  # in two later blocks
        (10, vocab - 1),  # far apart, the second in the tail
        (vocab - 2, vocab - 1),  # both in the tail
        (0, block, 2 * block),  # the first column, and the first of later blocks
        (0, vocab // 2, vocab - 1),
        (vocab - 1,),  # the only maximum, in the last column
    ]
    rows = len(cases) + 2
    logits = random_rows(backend, rows, vocab, dtype, generator, row_stride=vocab + 1, offset=offset)
    ckpt = random_rows(backend, rows, vocab, dtype, generator, row_stride=vocab + 1, offset=offset)
    for i, columns in enumerate(cases):
        logits[i, list(columns)] = 100.0
        ckpt[i, list(columns[::-1])] = 50.0
    logits[len(cases)] = ckpt[len(cases)] = 1.5  # all equal
    for x in (logits, ckpt):  # ties everywhere: the max taken by about a fifth of the row
        x[len(cases) + 1] = torch.randint(-2, 3, (vocab,), generator=generator).to(dtype).to(backend.device)
    _, argmax, *_ = check_stats(backend, logits, ckpt, random_actions(backend, rows, vocab, generator))
    assert argmax.tolist()[: len(cases) + 1] == [columns[0] for columns in cases] + [0]


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("dtype", DTYPES)
def test_negative_infinity(backend, dtype, generator):
    block = backend.block(dtype)
    vocab = 2 * block + 7
    logits = random_rows(backend, 7, vocab, dtype, generator, row_stride=vocab + 1, offset=1)
    logits[0, :block] = -INF  # a whole -inf block before the finite values
    logits[1] = -INF  # a whole -inf row
    logits[2, : vocab - 1] = -INF  # the only finite entry in the last column (the tail)
    logits[3, ::3] = -INF  # scattered (a masked vocabulary)
    logits[4, block:] = -INF  # whole -inf blocks after the finite values
    logits[5, 1:] = -INF  # the only finite entry in the first column
    ckpt = random_rows(backend, 7, vocab, dtype, generator)
    ckpt[:, :block] = -INF
    ckpt[1] = -INF  # all -inf, as its logits row
    ckpt[6] = -INF  # an all -inf checkpoint row: target column 0
    actions = random_actions(backend, 7, vocab, generator)
    actions[0] = 1  # gathers a -inf
    actions[1] = 3  # on the all -inf row
    row_max, argmax, shifted_lse, gathered, target = check_stats(backend, logits, ckpt, actions)
    assert row_max[1] == -INF and shifted_lse[1] == -INF and argmax[1] == 0
    assert gathered[0] == -INF and gathered[1] == -INF
    assert argmax[2] == vocab - 1 and row_max[2] == logits[2, -1].double() and shifted_lse[2] == 0
    assert argmax[5] == 0 and row_max[5] == logits[5, 0].double() and shifted_lse[5] == 0
    assert target[6] == logits[6, 0].double()
    assert not torch.isnan(shifted_lse).any()
    check_stats(backend, logits, None, actions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_positive_infinity(backend, dtype, generator):
    block = backend.block(dtype)
    vocab = 2 * block + 7
    logits = random_rows(backend, 5, vocab, dtype, generator)
    logits[0, [vocab - 3, block + 3]] = INF  # the first +inf wins, across blocks
    logits[1, :3] = -INF
    logits[1, 3] = INF
    logits[2, vocab - 5:] = INF  # +inf only in the tail
    logits[3, block - 1] = INF  # in the last column of a block
    logits[4, 10] = INF  # in the first vectors
    actions = random_actions(backend, 5, vocab, generator)
    row_max, argmax, shifted_lse, _, _ = check_stats(backend, logits, None, actions)
    # Relative to a +inf max the normaliser is inf - inf: NaN, as in the reference.
    assert (row_max == INF).all() and shifted_lse.isnan().all()
    assert argmax.tolist() == [block + 3, 3, vocab - 5, block - 1, 10]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_makes_max_and_shifted_lse_nan(backend, dtype, generator):
    block = backend.block(dtype)
    vocab = block + 7
    logits = random_rows(backend, 6, vocab, dtype, generator, row_stride=vocab + 1, offset=1)
    logits[0, 0] = NAN  # the first column
    logits[1, vocab - 1] = NAN  # the last column (the tail)
    logits[2, 100:] = -INF
    logits[2, 3] = NAN  # with -inf
    logits[3, block // 2 + 1] = NAN  # mid-block
    # The whole row; under Triton's interpreter all but the first column, as its numpy max
    # (nanargmax) raises on an all-NaN block.
    logits[4, 1 if backend.interpreted else 0:] = NAN
    row_max, _, shifted_lse, _, _ = check_stats(backend, logits, random_rows(backend, 6, vocab, dtype, generator),
                                                random_actions(backend, 6, vocab, generator))
    assert torch.isnan(row_max[:5]).all() and torch.isnan(shifted_lse[:5]).all()
    assert torch.isfinite(row_max[5]) and torch.isfinite(shifted_lse[5])
    actions = random_actions(backend, 6, vocab, generator)
    row_max, _, shifted_lse, _, target = check_stats(backend, logits, None, actions)
    assert torch.isnan(row_max[:5]).all() and torch.isnan(shifted_lse[:5]).all()
    assert torch.isnan(target[:5]).all()  # target = max without a checkpoint


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_offsets(backend, dtype, generator):
    # The statistics and the softmax are relative to the max, so an offset of 1e4 costs nothing.
    vocab = backend.block(dtype) + 7
    offsets = torch.tensor([[1e4], [-1e4], [0.0], [5e3]], dtype=torch.float64, device=backend.device)
    logits = (random_rows(backend, 4, vocab, torch.float64, generator, scale=3.0) + offsets).to(dtype)
    actions = random_actions(backend, 4, vocab, generator)
    _, argmax, shifted_lse, *_ = check_stats(backend, logits, (logits.double() + 1).to(dtype), actions)
    grads = [random_vector(backend, 4, torch.float32, generator) for _ in range(3)]
    args = (logits, actions, argmax, shifted_lse, *grads)
    assert_error_within_reference(backend.ops.backward(*args), reference.bellman_stats_backward(*args),
                                  float64_backward(*args), dtype)


def test_padding_rows_read_nothing_and_give_zero(backend, generator):
    vocab = 1001
    logits = random_rows(backend, 4, vocab, torch.float32, generator)
    ckpt = random_rows(backend, 4, vocab, torch.float32, generator)
    logits[1] = ckpt[1] = NAN  # a padding row is never read
    actions = random_actions(backend, 4, vocab, generator, padding_rows=[1, 3])
    for t in check_stats(backend, logits, ckpt, actions):
        assert (t[[1, 3]] == 0).all()


def test_empty_batch(backend):
    logits = torch.randn(0, 50, device=backend.device)
    actions = torch.zeros(0, dtype=torch.int64, device=backend.device)
    row_max, argmax, shifted_lse, _, _ = backend.ops.stats(logits, None, actions)
    assert row_max.shape == (0,) and argmax.dtype == torch.int64
    zeros = torch.zeros(0, device=backend.device)
    assert backend.ops.backward(logits, actions, argmax, shifted_lse, zeros, zeros, zeros).shape == (0, 50)
    assert backend.ops.backward_(logits, actions, argmax, shifted_lse, zeros, zeros, zeros) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vocabulary_scale(backend, dtype, generator):
    if backend.interpreted:
        pytest.skip("64 rows of V = 32128 take ~10 s under the Triton interpreter; this runs on a GPU")
    vocab = 32128
    logits = random_rows(backend, 64, vocab, dtype, generator)
    logits[0, : vocab // 2] = -INF
    actions = random_actions(backend, 64, vocab, generator, padding_rows=[5, 6])
    ckpt = random_rows(backend, 64, vocab, dtype, generator)
    _, argmax, shifted_lse, *_ = check_stats(backend, logits, ckpt, actions)
    grads = [random_vector(backend, 64, acc_dtype(dtype), generator) for _ in range(3)]
    grads[1][32:] = 0
    args = (logits, actions, argmax, shifted_lse, *grads)
    assert_error_within_reference(backend.ops.backward(*args), reference.bellman_stats_backward(*args),
                                  float64_backward(*args), dtype)


# ----- backward -----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_backward_matches_reference(backend, rows, vocab, dtype, generator):
    vocab = vocab_size(backend, vocab, dtype)
    args = make_backward_inputs(backend, rows, vocab, dtype, generator)
    logits, actions, _, _, _, grad_shifted_lse, _ = args
    grad = backend.ops.backward(*args)
    assert grad.dtype == dtype and grad.shape == logits.shape and grad.is_contiguous()
    same_dtype = reference.bellman_stats_backward(*args)
    assert_error_within_reference(grad, same_dtype, float64_backward(*args), dtype)
    # Rows without the dense term have at most two non-zeros and no rounding beyond the single cast.
    # (Triton's interpreter casts float32 to bfloat16 by truncation, GPUs round to nearest even: 1 ulp.)
    sparse = (grad_shifted_lse == 0) | (actions < 0)
    assert ((grad[sparse] != 0).sum(dim=-1) <= 2).all()
    if not (backend.interpreted and dtype == torch.bfloat16):
        assert_same_values(grad[sparse], same_dtype[sparse])
    assert (grad[actions < 0] == 0).all()

    in_place = logits.clone()
    assert backend.ops.backward_(in_place, *args[1:]) is None
    assert torch.equal(in_place, grad)


def test_sparse_and_padding_rows_read_no_logits(backend, generator):
    logits, actions, argmax, shifted_lse, *grads = make_backward_inputs(backend, 7, 1001, torch.float32, generator)
    sparse = (grads[1] == 0) | (actions < 0)
    logits[sparse] = NAN
    shifted_lse[sparse] = NAN
    grad = backend.ops.backward(logits, actions, argmax, shifted_lse, *grads)
    assert torch.isfinite(grad[sparse]).all()
    assert ((grad[sparse] != 0).sum(dim=1) <= 2).all()
    assert (grad[actions < 0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 1])
def test_inplace_backward_equals_out_of_place(backend, dtype, offset, generator):
    # Strided, misaligned rows: out of place, the loads and the contiguous output's stores have
    # different 16-byte phases; in place they share them. Nothing beyond the rows is written.
    vocab = backend.block(dtype) + 5
    row_stride = vocab + 9
    args = make_backward_inputs(backend, 7, vocab, dtype, generator, row_stride=row_stride, offset=offset)
    logits = args[0]
    expected = backend.ops.backward(*args)
    inputs_again = [a.clone() for a in args]
    beyond_rows = logits.as_strided((logits.shape[0], row_stride - vocab), (row_stride, 1),
                                    logits.storage_offset() + vocab)
    untouched = beyond_rows.clone()
    assert backend.ops.backward_(*args) is None
    assert torch.equal(logits, expected)
    assert torch.equal(beyond_rows, untouched)
    assert torch.equal(expected, backend.ops.backward(*inputs_again))  # deterministic


def test_gradcheck_float64(backend, generator):
    logits = random_rows(backend, 5, 9, torch.float64, generator).requires_grad_()
    ckpt = random_rows(backend, 5, 9, torch.float64, generator)
    actions = random_actions(backend, 5, 9, generator, padding_rows=[3])

    def differentiable_stats(x):
        row_max, _, shifted_lse, gathered, _ = backend.ops.stats(x, ckpt, actions)
        return row_max, shifted_lse, gathered

    # Under Triton's interpreter, fast mode: a few random directional derivatives, not all 45 columns.
    assert torch.autograd.gradcheck(differentiable_stats, (logits,), fast_mode=backend.interpreted)


# ----- bad inputs, the fake kernels, registration -----

def bad_inputs(backend):
    """name -> (op, args, message, checked by the fake kernel too): arguments every backend rejects."""
    device = backend.device
    logits = torch.randn(3, 50, device=device)
    actions = torch.zeros(3, dtype=torch.int64, device=device)
    argmax, stat = torch.zeros(3, dtype=torch.int64, device=device), torch.zeros(3, device=device)
    backward_args = (actions, argmax, stat, stat, stat, stat)
    transposed = torch.randn(50, 3, device=device).t()
    elsewhere = "cpu" if device.type != "cpu" else "meta"
    stats, backward, backward_ = backend.ops
    return {
        "logits not 2-D": (stats, (logits[None], None, actions), r"\[N, V\]", True),
        "logits dtype": (stats, (logits.int(), None, actions), "float16, bfloat16, float32 or float64", True),
        "logits columns strided": (stats, (transposed, None, actions), backend.stride_message, False),
        "ckpt_logits dtype": (stats, (logits, logits.double(), actions), "ckpt_logits", True),
        "ckpt_logits shape": (stats, (logits, logits[:, :-1], actions), "ckpt_logits", True),
        "actions dtype": (stats, (logits, None, actions.int()), "actions", True),
        "actions length": (stats, (logits, None, actions[:2]), "actions", True),
        "actions not 1-D": (stats, (logits, None, actions[:, None]), "actions", True),
        "actions device": (stats, (logits, None, actions.to(elsewhere)), "actions", True),
        "backward logits dtype": (backward, (logits.int(), *backward_args), "float16, bfloat16, float32 or float64",
                                  True),
        "backward argmax dtype": (backward, (logits, actions, argmax.int(), *backward_args[2:]), "argmax", True),
        "backward grad dtype": (backward, (logits, actions, argmax, stat, stat, stat.double(), stat),
                                "grad_shifted_lse", True),
        "backward grad length": (backward, (logits, actions, argmax, stat, stat[:2], stat, stat), "grad_max", True),
        "in-place backward columns strided": (backward_, (transposed, *backward_args), backend.stride_message, False),
    }


BAD_INPUTS = list(bad_inputs(SimpleNamespace(device=torch.device("cpu"), stride_message="", ops=(None,) * 3)))


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_rejects_bad_inputs(backend, case):
    """The kernel rejects the arguments, and so does its fake kernel (what torch.compile and
    FakeTensorMode run), with the same complaint, for all but the strides it does not see."""
    op, args, message, fake_checks = bad_inputs(backend)[case]
    with pytest.raises(backend.error, match=message):
        op(*args)
    if fake_checks:
        mode = FakeTensorMode()
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with mode, pytest.raises(backend.fake_error, match=message):
            op(*fake_args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_fake_kernels_give_the_outputs_metadata(backend, dtype, generator):
    mode = FakeTensorMode()
    logits = mode.from_tensor(random_rows(backend, 4, 300, dtype, generator))
    actions = mode.from_tensor(random_actions(backend, 4, 300, generator))
    with mode:
        stats = backend.ops.stats(logits, logits, actions)
        shifted_lse = stats[2]
        grad = backend.ops.backward(logits, actions, stats[1], shifted_lse, shifted_lse, shifted_lse, shifted_lse)
    acc = acc_dtype(dtype)
    assert [(s.shape, s.dtype, s.device) for s in stats] == [
        ((4,), stat_dtype, backend.device) for stat_dtype in (acc, torch.int64, acc, acc, acc)]
    assert (grad.shape, grad.dtype, grad.device) == ((4, 300), dtype, backend.device)


def test_action_out_of_range(backend):
    # Not part of the contract (bcoder.loss checks actions first): the C++ CPU kernel checks actions
    # (cheap on the host); on a device a check would cost a sync, so an action >= V reads nothing
    # outside its row and gathers NaN there.
    logits = torch.randn(2, 5, device=backend.device)
    actions = torch.tensor([0, 5], device=backend.device)
    if backend.name == "cpp":
        with pytest.raises(RuntimeError, match="not below the vocabulary size"):
            backend.ops.stats(logits, None, actions)
        zeros = torch.zeros(2)
        with pytest.raises(RuntimeError, match="not below the vocabulary size"):
            backend.ops.backward(logits, actions, actions.clamp(max=0), zeros, zeros, zeros, zeros)
    else:
        gathered = backend.ops.stats(logits, None, actions)[3]
        assert gathered[0] == logits[0, 0] and gathered[1].isnan()


def test_opcheck(backend, generator):
    # The schema, fake kernels, autograd registration and (but under Triton's interpreter, which
    # runs kernels eagerly only) AOT dispatch of each op, on strided misaligned logits.
    vocab = 1001
    logits = random_rows(backend, 4, vocab, torch.float32, generator, row_stride=vocab + 3, offset=1)
    ckpt = random_rows(backend, 4, vocab, torch.float32, generator)
    actions = random_actions(backend, 4, vocab, generator, padding_rows=[2])
    stats = backend.ops.stats(logits, ckpt, actions)
    grads = [random_vector(backend, 4, torch.float32, generator) for _ in range(3)]
    backward_args = (logits, actions, stats[1], stats[2], *grads)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") if backend.interpreted else None
    for op, args in (
        (backend.ops.stats, (logits.detach().requires_grad_(), ckpt, actions)),
        (backend.ops.stats, (logits.detach().requires_grad_(), None, actions)),
        (backend.ops.stats, (logits, None, actions, True)),
        (backend.ops.backward, backward_args),
        (backend.ops.backward_, (logits.clone(), *backward_args[1:])),
    ):
        torch.library.opcheck(op, args, **({} if utils is None else {"test_utils": utils}))


def test_torch_compile(backend, generator):
    if backend.interpreted:
        pytest.skip("Triton's interpreter runs kernels eagerly only: torch.compile of the Triton ops needs a GPU")
    logits = random_rows(backend, 16, 1000, torch.float32, generator)
    ckpt = random_rows(backend, 16, 1000, torch.float32, generator)
    actions = random_actions(backend, 16, 1000, generator, padding_rows=[3])

    def stats_and_grad(logits, ckpt, actions):
        row_max, argmax, shifted_lse, gathered, target = backend.ops.stats(logits, ckpt, actions)
        grads = (target - row_max, shifted_lse.sigmoid(), gathered.cos())
        grad = backend.ops.backward(logits, actions, argmax, shifted_lse, *grads)
        return row_max, argmax, shifted_lse, gathered, target, grad

    torch._dynamo.reset()
    # Inductor on CUDA tensors; on CPU tensors aot_eager (traced through the fake kernels and the
    # autograd registration, with no C++ compiler run).
    compiled = torch.compile(stats_and_grad, fullgraph=True, backend="inductor" if backend.device.type == "cuda"
                             else "aot_eager")
    for got, expected in zip(compiled(logits, ckpt, actions), stats_and_grad(logits, ckpt, actions)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("backend", ["triton", "cuda"], indirect=True)
def test_cuda_graph_capture(backend, generator):
    if backend.device.type != "cuda":
        pytest.skip(f"CUDA graphs need a CUDA device (backend {backend.name!r} runs on CPU tensors here)")
    vocab = 32128
    logits = random_rows(backend, 32, vocab, torch.bfloat16, generator)
    ckpt = random_rows(backend, 32, vocab, torch.bfloat16, generator)
    actions = random_actions(backend, 32, vocab, generator, padding_rows=[0])
    grads = [random_vector(backend, 32, torch.float32, generator) for _ in range(3)]
    grads[1][16:] = 0

    def step():
        row_max, argmax, shifted_lse, gathered, target = backend.ops.stats(logits, ckpt, actions)
        grad = backend.ops.backward(logits, actions, argmax, shifted_lse, *grads)
        in_place = logits.clone()
        backend.ops.backward_(in_place, actions, argmax, shifted_lse, *grads)
        return row_max, argmax, shifted_lse, gathered, target, grad, in_place

    def refill():
        logits.copy_(torch.randn_like(logits))
        ckpt.copy_(torch.randn_like(ckpt))
        actions.copy_(random_actions(backend, 32, vocab, generator, padding_rows=[1]))

    assert_cuda_graph_replays(step, refill)


# ----- through the losses -----

def on_device(inputs, device):
    return [x.detach().to(device).requires_grad_(x.requires_grad) for x in inputs]


def float64_copy(inputs):
    return [x.detach().double().requires_grad_(x.requires_grad) if x.is_floating_point() else x for x in inputs]


def outputs_and_grads(fn, inputs, values_at):
    """fn(*inputs) -> ([outputs..., d logits, d values...], logits): the gradients are of its first
    output summed (a loss or token rewards) w.r.t. inputs[0] and inputs[i] for i in values_at (an
    int or a tuple: the values and a value_residual). The logits are a fresh copy: the in-place
    backward overwrites them."""
    logits = inputs[0].detach().clone().requires_grad_()
    outputs = fn(logits, *inputs[1:])
    outputs = tuple(outputs) if isinstance(outputs, tuple) else (outputs,)
    values_at = (values_at,) if isinstance(values_at, int) else values_at
    grads = torch.autograd.grad(outputs[0].sum(), (logits, *(inputs[i] for i in values_at)))
    return [*(out.detach() for out in outputs), *grads], logits


def assert_backend_matches_float64(fn, inputs, values_at, dtype, backend):
    """fn(*inputs, backend=backend.name) against fn(backend="reference") on float64 copies (the
    oracle): every output and gradient no worse than the same-dtype reference's, elementwise."""
    got, _ = outputs_and_grads(lambda *x: fn(*x, backend=backend.name), inputs, values_at)
    same_dtype, _ = outputs_and_grads(lambda *x: fn(*x, backend="reference"), inputs, values_at)
    oracle, _ = outputs_and_grads(lambda *x: fn(*x, backend="reference"), float64_copy(inputs), values_at)
    assert len(got) == len(oracle)
    for actual, reference_value, oracle_value in zip(got, same_dtype, oracle):
        assert actual.shape == oracle_value.shape
        assert_error_within_reference(actual, reference_value, oracle_value, dtype)


# The loss options: the defaults (the paper's scales, no residual), the old token means and the
# paper's scales stated explicitly, both with a value_residual (whose gradient is compared too).
LOSS_OPTIONS = {"defaults": {}, "token-mean+residual": {"td_scale": "token", "ce_scale": "mean", "residual": True},
                "program-sum+residual": {"td_scale": "program", "ce_scale": "sum", "residual": True}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("operator", reference.OPERATORS)
@pytest.mark.parametrize("inplace_backward", [False, True])
@pytest.mark.parametrize("options", list(LOSS_OPTIONS))
def test_bellman_loss_matches_reference(backend, dtype, operator, inplace_backward, options, generator):
    # bcoder.bellman_loss(backend=...) end to end: the ops, their autograd (bcoder/ops.py) and the
    # loss tail. Rows longer than a block; some programs ground truth (dense rows), some not (two
    # non-zeros per row), ragged lengths (padding rows, and the scales differ), a large logit offset.
    inputs = make_batch(3, 4, backend.block(torch.float32) + 5, dtype, ground_truth=[True, False, True],
                        lengths=[4, 2, 3], generator=generator)
    scales = dict(LOSS_OPTIONS[options])
    if scales.pop("residual", False):
        inputs = (*inputs, torch.randn(3, 4, generator=generator, dtype=torch.float64).to(dtype).requires_grad_())
    inputs = on_device(inputs, backend.device)
    with torch.no_grad():
        inputs[0][0, 1] += 1e4  # exact through shifted_lse
    grad_at = (2, 7) if len(inputs) == 8 else 2  # values (and value_residual)

    def loss(*args, backend):
        return bcoder.bellman_loss(**loss_kwargs(args[:7]), value_residual=args[7] if len(args) == 8 else None,
                                   operator=operator, backend=backend, inplace_backward=inplace_backward, **scales)

    assert_backend_matches_float64(loss, inputs, grad_at, dtype, backend)
    outputs, logits = outputs_and_grads(lambda *x: loss(*x, backend=backend.name), inputs, grad_at)
    # In place, the logits' gradient (after the 5 outputs) is written over the logits' own memory.
    assert (outputs[5].data_ptr() == logits.data_ptr()) == inplace_backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("with_residual", [False, True])
def test_token_rewards_match_reference(backend, dtype, with_residual, generator):
    logits, _, values, actions, mask, _, _ = make_batch(3, 5, 300, dtype, lengths=[5, 1, 3], generator=generator)
    inputs = (logits, values, actions, mask)
    if with_residual:
        inputs += (torch.randn(3, 5, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(),)
    inputs = on_device(inputs, backend.device)

    def token_rewards(*args, backend):
        return bcoder.token_rewards(*args[:4], backend=backend, value_residual=args[4] if len(args) == 5 else None)

    assert_backend_matches_float64(token_rewards, inputs, (1, 4) if with_residual else 1, dtype, backend)
    rewards = token_rewards(*inputs, backend=backend.name)
    assert (rewards[~inputs[3]] == 0).all()


def test_cuda_backend_needs_cuda_kernels_and_tensors(generator):
    """backend="cuda" where it cannot run (a build without the CUDA kernels, CPU tensors) is a
    ValueError saying so, from every entry point, never a dispatcher error."""
    inputs = make_batch(2, 3, 17, generator=generator)
    message = "runs on CUDA tensors" if ops.has_cuda_kernels() else "built with its CUDA kernels"
    calls = {
        "ops.bellman_stats": lambda: ops.bellman_stats(inputs.logits[0], None, inputs.actions[0], backend="cuda"),
        "bellman_loss": lambda: bcoder.bellman_loss(**loss_kwargs(inputs), backend="cuda"),
        "token_rewards": lambda: bcoder.token_rewards(inputs.logits, inputs.values, inputs.actions, inputs.mask,
                                                      backend="cuda"),
        "bellman_loss_from_hidden": lambda: bcoder.bellman_loss_from_hidden(
            hidden=inputs.logits, lm_head_weight=torch.randn(5, 17), ckpt_hidden=None, ckpt_lm_head_weight=None,
            values=inputs.values, actions=inputs.actions % 5, mask=inputs.mask, rewards=inputs.rewards,
            is_ground_truth=inputs.is_ground_truth, backend="cuda"),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=f"backend='cuda' .*{message}"):
            call()
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors"):
        ops.resolve_backend("cpp", "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_backend("fast", "cpu")
    assert [ops.resolve_backend("auto", device) for device in ("cpu", "cuda")] == ["cpp", "triton"]
