"""bcoder.bellman_loss / token_rewards / BellmanLoss against the float64 reference."""
import pytest
import torch
from conftest import assert_error_within_reference, loss_kwargs, make_batch

import bcoder
from bcoder import fused_head, loss, reference

OPERATORS = reference.OPERATORS


def float64_copy(inputs):
    return [x.detach().double().requires_grad_(x.requires_grad) if x.is_floating_point() else x for x in inputs]


def loss_and_grads(inputs, upstream=1.0, **kwargs):
    out = bcoder.bellman_loss(**loss_kwargs(inputs), **kwargs)
    logits, values = inputs[0], inputs[2]
    grads = torch.autograd.grad(out.loss * upstream, (logits, values))
    return out, grads


def assert_matches_float64(inputs, upstream=1.0, **kwargs):
    """Every loss part and both gradients, element by element: the error against the float64
    oracle is at most the same-dtype reference's error there plus an ulp of the inputs' dtype
    (conftest.assert_error_within_reference)."""
    out, grads = loss_and_grads(inputs, upstream, **kwargs)
    oracle, oracle_grads = loss_and_grads(float64_copy(inputs), upstream, **{**kwargs, "backend": "reference"})
    same_dtype, same_dtype_grads = loss_and_grads(inputs, upstream, **{**kwargs, "backend": "reference"})
    dtype = inputs[0].dtype
    for name, got, ref, want in zip(oracle._fields + ("d_logits", "d_values"), (*out, *grads),
                                    (*same_dtype, *same_dtype_grads), (*oracle, *oracle_grads)):
        assert got.shape == want.shape, name
        try:
            assert_error_within_reference(got, ref, want, dtype)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operator", OPERATORS)
def test_matches_reference(dtype, operator, generator):
    inputs = make_batch(6, 9, 1031, dtype, generator=generator)
    assert_matches_float64(inputs, operator=operator)


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


def test_gradcheck_float64(generator):
    # gamma = 0: the TD target is a stop-gradient, so finite differences would see its
    # dependence on logits and values; the target path is checked against the reference above.
    for ground_truth in (True, False):
        inputs = make_batch(3, 4, 6, torch.float64, ground_truth=ground_truth, generator=generator)

        def loss(logits, values, inputs=inputs):
            return bcoder.bellman_loss(**inputs._replace(logits=logits, values=values)._asdict(), gamma=0.0).loss

        assert torch.autograd.gradcheck(loss, (inputs.logits, inputs.values))


@pytest.mark.parametrize("batch,steps,vocab", [(1, 1, 1), (1, 1, 50), (2, 3, 1), (2, 2, 32128 + 7)])
def test_edge_shapes(batch, steps, vocab, generator):
    assert_matches_float64(make_batch(batch, steps, vocab, generator=generator))


def test_ties_infinities_and_offsets(generator):
    logits, ckpt, values, actions, mask, rewards, gt = make_batch(4, 6, 300, generator=generator)
    with torch.no_grad():
        logits[0, :, 7] = logits[0, :, 11] = logits[0].max() + 1  # ties in the trained logits
        ckpt[1, :, 20] = ckpt[1, :, 3] = ckpt[1].max() + 1  # ties in the target argmax
        logits[2, :, ::2] = ckpt[2, :, ::2] = float("-inf")  # a vocabulary masked for both models
        actions[2] = 1
        logits[3] += 1e4
        ckpt[3] -= 1e4
    assert_matches_float64((logits, ckpt, values, actions, mask, rewards, gt))


def test_length_one_programs_and_no_ground_truth(generator):
    inputs = make_batch(5, 4, 100, lengths=[1, 1, 4, 1, 2], ground_truth=False, generator=generator)
    out = assert_matches_float64(inputs)
    assert out.adv_loss == 0 and out.ce_loss == 0
    assert_matches_float64(make_batch(5, 4, 100, ground_truth=True, generator=generator))


