"""The loss of a Q-model on a batch of programs, phi-stage or theta-stage, by either path: the component
the stages, the benchmarks and the tests train with."""
from bcoder.fused_head import bellman_loss_from_hidden
from bcoder.loss import bellman_loss
from bcoder.reference import state_value

VALUE_RESIDUALS = ("additive", "capped")


def value_terms(out, value_residual="additive"):
    """(values, value_residual) to hand the loss from a QModelOutput: theta's value is V_phi + (h1 - h2), the
    residual added after the cap ("additive", the paper's eq. 16), or the cap of u_phi + (h1 - h2) ("capped").
    Without a residual (the phi-stage, the "without initialization" ablation) the values alone."""
    if value_residual not in VALUE_RESIDUALS:
        raise ValueError(f"value_residual must be one of {VALUE_RESIDUALS}, got {value_residual!r}")
    if out.value_residual is None:
        return out.values, None
    if value_residual == "additive":
        return out.values, out.value_residual
    return out.values + out.value_residual, None


def q_loss(net, stage, prompt_ids, prompt_mask, programs, loss_path="fused", value_residual="additive",
           **loss_args):
    """(V, BellmanLossOutput) of a Q-model (net: a Q-model or its DDP/FSDP2 wrapper) on a batch: the
    phi-stage's L_V (theta_ckpt's advantage, frozen, its own argmax the target: only the TD term trains) or
    the theta-stage's loss; V [B, T] is the value the loss used, detached. loss_path "fused" takes the loss
    from the decoders' hidden states (bellman_loss_from_hidden, inside the model's forward: no [B, T, V]
    logits); "logits" materialises the logits of theta and theta_ckpt, then bellman_loss. value_residual:
    value_terms'. loss_args: bellman_loss's actions, mask, rewards, is_ground_truth and hyper-parameters."""
    frozen_target = stage == "phi"

    def head(out, model):
        values, residual = value_terms(out, value_residual)
        residual = None if residual is None else residual.float()
        value = state_value(values.detach().float(), loss_args.get("r_max", 1.0),
                            None if residual is None else residual.detach())
        if loss_path == "fused":
            return value, bellman_loss_from_hidden(
                hidden=out.hidden.float(), lm_head_weight=model.lm_head_weight,
                ckpt_hidden=None if frozen_target else out.ckpt_hidden.float(),
                ckpt_lm_head_weight=None if frozen_target else model.ckpt_lm_head_weight,
                values=values.float(), value_residual=residual, **loss_args)
        return value, bellman_loss(out.logits.float(), None if frozen_target else out.ckpt_logits.float(),
                                   values.float(), value_residual=residual, **loss_args)

    if loss_path == "fused":
        return net(prompt_ids, prompt_mask, programs, return_logits=False, return_hidden=True, head=head)
    return head(net(prompt_ids, prompt_mask, programs), net)
