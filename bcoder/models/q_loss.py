"""The loss of a Q-model on a batch of programs, phi-stage or theta-stage, by either path: the component
the stages, the benchmarks and the tests train with."""
from bcoder.fused_head import bellman_loss_from_hidden
from bcoder.loss import bellman_loss


def q_loss(net, stage, prompt_ids, prompt_mask, programs, loss_path="fused", **loss_args):
    """(values u, BellmanLossOutput) of a Q-model (net: a Q-model or its DDP/FSDP2 wrapper) on a batch:
    the phi-stage's L_V (theta_ckpt's advantage, frozen, its own argmax the target: only the TD term
    trains) or the theta-stage's loss. loss_path "fused" takes the loss from the decoders' hidden
    states (bellman_loss_from_hidden, inside the model's forward: no [B, T, V] logits); "logits"
    materialises the logits of theta and theta_ckpt, then bellman_loss. loss_args: bellman_loss's
    actions, mask, rewards, is_ground_truth and hyper-parameters."""
    frozen_target = stage == "phi"
    if loss_path == "fused":
        def head(out, model):
            return out.values, bellman_loss_from_hidden(
                hidden=out.hidden.float(), lm_head_weight=model.lm_head_weight,
                ckpt_hidden=None if frozen_target else out.ckpt_hidden.float(),
                ckpt_lm_head_weight=None if frozen_target else model.ckpt_lm_head_weight,
                values=out.values.float(), **loss_args)

        return net(prompt_ids, prompt_mask, programs, return_logits=False, return_hidden=True, head=head)
    out = net(prompt_ids, prompt_mask, programs)
    return out.values, bellman_loss(out.logits.float(), None if frozen_target else out.ckpt_logits.float(),
                                    out.values.float(), **loss_args)