def test_non_contiguous_inputs(generator):
    logits, ckpt, values, actions, mask, rewards, gt = make_batch(5, 3, 64, generator=generator)
    wide = torch.randn(3, 5, 80, generator=generator).transpose(0, 1)[:, :, :64].requires_grad_()
    ckpt_t = ckpt.transpose(0, 1).contiguous().transpose(0, 1)
    assert not wide.is_contiguous() and not ckpt_t.is_contiguous()
    values_t = values.detach().t().contiguous().t().requires_grad_()
    assert_matches_float64((wide, ckpt_t, values_t, actions.t().contiguous().t(), mask, rewards, gt))


def test_upstream_gradient_is_applied(generator):
    assert_matches_float64(make_batch(3, 5, 40, generator=generator), upstream=-3.7)


def test_parts_are_detached_and_sum_to_loss(generator):
    out = bcoder.bellman_loss(**make_batch(3, 5, 40, generator=generator)._asdict())
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
    logits, _, values, actions, mask, _, _ = make_batch(5, 7, 301, generator=generator)
    got = bcoder.token_rewards(logits, values, actions, mask)
    same_dtype = reference.token_rewards(logits, values, actions, mask)
    oracle = reference.token_rewards(logits.double(), values.double(), actions, mask)
    assert_error_within_reference(got, same_dtype, oracle, torch.float32)
    assert (got[~mask] == 0).all()


def test_module_matches_function(generator):
    inputs = make_batch(3, 4, 33, generator=generator)
    module = bcoder.BellmanLoss(gamma=0.9, beta_adv=0.2, beta_ce=0.0, operator="optimality")
    torch.testing.assert_close(module(*inputs).loss,
                               bcoder.bellman_loss(**inputs._asdict(), gamma=0.9, beta_adv=0.2, beta_ce=0.0,
                                                   operator="optimality").loss)
    assert "optimality" in repr(module)


def test_torch_compile_fullgraph(generator):
    torch._dynamo.reset()
    inputs = make_batch(3, 5, 70, generator=generator)
    compiled = torch.compile(bcoder.bellman_loss, fullgraph=True, backend="aot_eager")
    out = compiled(**inputs._asdict())
    eager = bcoder.bellman_loss(**inputs._asdict())
    torch.testing.assert_close(out.loss, eager.loss)
    got = torch.autograd.grad(out.loss, (inputs[0], inputs[2]))
    want = torch.autograd.grad(eager.loss, (inputs[0], inputs[2]))
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


def test_operator_is_checked_alike_everywhere(generator):
    """Every function taking the operator rejects an unknown one with reference.check_operator's error."""
    inputs = make_batch(2, 3, 17, generator=generator)
    stats = {name: torch.zeros(2, 3) for name in ("row_max", "shifted_lse", "gathered", "target")}
    rest = {"values": inputs.values, "mask": inputs.mask, "rewards": inputs.rewards,
            "is_ground_truth": inputs.is_ground_truth}
    calls = {
        "bellman_loss": lambda: bcoder.bellman_loss(**inputs._asdict(), operator="greedy"),
        "bellman_loss reference": lambda: bcoder.bellman_loss(**inputs._asdict(), operator="greedy",
                                                              backend="reference"),
        "BellmanLoss": lambda: bcoder.BellmanLoss(operator="greedy"),
        "losses_from_stats": lambda: loss.losses_from_stats(**stats, **rest, operator="greedy"),
        "reference.bellman_loss": lambda: reference.bellman_loss(**inputs._asdict(), operator="greedy"),
        "reference.next_targets": lambda: reference.next_targets(inputs.logits, None, inputs.values, inputs.mask,
                                                                 operator="greedy"),
        "bellman_loss_from_hidden": lambda: fused_head.bellman_loss_from_hidden(
            hidden=inputs.logits, lm_head_weight=torch.randn(5, 17), ckpt_hidden=None, ckpt_lm_head_weight=None,
            actions=inputs.actions % 5, **rest, operator="greedy"),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=r"operator must be one of \('conservative', 'optimality'\), got 'greedy'"):
            call()
