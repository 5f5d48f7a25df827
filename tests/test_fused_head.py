"""bcoder.bellman_loss_from_hidden against bellman_loss on explicit logits and the float64 reference."""
import pytest
import torch
from conftest import make_batch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import bcoder
from bcoder import fused_head

OPERATORS = ["conservative", "optimality"]
CHECKPOINTS = ["none", "shared_weight", "own_weight"]  # ckpt_hidden None; given with W_ckpt None; both given
HIDDEN, VOCAB = 16, 97  # distinct, and no [B, T] dim equals VOCAB: the shape spy below relies on it


def make_hidden_batch(batch, steps, dtype, generator, checkpoint="none", ground_truth=None, lengths=None,
                      residual=False):
    """Keyword inputs of bellman_loss_from_hidden (with a value_residual requiring grad if residual).

    float32: Gaussian hidden states and weights. Lower precision: a grid (hidden in {-2..2},
    weights in {-1, -1/2, 0, 1/2, 1}, H = 16) whose logits, multiples of 1/2 in [-32, 32], are
    exact in bf16, so the fused path, the explicit logits and the float64 oracle see the same
    logits and break argmax ties alike (a one-ulp difference could move a bf16 argmax).
    """
    _, _, values, actions, mask, rewards, is_ground_truth = make_batch(
        batch, steps, VOCAB, dtype, lengths=lengths, ground_truth=ground_truth, generator=generator)

    def draw(*shape, weight):
        if dtype == torch.float32:
            return torch.randn(*shape, generator=generator) / (HIDDEN**0.5 if weight else 1.0)
        if weight:
            return torch.randint(-2, 3, shape, generator=generator) / 2
        return torch.randint(-2, 3, shape, generator=generator).double()

    hidden = draw(batch, steps, HIDDEN, weight=False).to(dtype).requires_grad_()
    weight = draw(VOCAB, HIDDEN, weight=True).to(dtype).requires_grad_()
    ckpt_hidden = None if checkpoint == "none" else draw(batch, steps, HIDDEN, weight=False).to(dtype)
    ckpt_weight = draw(VOCAB, HIDDEN, weight=True).to(dtype) if checkpoint == "own_weight" else None
    value_residual = None
    if residual:
        value_residual = torch.randn(batch, steps, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    return dict(hidden=hidden, lm_head_weight=weight, ckpt_hidden=ckpt_hidden, ckpt_lm_head_weight=ckpt_weight,
                values=values, actions=actions, mask=mask, rewards=rewards, is_ground_truth=is_ground_truth,
                value_residual=value_residual)


def trained(inputs):
    """The names of the inputs that get a gradient: hidden, lm_head_weight, values (and value_residual)."""
    return ("hidden", "lm_head_weight", "values") + (() if inputs["value_residual"] is None else ("value_residual",))


def fused_loss_and_grads(inputs, upstream=1.0, **kwargs):
    out = bcoder.bellman_loss_from_hidden(**inputs, **kwargs)
    grads = torch.autograd.grad(out.loss * upstream, tuple(inputs[k] for k in trained(inputs)))
    return out, grads


def explicit_loss_and_grads(inputs, upstream=1.0, double=False, **kwargs):
    """bellman_loss on the materialised logits (float64 copies and the reference backend if double);
    kwargs: its hyper-parameters."""
    cast = (lambda x: x.detach().double().requires_grad_(x.requires_grad)) if double else (lambda x: x)
    hidden, weight, values = (cast(inputs[k]) for k in ("hidden", "lm_head_weight", "values"))
    residual = None if inputs["value_residual"] is None else cast(inputs["value_residual"])
    ckpt_logits = None
    if inputs["ckpt_hidden"] is not None:
        ckpt_weight = inputs["ckpt_lm_head_weight"]
        ckpt_weight = inputs["lm_head_weight"] if ckpt_weight is None else ckpt_weight
        ckpt_logits = (cast(inputs["ckpt_hidden"]) @ cast(ckpt_weight).T).detach()
    out = bcoder.bellman_loss(logits=hidden @ weight.T, ckpt_logits=ckpt_logits, values=values,
                              actions=inputs["actions"], mask=inputs["mask"], rewards=inputs["rewards"],
                              is_ground_truth=inputs["is_ground_truth"], backend="reference" if double else "auto",
                              value_residual=residual, **kwargs)
    return out, torch.autograd.grad(out.loss * upstream, (hidden, weight, values) + (() if residual is None else
                                                                                     (residual,)))


def assert_parity(inputs, upstream=1.0, backend="auto", chunk_rows=None, slack=1.0, **kwargs):
    """Every loss part and the gradients of hidden, lm_head_weight and values: close to bellman_loss
    on explicit logits, and no further from the float64 oracle than it is (plus a dtype tolerance,
    times `slack`)."""
    dtype = inputs["hidden"].dtype
    fused, fused_grads = fused_loss_and_grads(inputs, upstream, backend=backend, chunk_rows=chunk_rows, **kwargs)
    explicit, explicit_grads = explicit_loss_and_grads(inputs, upstream, **kwargs)
    oracle, oracle_grads = explicit_loss_and_grads(inputs, upstream, double=True, **kwargs)
    names = fused._fields + tuple(f"d_{name}" for name in trained(inputs))
    tol = (1e-5 if dtype == torch.float32 else 2**-8) * slack
    for name, got, same_dtype, want in zip(names, (*fused, *fused_grads), (*explicit, *explicit_grads),
                                           (*oracle, *oracle_grads), strict=True):
        assert got.dtype == same_dtype.dtype and got.shape == same_dtype.shape, name
        scale = 1 + want.abs().max().item()
        # The two paths round at different points (chunked fp32 sums, one cast; Triton's interpreter
        # truncates to bf16): a few ulps apart in bf16. The bound that matters is the oracle's below.
        close = tol if dtype == torch.float32 else 4 * tol
        torch.testing.assert_close(got.double(), same_dtype.double(), rtol=close, atol=close * scale,
                                   msg=lambda m: f"{name} vs bellman_loss: {m}")
        error = (got.double() - want).abs().max()
        allowed = (same_dtype.double() - want).abs().max() + tol * scale
        assert error <= allowed, f"{name}: error vs float64 {error:.3g} > allowed {allowed:.3g}"
    return fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_matches_bellman_loss(dtype, operator, checkpoint, generator):
    inputs = make_hidden_batch(5, 9, dtype, generator, checkpoint)
    inputs["is_ground_truth"][:2] = torch.tensor([True, False])  # both kinds of rows in every case
    assert_parity(inputs, upstream=2.5, operator=operator, chunk_rows=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("td_scale,ce_scale", [("program", "sum"), ("token", "mean"), ("program", "mean"),
                                               ("token", "sum")])
def test_scales_and_value_residual(dtype, td_scale, ce_scale, generator):
    """The options reach the loss tail alike on both paths (programs of different lengths, so that the
    scales matter; the residual's gradient compared too), and the defaults are the paper's."""
    inputs = make_hidden_batch(5, 9, dtype, generator, "own_weight", ground_truth=[True, False, True, True, False],
                               lengths=[9, 1, 4, 6, 2], residual=True)
    assert_parity(inputs, td_scale=td_scale, ce_scale=ce_scale, chunk_rows=4)
    if (td_scale, ce_scale) == ("program", "sum"):
        default, paper = (bcoder.bellman_loss_from_hidden(**inputs, **kwargs)
                          for kwargs in ({}, {"td_scale": "program", "ce_scale": "sum"}))
        for name, a, b in zip(default._fields, default, paper):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64, None])
