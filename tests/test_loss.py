"""bcoder.bellman_loss / token_rewards / BellmanLoss against the float64 reference."""
import pytest
import torch
from conftest import assert_error_within_reference, loss_kwargs, make_batch

import bcoder
from bcoder import fused_head, loss, reference

OPERATORS = reference.OPERATORS
# (td_scale, ce_scale): the paper's (the defaults), the old token means, and the two mixed
SCALES = [("program", "sum"), ("token", "mean"), ("program", "mean"), ("token", "sum")]


def float64_copy(inputs):
    return [x.detach().double().requires_grad_(x.requires_grad) if x.is_floating_point() else x for x in inputs]


def random_residual(inputs, generator):
    """A value_residual (h1 - h2) for the inputs: values' shape and dtype, requires grad."""
    values = inputs[2]
    return torch.randn(values.shape, generator=generator, dtype=torch.float64).to(values.dtype).requires_grad_()


def loss_and_grads(inputs, upstream=1.0, residual=None, **kwargs):
    """bellman_loss and the gradients of its loss w.r.t. logits, values (and the residual, if given)."""
    out = bcoder.bellman_loss(**loss_kwargs(inputs), value_residual=residual, **kwargs)
    logits, values = inputs[0], inputs[2]
    grads = torch.autograd.grad(out.loss * upstream, (logits, values) + (() if residual is None else (residual,)))
    return out, grads


