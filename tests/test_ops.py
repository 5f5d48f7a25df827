"""The fused op's row statistics and gradient against the float64 oracle (bcoder.reference)."""
import pytest
import torch

from bcoder import ops, reference

NEG_INF = float("-inf")
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Rows wider than the kernel's 2048-element chunk, not a multiple of it or of any vector width.
SHAPES = [(1, 1), (1, 7), (5, 2049), (3, 4096 + 5), (2, 32128 + 7)]


def random_rows(rows, vocab, dtype, generator, scale=3.0, offset=0.0):
    x = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * scale + offset
    return x.to(dtype)


def random_actions(rows, vocab, generator, padding=True):
    actions = torch.randint(0, vocab, (rows,), generator=generator)
    if padding and rows > 1:
        actions[torch.rand(rows, generator=generator) < 0.25] = -1
    return actions


def assert_stats_match(logits, ckpt, actions):
    stats = torch.ops.bcoder.bellman_stats(logits, ckpt, actions)
    expected = reference.bellman_stats(logits.double(), None if ckpt is None else ckpt.double(), actions)
    names = ("max", "argmax", "shifted_lse", "gathered", "target")
    for name, got, want in zip(names, stats, expected):
        if name == "argmax":
            assert torch.equal(got, want), name
        else:
            assert got.dtype == ops.stats_dtype(logits), name
            # Everything but shifted_lse is an element of the input: exact. shifted_lse: fp32 accumulation.
            tol = 0 if name != "shifted_lse" else (1e-12 if logits.dtype == torch.float64 else 2e-5)  # in [0, log V]
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=0, equal_nan=True, msg=name)
    return stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_stats_match_reference(rows, vocab, dtype, generator):
    logits = random_rows(rows, vocab, dtype, generator)
    ckpt = random_rows(rows, vocab, dtype, generator)
    actions = random_actions(rows, vocab, generator)
    assert_stats_match(logits, ckpt, actions)
    assert_stats_match(logits, None, actions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_take_the_first_index(dtype, generator):
    rows, vocab = 4, 5000
    logits = random_rows(rows, vocab, dtype, generator)
    ckpt = random_rows(rows, vocab, dtype, generator)
    for i, columns in enumerate([(3, 4), (10, 4999), (2100, 2101), (0, 2048, 4096)]):
        logits[i, list(columns)] = 100.0
        ckpt[i, list(columns[::-1])] = 50.0
    stats = assert_stats_match(logits, ckpt, random_actions(rows, vocab, generator, padding=False))
    assert stats[1].tolist() == [3, 10, 2100, 0]
    constant = torch.full((2, 3000), 1.5, dtype=dtype)
    assert assert_stats_match(constant, constant, torch.tensor([0, 2]))[1].tolist() == [0, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_infinities(dtype, generator):
    rows, vocab = 4, 6000
    logits = random_rows(rows, vocab, dtype, generator)
    ckpt = random_rows(rows, vocab, dtype, generator)
    logits[0, ::3] = NEG_INF  # scattered -inf (masked vocabulary)
    logits[1, :4096] = NEG_INF  # whole leading chunks -inf: the running max starts at -inf
    logits[2] = NEG_INF  # the whole row
    ckpt[2] = NEG_INF
    logits[3, 5000:] = NEG_INF
    actions = torch.tensor([1, 4097, 7, 10])
    stats = assert_stats_match(logits, ckpt, actions)
    assert stats[0][2] == NEG_INF and stats[2][2] == NEG_INF and stats[1][2] == 0


@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_large_offsets(offset, generator):
    logits = random_rows(3, 3001, torch.float32, generator, offset=offset)
    assert_stats_match(logits, random_rows(3, 3001, torch.float32, generator, offset=offset), torch.tensor([0, 5, 3000]))


def test_nan_makes_max_and_lse_nan(generator):
    logits = random_rows(3, 3000, torch.float32, generator)
    logits[0, 2500] = float("nan")
    logits[1, 0] = float("nan")
    row_max, _, shifted_lse, _, _ = torch.ops.bcoder.bellman_stats(logits, None, torch.tensor([0, 1, 2]))
    assert row_max[:2].isnan().all() and shifted_lse[:2].isnan().all()
    assert row_max[2].isfinite() and shifted_lse[2].isfinite()


def test_padding_rows_are_not_read():
    logits = torch.full((2, 10), float("nan"))
    logits[1] = torch.arange(10.0)
    stats = torch.ops.bcoder.bellman_stats(logits, logits, torch.tensor([-1, 3]))
    assert [s[0].item() for s in stats] == [0, 0, 0, 0, 0]
    assert stats[1][1] == 9 and stats[3][1] == 3


def test_strided_rows(generator):
    wide = random_rows(4, 3000, torch.float32, generator)
    logits, ckpt = wide[:, :2500], wide[:, 100:2600]  # row stride 3000, last dim contiguous
    assert_stats_match(logits, ckpt, random_actions(4, 2500, generator))


def test_action_out_of_range_is_an_error():
    with pytest.raises(RuntimeError, match="not below the vocabulary size"):
        torch.ops.bcoder.bellman_stats(torch.zeros(2, 5), None, torch.tensor([0, 5]))


def random_stat_grads(rows, dtype, generator, dense_fraction=0.5):
    grads = [torch.randn(rows, generator=generator, dtype=torch.float64).to(dtype) for _ in range(3)]
    grads[1][torch.rand(rows, generator=generator) >= dense_fraction] = 0  # generated programs: no CE
    return grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,vocab", SHAPES)
def test_backward_matches_reference(rows, vocab, dtype, generator):
    logits = random_rows(rows, vocab, dtype, generator)
    actions = random_actions(rows, vocab, generator)
    if rows > 1:
        actions[0] = torch.argmax(logits[0].float())  # the taken action is the argmax: columns coincide
    _, argmax, shifted_lse, _, _ = torch.ops.bcoder.bellman_stats(logits, None, actions)
    grad_max, grad_shifted_lse, grad_gathered = random_stat_grads(rows, shifted_lse.dtype, generator)
    grad = torch.ops.bcoder.bellman_stats_backward(logits, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered)
    expected = reference.bellman_stats_backward(logits.double(), actions, argmax, shifted_lse.double(), grad_max.double(),
                                                grad_shifted_lse.double(), grad_gathered.double())
    assert grad.dtype == dtype and grad.shape == logits.shape
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.double(), expected, atol=1e-6 if dtype != torch.float64 else 1e-14,
                               rtol=eps if dtype != torch.float32 else 1e-5)
    dense_free = (grad_shifted_lse == 0) | (actions < 0)
    assert ((grad[dense_free] != 0).sum(dim=-1) <= 2).all()

    in_place = logits.clone()
    torch.ops.bcoder.bellman_stats_backward_(in_place, actions, argmax, shifted_lse, grad_max, grad_shifted_lse, grad_gathered)
    assert torch.equal(in_place, grad)


def test_opcheck(generator):
    logits = random_rows(6, 300, torch.float32, generator).requires_grad_()
    ckpt = random_rows(6, 300, torch.float32, generator)
    actions = random_actions(6, 300, generator)
    torch.library.opcheck(torch.ops.bcoder.bellman_stats.default, (logits, ckpt, actions))
    torch.library.opcheck(torch.ops.bcoder.bellman_stats.default, (logits, None, actions))
    _, argmax, shifted_lse, _, _ = torch.ops.bcoder.bellman_stats(logits.detach(), ckpt, actions)
    grads = random_stat_grads(6, torch.float32, generator)
    args = (logits.detach(), actions, argmax, shifted_lse, *grads)
    torch.library.opcheck(torch.ops.bcoder.bellman_stats_backward.default, args)
    torch.library.opcheck(torch.ops.bcoder.bellman_stats_backward_.default, (logits.detach().clone(), *args[1:]))


def test_gradcheck_float64(generator):
    logits = random_rows(5, 9, torch.float64, generator).requires_grad_()
    actions = random_actions(5, 9, generator)
    ckpt = random_rows(5, 9, torch.float64, generator)

    def differentiable_stats(x):
        row_max, _, shifted_lse, gathered, _ = torch.ops.bcoder.bellman_stats(x, ckpt, actions)
        return row_max, shifted_lse, gathered

    assert torch.autograd.gradcheck(differentiable_stats, (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_positive_infinity(dtype, generator):
    logits = random_rows(3, 3000, dtype, generator)
    logits[0, 2999] = float("inf")  # in the scalar tail of a chunk
    logits[1, 10] = float("inf")  # in its vectorised part
    assert_stats_match(logits, None, torch.tensor([0, 1, 2]))