def test_chunk_sizes(chunk_rows, generator):
    inputs = make_hidden_batch(4, 9, torch.float32, generator, "own_weight", lengths=[9, 5, 1, 8])
    assert_parity(inputs, chunk_rows=chunk_rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ground_truth", [False, True])
def test_single_row(dtype, ground_truth, generator):
    inputs = make_hidden_batch(1, 1, dtype, generator, "shared_weight", ground_truth=ground_truth)
    out = assert_parity(inputs)
    assert (out.ce_loss > 0) == ground_truth


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", OPERATORS)
def test_without_ground_truth(dtype, operator, generator):
    inputs = make_hidden_batch(4, 9, dtype, generator, "own_weight", ground_truth=False)
    out = assert_parity(inputs, operator=operator, chunk_rows=5)
    assert out.adv_loss == 0 and out.ce_loss == 0


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton", "cuda"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", OPERATORS)
def test_backends(backend, dtype, operator, generator):
    """The chunks reduced by each backend's ops (on its device; Triton on CPU tensors under its
    interpreter without a GPU), with a value_residual and programs of different lengths (the default
    scales, the paper's, then differ from the token means)."""
    inputs = make_hidden_batch(3, 5, dtype, generator, "own_weight", lengths=[5, 2, 4], residual=True)
    inputs["is_ground_truth"][:2] = torch.tensor([True, False])
    inputs = {name: None if x is None else x.detach().to(backend.device).requires_grad_(x.requires_grad)
              for name, x in inputs.items()}
    # Triton's interpreter casts to bf16 by truncation, not round-to-nearest as GPUs do: each bf16
    # gradient entry can be off by a whole ulp, and d W sums such errors over the rows.
    slack = 4.0 if backend.interpreted and dtype == torch.bfloat16 else 1.0
    assert_parity(inputs, backend=backend.name, operator=operator, chunk_rows=4, slack=slack)


class OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor an op allocates (views excluded: they move no bytes)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.shapes += [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def vocabulary_rows_in_backward(inputs, grad_of, **kwargs):
    """Shapes of the [rows, V] tensors (logits or their gradient) allocated by the backward."""
    out = bcoder.bellman_loss_from_hidden(**inputs, **kwargs)
    with OutputShapes() as spy:
        torch.autograd.grad(out.loss, grad_of)
    return [shape for shape in spy.shapes if shape[-1:] == (VOCAB,)]


@pytest.mark.parametrize("ground_truth", [False, True])
def test_generated_rows_do_no_vocabulary_work(ground_truth, generator):
    """Rows without the CE term get their gradient from two rows of W: no [chunk, V] tensor in
    backward. With ground truth the spy must see the dense chunks (it can see them)."""
    inputs = make_hidden_batch(4, 9, torch.float32, generator, "own_weight", ground_truth=ground_truth,
                               lengths=[9, 9, 3, 6])
    wide = vocabulary_rows_in_backward(inputs, (inputs["hidden"], inputs["lm_head_weight"]), chunk_rows=8)
    if ground_truth:
        assert wide and all(rows <= 8 for rows, _ in wide)
    else:
        assert wide == []


def test_frozen_head_trains_only_values(generator):
    """The phi stage: hidden and W frozen, values train; the backward does no LM-head work."""
    inputs = make_hidden_batch(4, 9, torch.float32, generator, ground_truth=True)
    inputs["hidden"].requires_grad_(False)
    inputs["lm_head_weight"].requires_grad_(False)
    out = bcoder.bellman_loss_from_hidden(**inputs, beta_adv=0.0, beta_ce=0.0)
    expected = bcoder.bellman_loss(logits=inputs["hidden"] @ inputs["lm_head_weight"].T, ckpt_logits=None,
                                   values=inputs["values"], actions=inputs["actions"], mask=inputs["mask"],
                                   rewards=inputs["rewards"], is_ground_truth=inputs["is_ground_truth"],
                                   beta_adv=0.0, beta_ce=0.0)
    torch.testing.assert_close(out.loss, expected.loss)
    torch.testing.assert_close(torch.autograd.grad(out.loss, inputs["values"])[0],
                               torch.autograd.grad(expected.loss, inputs["values"])[0])
    assert vocabulary_rows_in_backward(inputs, inputs["values"], beta_adv=0.0, beta_ce=0.0) == []


def test_checkpoint_gets_no_gradient(generator):
    inputs = make_hidden_batch(3, 9, torch.float32, generator, "own_weight", ground_truth=True)
    ckpt = (inputs["ckpt_hidden"].requires_grad_(), inputs["ckpt_lm_head_weight"].requires_grad_())
    out = bcoder.bellman_loss_from_hidden(**inputs)
    assert torch.autograd.grad(out.loss, ckpt, allow_unused=True) == (None, None)


def test_default_chunk_bounds_the_logits(monkeypatch, generator):
    monkeypatch.setattr(fused_head, "CHUNK_BYTES", 3 * VOCAB * 4)  # three float32 rows per chunk
    inputs = make_hidden_batch(2, 9, torch.float32, generator, ground_truth=True, lengths=[9, 9])
    wide = vocabulary_rows_in_backward(inputs, (inputs["hidden"],))
    assert wide and max(rows for rows, _ in wide) == 3


def test_rejects_bad_inputs(generator):
    inputs = make_hidden_batch(2, 4, torch.float32, generator, "own_weight")
    bad = {
        "hidden": (inputs["hidden"][0], "hidden must be a non-empty"),
        "lm_head_weight": (inputs["lm_head_weight"][:, :-1], "lm_head_weight must have shape"),
        "ckpt_hidden": (inputs["ckpt_hidden"][:, :-1], "ckpt_hidden must have shape"),
        "ckpt_lm_head_weight": (inputs["ckpt_lm_head_weight"][:-1], "ckpt_lm_head_weight must have shape"),
        "values": (inputs["values"][:, :-1], "values must have shape"),
        "actions": (inputs["actions"].clamp(max=VOCAB - 1) + VOCAB, "actions must lie in"),
        "rewards": (inputs["rewards"][:1], "rewards must have shape"),
    }
    bad["value_residual"] = (inputs["values"][:, :1], "value_residual must have shape")
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            bcoder.bellman_loss_from_hidden(**{**inputs, name: value})
    with pytest.raises(ValueError, match="ckpt_lm_head_weight must have hidden's dtype"):
        bcoder.bellman_loss_from_hidden(**{**inputs, "ckpt_lm_head_weight": inputs["ckpt_lm_head_weight"].double()})
    for kwargs, message in (({"chunk_rows": 0}, "chunk_rows"), ({"chunk_rows": 2.0}, "chunk_rows"),
                            ({"operator": "greedy"}, "operator"), ({"backend": "tpu"}, "backend"),
                            ({"td_scale": "tokens"}, "td_scale must be one of"),
                            ({"ce_scale": "total"}, "ce_scale must be one of"),
                            ({"backend": "cuda"}, "backend='cuda'")):
        with pytest.raises(ValueError, match=message):
            bcoder.bellman_loss_from_hidden(**inputs, **kwargs)