def assert_matches_float64(inputs, upstream=1.0, residual=None, **kwargs):
    """Every loss part and the gradients (logits, values, value_residual when given), element by
    element: the error against the float64 oracle is at most the same-dtype reference's error there
    plus an ulp of the inputs' dtype (conftest.assert_error_within_reference)."""
    out, grads = loss_and_grads(inputs, upstream, residual, **kwargs)
    residual64 = None if residual is None else residual.detach().double().requires_grad_()
    oracle, oracle_grads = loss_and_grads(float64_copy(inputs), upstream, residual64,
                                          **{**kwargs, "backend": "reference"})
    same_dtype, same_dtype_grads = loss_and_grads(inputs, upstream, residual, **{**kwargs, "backend": "reference"})
    dtype = inputs[0].dtype
    names = oracle._fields + ("d_logits", "d_values", "d_value_residual")
    for name, got, ref, want in zip(names, (*out, *grads), (*same_dtype, *same_dtype_grads),
                                    (*oracle, *oracle_grads), strict=False):
        assert got.shape == want.shape, name
        try:
            assert_error_within_reference(got, ref, want, dtype)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("td_scale,ce_scale", SCALES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_matches_reference(dtype, operator, td_scale, ce_scale, with_residual, generator):
    inputs = make_batch(6, 9, 1031, dtype, lengths=[9, 1, 4, 9, 2, 7], ground_truth=[1, 0, 1, 1, 0, 0],
                        generator=generator)
    residual = random_residual(inputs, generator) if with_residual else None
    assert_matches_float64(inputs, residual=residual, operator=operator, td_scale=td_scale, ce_scale=ce_scale)


def hand_batch(residual):
    """Two programs over a vocabulary of 2 with all-zero logits and raw values, so A = 0, V = 1 + r,
    Q = 1 + r and every token's cross-entropy is ln 2: program 0 has 3 tokens and reward 1, program 1
    one token and reward -1 (padding after it), both ground truth."""
    logits = torch.zeros(2, 3, 2, dtype=torch.float64, requires_grad=True)
    values = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return dict(logits=logits, ckpt_logits=None, values=values, actions=torch.zeros(2, 3, dtype=torch.int64),
                mask=mask, rewards=torch.tensor([1.0, -1.0], dtype=torch.float64),
                is_ground_truth=torch.tensor([True, True]),
                value_residual=None if residual is None else torch.tensor(residual, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_scales_and_residual_by_hand(backend):
    """The scales' definitions (and the defaults: the paper's), on numbers worked out by hand, so
    that the oracle is checked too. gamma = 0: delta_t = r_t - Q_t. Without residual, program 0's
    squared errors are (1, 1, 0) and program 1's (4): per program 2/3 and 4; CE ln 2 per token."""
    ln2 = torch.tensor(2.0, dtype=torch.float64).log().item()
    cases = {  # (td_scale, ce_scale) -> (td_loss, ce_loss); None: the defaults
        None: ((2 / 3 + 4) / 2, 4 * ln2 / 2),
        ("program", "sum"): ((2 / 3 + 4) / 2, 4 * ln2 / 2),
        ("token", "mean"): ((1 + 1 + 0 + 4) / 4, ln2),
        ("program", "mean"): ((2 / 3 + 4) / 2, ln2),
        ("token", "sum"): ((1 + 1 + 0 + 4) / 4, 4 * ln2 / 2),
    }
    for scales, (td, ce) in cases.items():
        kwargs = {} if scales is None else dict(zip(("td_scale", "ce_scale"), scales))
        out = bcoder.bellman_loss(**hand_batch(None), gamma=0.0, backend=backend, **kwargs)
        assert (out.td_loss.item(), out.adv_loss.item(), out.ce_loss.item()) == pytest.approx((td, 0.0, ce)), scales
    # The residual is added after the cap: V = 1 + r, so Q = 1 + r exceeds r_max = 1 where r > 0.
    # Program 0, r = (0.5, -1, 2): delta = (-1.5, 0, -2); program 1, r = 0.5: delta = -2.5.
    inputs = hand_batch([[0.5, -1.0, 2.0], [0.5, 7.0, 7.0]])
    out = bcoder.bellman_loss(**inputs, gamma=0.0, backend=backend)
    assert out.td_loss.item() == pytest.approx(((1.5**2 + 0 + 2**2) / 3 + 2.5**2) / 2)
    torch.testing.assert_close(out.q, torch.tensor([[1.5, 0.0, 3.0], [1.5, 0.0, 0.0]], dtype=torch.float64))
    # gamma = 1: the stop-gradient target of token t is Q(s_{t+1}, a) = 1 + r_{t+1}, residual included.
    out = bcoder.bellman_loss(**inputs, gamma=1.0, backend=backend, td_scale="token")
    assert out.td_loss.item() == pytest.approx(((0.0 - 1.5) ** 2 + (3.0 - 0.0) ** 2 + (1 - 3.0) ** 2 + 2.5**2) / 4)
    # Only the residual's own step: d td / d r_t = -2 delta_t / (program's tokens * programs).
    residual = inputs["value_residual"].requires_grad_()
    out = bcoder.bellman_loss(**inputs, gamma=0.0, beta_adv=0.0, beta_ce=0.0, backend=backend)
    (grad,) = torch.autograd.grad(out.loss, residual)
    torch.testing.assert_close(grad, torch.tensor([[2 * 1.5 / 6, 0.0, 2 * 2 / 6], [2 * 2.5 / 2, 0.0, 0.0]],
                                                  dtype=torch.float64))


@pytest.mark.parametrize("operator", OPERATORS)
def test_phi_stage_without_ckpt_logits(operator, generator):
    inputs = make_batch(4, 7, 257, generator=generator)._replace(ckpt_logits=None)
    inputs.logits.requires_grad_(False)  # phi-stage: the advantage is frozen, only values train
    out = bcoder.bellman_loss(**inputs._asdict(), operator=operator)
    same_dtype = reference.bellman_loss(**inputs._asdict(), operator=operator)
    oracle = reference.bellman_loss(**{**inputs._asdict(), "logits": inputs.logits.double(),
                                       "values": inputs.values.detach().double()}, operator=operator)
    for got, ref, want in zip(out, same_dtype, oracle):
        assert_error_within_reference(got, ref, want, torch.float32)
    (grad,) = torch.autograd.grad(out.loss, inputs.values)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("td_scale,ce_scale", SCALES[:2])
def test_gradcheck_float64(td_scale, ce_scale, generator):
    # gamma = 0: the TD target is a stop-gradient, so finite differences would see its
    # dependence on logits and values; the target path is checked against the reference above.
    for ground_truth in ([True, False, True], False):
        inputs = make_batch(3, 4, 6, torch.float64, lengths=[4, 1, 2], ground_truth=ground_truth,
                            generator=generator)
        residual = random_residual(inputs, generator)

        def loss(logits, values, value_residual, inputs=inputs):
            return bcoder.bellman_loss(**inputs._replace(logits=logits, values=values)._asdict(), gamma=0.0,
                                       value_residual=value_residual, td_scale=td_scale, ce_scale=ce_scale).loss

        assert torch.autograd.gradcheck(loss, (inputs.logits, inputs.values, residual))


@pytest.mark.parametrize("batch,steps,vocab", [(1, 1, 1), (1, 1, 50), (2, 3, 1), (2, 2, 32128 + 7)])
def test_edge_shapes(batch, steps, vocab, generator):
    inputs = make_batch(batch, steps, vocab, generator=generator)
    assert_matches_float64(inputs)
    assert_matches_float64(inputs, residual=random_residual(inputs, generator), td_scale="token", ce_scale="mean")


def test_ties_infinities_and_offsets(generator):
    logits, ckpt, values, actions, mask, rewards, gt = make_batch(4, 6, 300, generator=generator)
    with torch.no_grad():
        logits[0, :, 7] = logits[0, :, 11] = logits[0].max() + 1  # ties in the trained logits
        ckpt[1, :, 20] = ckpt[1, :, 3] = ckpt[1].max() + 1  # ties in the target argmax
        logits[2, :, ::2] = ckpt[2, :, ::2] = float("-inf")  # a vocabulary masked for both models
        actions[2] = 1
        logits[3] += 1e4
        ckpt[3] -= 1e4
    inputs = (logits, ckpt, values, actions, mask, rewards, gt)
    assert_matches_float64(inputs)
    assert_matches_float64(inputs, residual=random_residual(inputs, generator), td_scale="token", ce_scale="mean")


@pytest.mark.parametrize("td_scale,ce_scale", SCALES[:2])
def test_length_one_programs_and_no_ground_truth(td_scale, ce_scale, generator):
    scales = {"td_scale": td_scale, "ce_scale": ce_scale}
    inputs = make_batch(5, 4, 100, lengths=[1, 1, 4, 1, 2], ground_truth=False, generator=generator)
    out = assert_matches_float64(inputs, residual=random_residual(inputs, generator), **scales)
    assert out.adv_loss == 0 and out.ce_loss == 0
    assert_matches_float64(make_batch(5, 4, 100, ground_truth=True, generator=generator), **scales)


def test_scales_differ_only_with_programs_of_different_lengths(generator):
    """td_scale and ce_scale change the loss exactly when the programs' lengths differ (with equal
    lengths each "program" mean is the "token" mean, each "sum" the "mean" times T), and the
    defaults are the paper's: program and sum."""
    inputs = make_batch(4, 6, 50, lengths=[6, 6, 6, 6], ground_truth=[True, False, True, True], generator=generator)
    token, program = (bcoder.bellman_loss(**inputs._asdict(), td_scale=s, ce_scale="mean") for s in ("token", "program"))
    torch.testing.assert_close(program.td_loss, token.td_loss)
    summed = bcoder.bellman_loss(**inputs._asdict(), ce_scale="sum")
    torch.testing.assert_close(summed.ce_loss, 6 * token.ce_loss)
    inputs = make_batch(4, 6, 50, lengths=[6, 1, 3, 2], ground_truth=[True, False, True, True], generator=generator)
    default = bcoder.bellman_loss(**inputs._asdict())
    paper = bcoder.bellman_loss(**inputs._asdict(), td_scale="program", ce_scale="sum")
    old = bcoder.bellman_loss(**inputs._asdict(), td_scale="token", ce_scale="mean")
    assert torch.equal(default.loss, paper.loss) and torch.equal(default.td_loss, paper.td_loss)
    assert torch.equal(default.ce_loss, paper.ce_loss)
    assert not torch.isclose(paper.td_loss, old.td_loss) and not torch.isclose(paper.ce_loss, old.ce_loss)
    assert torch.equal(paper.adv_loss, old.adv_loss)


def test_non_contiguous_inputs(generator):
    logits, ckpt, values, actions, mask, rewards, gt = make_batch(5, 3, 64, generator=generator)
    wide = torch.randn(3, 5, 80, generator=generator).transpose(0, 1)[:, :, :64].requires_grad_()
    ckpt_t = ckpt.transpose(0, 1).contiguous().transpose(0, 1)
    assert not wide.is_contiguous() and not ckpt_t.is_contiguous()
    values_t = values.detach().t().contiguous().t().requires_grad_()
    assert_matches_float64((wide, ckpt_t, values_t, actions.t().contiguous().t(), mask, rewards, gt))


def test_upstream_gradient_is_applied(generator):
    assert_matches_float64(make_batch(3, 5, 40, generator=generator), upstream=-3.7)


@pytest.mark.parametrize("td_scale,ce_scale", SCALES[:2])
def test_parts_are_detached_and_sum_to_loss(td_scale, ce_scale, generator):
    inputs = make_batch(3, 5, 40, generator=generator)
    out = bcoder.bellman_loss(**inputs._asdict(), value_residual=random_residual(inputs, generator),
                              td_scale=td_scale, ce_scale=ce_scale)
    assert out.loss.requires_grad and not any(p.requires_grad for p in out[1:])
    torch.testing.assert_close(out.loss.detach(), out.td_loss + 0.1 * out.adv_loss + 0.5 * out.ce_loss)


def test_inplace_backward(generator):
    inputs = make_batch(4, 6, 3000, generator=generator)
    logits, values = inputs[0], inputs[2]
    out = bcoder.bellman_loss(**inputs._asdict())
    expected_logits_grad, expected_values_grad = torch.autograd.grad(out.loss, (logits, values))
    buffer = logits.detach().clone().requires_grad_()
    out = bcoder.bellman_loss(**inputs._replace(logits=buffer)._asdict(), inplace_backward=True)
    out.loss.backward()
    assert buffer.grad.data_ptr() == buffer.data_ptr()  # the gradient took the logits' memory
    torch.testing.assert_close(buffer.grad, expected_logits_grad, rtol=0, atol=0)
    torch.testing.assert_close(values.grad, expected_values_grad, rtol=0, atol=0)


def test_nan_propagates(generator):
    inputs = make_batch(3, 4, 50, lengths=[4, 4, 4], generator=generator)
    with torch.no_grad():
        inputs.logits[1, 2, 7] = float("nan")
    assert bcoder.bellman_loss(**inputs._asdict()).loss.isnan()
    inputs = make_batch(3, 4, 50, lengths=[2, 4, 4], generator=generator)
    with torch.no_grad():  # NaN on padding is never read
        inputs.logits[0, 3] = float("nan")
    assert bcoder.bellman_loss(**inputs._asdict()).loss.isfinite()


def test_token_rewards_match_reference(generator):
    inputs = make_batch(5, 7, 301, generator=generator)
    logits, _, values, actions, mask, _, _ = inputs
    got = bcoder.token_rewards(logits, values, actions, mask)
    same_dtype = reference.token_rewards(logits, values, actions, mask)
    oracle = reference.token_rewards(logits.double(), values.double(), actions, mask)
    assert_error_within_reference(got, same_dtype, oracle, torch.float32)
    assert (got[~mask] == 0).all()
    # With the residual r: V = r_max - softabs(u) + r in Q(s_t, a_t) and in V(s_{t+1}), so each
    # token's reward gains r_t - gamma r_{t+1} (r after the last token: 0).
    residual = random_residual(inputs, generator)
    with_residual = bcoder.token_rewards(logits, values, actions, mask, gamma=0.9, value_residual=residual)
    oracle = reference.token_rewards(logits.double(), values.double(), actions, mask, gamma=0.9,
                                     value_residual=residual.double())
    same_dtype = reference.token_rewards(logits, values, actions, mask, gamma=0.9, value_residual=residual)
    assert_error_within_reference(with_residual, same_dtype, oracle, torch.float32)
    shift = residual - 0.9 * torch.where(reference.shift_left(mask), reference.shift_left(residual), 0.0)
    torch.testing.assert_close(with_residual, torch.where(mask, bcoder.token_rewards(
        logits, values, actions, mask, gamma=0.9) + shift, 0.0))
    (grad,) = torch.autograd.grad(with_residual.sum(), residual)
    assert grad.abs().sum() > 0


def test_module_matches_function(generator):
    inputs = make_batch(3, 4, 33, lengths=[4, 1, 2], ground_truth=[True, True, False], generator=generator)
    module = bcoder.BellmanLoss(gamma=0.9, beta_adv=0.2, beta_ce=0.0, operator="optimality")
    torch.testing.assert_close(module(*inputs).loss,
                               bcoder.bellman_loss(**inputs._asdict(), gamma=0.9, beta_adv=0.2, beta_ce=0.0,
                                                   operator="optimality").loss)
    assert "optimality" in repr(module) and "td_scale='program'" in repr(module)
    residual = random_residual(inputs, generator)
    module = bcoder.BellmanLoss(td_scale="token", ce_scale="mean")
    got = module(*inputs, value_residual=residual)
    want = bcoder.bellman_loss(**inputs._asdict(), value_residual=residual, td_scale="token", ce_scale="mean")
    for name, a, b in zip(got._fields, got, want):
        torch.testing.assert_close(a, b, msg=name)
    assert "td_scale='token', ce_scale='mean'" in repr(module)


def test_torch_compile_fullgraph(generator):
    torch._dynamo.reset()
    inputs = make_batch(3, 5, 70, lengths=[5, 1, 3], generator=generator)
    residual = random_residual(inputs, generator)
    compiled = torch.compile(bcoder.bellman_loss, fullgraph=True, backend="aot_eager")
    out = compiled(**inputs._asdict(), value_residual=residual)
    eager = bcoder.bellman_loss(**inputs._asdict(), value_residual=residual)
    torch.testing.assert_close(out.loss, eager.loss)
    got = torch.autograd.grad(out.loss, (inputs[0], inputs[2], residual))
    want = torch.autograd.grad(eager.loss, (inputs[0], inputs[2], residual))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def bad_input_cases():
    def case(index, value):
        def build(inputs):
            inputs = list(inputs)
            inputs[index] = value(inputs)
            return inputs
        return build

    def mask_with(rows):
        return lambda inputs: torch.tensor(rows, dtype=torch.bool)

    return {
        "logits": (case(0, lambda x: x[0][0]), "logits must be a \\[B, T, V\\]"),
        "logits dtype": (case(0, lambda x: x[0].detach().long()), "logits must be float"),
        "empty batch": (lambda x: [t[:0] for t in x], "logits is empty"),
        "ckpt_logits shape": (case(1, lambda x: x[1][:, :, :-1]), "ckpt_logits must have shape"),
        "ckpt_logits dtype": (case(1, lambda x: x[1].double()), "ckpt_logits must have dtype"),
        "values shape": (case(2, lambda x: x[2][:, :-1]), "values must have shape"),
        "actions dtype": (case(3, lambda x: x[3].int()), "actions must have dtype torch.int64"),
        "actions range": (case(3, lambda x: x[3] + 1000), "actions must lie in \\[0, 17\\)"),
        "negative action": (case(3, lambda x: x[3] - 1000), "actions must lie in"),
        "mask dtype": (case(4, lambda x: x[4].long()), "mask must have dtype torch.bool"),
        "mask not a prefix": (case(4, mask_with([[1, 0, 1], [1, 1, 1]])), "prefix of ones"),
        "empty program": (case(4, mask_with([[0, 0, 0], [1, 1, 1]])), "at least one token"),
        "rewards shape": (case(5, lambda x: x[5][:1]), "rewards must have shape \\[2\\]"),
        "is_ground_truth dtype": (case(6, lambda x: x[6].float()), "is_ground_truth must have dtype"),
        "device": (case(2, lambda x: x[2].to("meta")), "values is on meta"),
    }


@pytest.mark.parametrize("name", list(bad_input_cases()))
def test_bad_input_is_a_value_error(name, generator):
    build, message = bad_input_cases()[name]
    inputs = make_batch(2, 3, 17, lengths=[3, 3], generator=generator)
    with pytest.raises(ValueError, match=message):
        bcoder.bellman_loss(**loss_kwargs(build(inputs)))


def test_bad_operator_and_backend(generator):
    inputs = make_batch(2, 3, 17, generator=generator)
    with pytest.raises(ValueError, match="backend must be one of"):
        bcoder.bellman_loss(**inputs._asdict(), backend="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        bcoder.BellmanLoss(backend="fast")
    # Without the CUDA kernels (this CPU-only build) or on CPU tensors: a ValueError saying which.
    with pytest.raises(ValueError, match="backend='cuda' (needs bcoder._C built with its CUDA kernels|runs on CUDA)"):
        bcoder.bellman_loss(**inputs._asdict(), backend="cuda")


@pytest.mark.parametrize("argument,message", [
    ("operator", r"operator must be one of \('conservative', 'optimality'\), got 'greedy'"),
    ("td_scale", r"td_scale must be one of \('program', 'token'\), got 'greedy'"),
    ("ce_scale", r"ce_scale must be one of \('sum', 'mean'\), got 'greedy'"),
    ("logit_terms", r"logit_terms must be one of \('all', 'ce'\), got 'greedy'"),
])
def test_options_are_checked_alike_everywhere(argument, message, generator):
    """Every function taking the operator or a scale rejects an unknown one with reference's
    check_operator / check_scales error."""
    inputs = make_batch(2, 3, 17, generator=generator)
    stats = {name: torch.zeros(2, 3) for name in ("row_max", "shifted_lse", "gathered", "target")}
    rest = {"values": inputs.values, "mask": inputs.mask, "rewards": inputs.rewards,
            "is_ground_truth": inputs.is_ground_truth}
    bad = {argument: "greedy"}
    calls = {
        "bellman_loss": lambda: bcoder.bellman_loss(**inputs._asdict(), **bad),
        "bellman_loss reference": lambda: bcoder.bellman_loss(**inputs._asdict(), **bad, backend="reference"),
        "BellmanLoss": lambda: bcoder.BellmanLoss(**bad),
        "losses_from_stats": lambda: loss.losses_from_stats(**stats, **rest, **bad),
        "reference.bellman_loss": lambda: reference.bellman_loss(**inputs._asdict(), **bad),
        "bellman_loss_from_hidden": lambda: fused_head.bellman_loss_from_hidden(
            hidden=inputs.logits, lm_head_weight=torch.randn(5, 17), ckpt_hidden=None, ckpt_lm_head_weight=None,
            actions=inputs.actions % 5, **rest, **bad),
    }
    if argument == "operator":
        calls["reference.next_targets"] = lambda: reference.next_targets(inputs.logits, None, inputs.values,
                                                                         inputs.mask, operator="greedy")
    for name, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
            pytest.fail(f"{name} accepted {bad}")


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_ce_only_control_moves_the_logits_by_l_ce_alone(backend, with_residual, generator):
    """logit_terms "ce" (the CE-only control): the same loss value; the logits' gradient is beta_ce * dL_ce alone
    (the float64 oracle's), while the values' (and the residual's) gradient is the full loss's, L_Q's."""
    inputs = make_batch(5, 7, 301, torch.float64, lengths=[7, 2, 5, 1, 6], ground_truth=[1, 0, 1, 1, 0],
                        generator=generator)
    residual = random_residual(inputs, generator) if with_residual else None
    wrt = (inputs.logits, inputs.values) + (() if residual is None else (residual,))
    control = bcoder.bellman_loss(**loss_kwargs(inputs), value_residual=residual, backend=backend, logit_terms="ce")
    full = bcoder.bellman_loss(**loss_kwargs(inputs), value_residual=residual, backend=backend)
    control_grads = torch.autograd.grad(control.loss, wrt)
    full_grads = torch.autograd.grad(full.loss, wrt)
    _, _, _, ce = reference.bellman_loss(**loss_kwargs(inputs), value_residual=residual)
    (ce_grad,) = torch.autograd.grad(0.5 * ce, inputs.logits)   # beta_ce's default
    torch.testing.assert_close(control.loss, full.loss)
    torch.testing.assert_close(control_grads[0], ce_grad)
    assert not torch.allclose(full_grads[0], ce_grad)            # the full loss's TD and L_adv do reach the logits
    for got, want in zip(control_grads[1:], full_grads[1:]):
        torch.testing.assert_close(got, want)


def bad_residual_cases(values):
    """name -> (value_residual, message) for a [2, 3] float32 `values`."""
    values = values.detach()
    return {
        "shape": (values[:, :-1], r"value_residual must have shape \[2, 3\]"),
        "per program": (values[:, 0], r"value_residual must have shape \[2, 3\]"),
        "not a tensor": (0.5, r"value_residual must have shape \[2, 3\] .*got float"),
        "dtype": (values.double(), "value_residual must have dtype torch.float32, got torch.float64"),
        "integer": (values.long(), "value_residual must have dtype torch.float32, got torch.int64"),
        "device": (values.to("meta"), "value_residual is on meta but logits is on cpu"),
    }


@pytest.mark.parametrize("case", list(bad_residual_cases(torch.zeros(2, 3))))
def test_bad_value_residual_is_a_value_error(case, generator):
    """A value_residual that does not match values (shape [B, T], dtype, device) is a ValueError
    naming it, from every entry point that takes one."""
    inputs = make_batch(2, 3, 17, lengths=[3, 3], generator=generator)
    residual, message = bad_residual_cases(inputs.values)[case]
    calls = {
        "bellman_loss": lambda: bcoder.bellman_loss(**inputs._asdict(), value_residual=residual),
        "bellman_loss reference": lambda: bcoder.bellman_loss(**inputs._asdict(), value_residual=residual,
                                                              backend="reference"),
        "BellmanLoss": lambda: bcoder.BellmanLoss()(*inputs, value_residual=residual),
        "token_rewards": lambda: bcoder.token_rewards(inputs.logits, inputs.values, inputs.actions, inputs.mask,
                                                      value_residual=residual),
        "bellman_loss_from_hidden": lambda: fused_head.bellman_loss_from_hidden(
            hidden=inputs.logits, lm_head_weight=torch.randn(5, 17), ckpt_hidden=None, ckpt_lm_head_weight=None,
            values=inputs.values, actions=inputs.actions % 5, mask=inputs.mask, rewards=inputs.rewards,
            is_ground_truth=inputs.is_ground_truth, value_residual=residual),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
            pytest.fail(f"{name} accepted a bad value_residual")
