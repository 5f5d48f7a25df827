"""QModel on a tiny T5 built in-process (no download): initialisation, stages, gradients, save/load,
sampling and the errors that name what is wrong."""
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from bcoder.fused_head import bellman_loss_from_hidden
from bcoder.loss import bellman_loss
from bcoder.models import QModel, QModelConfig, program_mask

VOCAB, PAD, EOS = 50, 0, 1


def tiny_t5(seed=0, **overrides):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, **overrides)
    return T5ForConditionalGeneration(config)


def tiny_qmodel(stage="phi", **config):
    return QModel.from_checkpoint(tiny_t5(), QModelConfig(stage=stage, **config))


def batch(seed=1, size=3, prompt_len=7, program_len=6):
    """Prompts with right padding, programs ending in EOS then PAD, rewards and a ground-truth flag."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(2, VOCAB, (size, prompt_len), generator=g)
    prompt_mask = torch.arange(prompt_len) < torch.tensor([prompt_len, 4, 5])[:size, None]
    programs = torch.randint(2, VOCAB, (size, program_len), generator=g)
    lengths = torch.tensor([program_len, 3, 4])[:size]
    programs[torch.arange(size), lengths - 1] = EOS
    programs[torch.arange(program_len) >= lengths[:, None]] = PAD
    rewards = torch.tensor([1.0, -0.3, -1.0])[:size]
    is_ground_truth = torch.tensor([True, False, False])[:size]
    return prompt_ids, prompt_mask.long(), programs, rewards, is_ground_truth


def loss_of(out, programs, rewards, is_ground_truth, stage):
    mask = program_mask(programs, EOS)
    ckpt_logits = out.ckpt_logits if stage == "theta" else None
    return bellman_loss(out.logits, ckpt_logits, out.values, programs, mask, rewards, is_ground_truth,
                        backend="reference", value_residual=out.value_residual).loss


def named(model, params):
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def test_ckpt_logits_match_hugging_face_forward():
    model = tiny_qmodel().eval()
    prompt_ids, prompt_mask, programs, *_ = batch()
    expected = model.ckpt(input_ids=prompt_ids, attention_mask=prompt_mask, labels=programs).logits
    assert torch.equal(model(prompt_ids, prompt_mask, programs).ckpt_logits, expected)


def test_theta_starts_as_ckpt_and_phi():
    """l_theta == l_ckpt and u^r = h1 - h2 == 0, so the theta-stage value is u_phi: bit for bit when
    both run under no_grad (autograd may pick other CPU kernels, hence the tolerance with grad)."""
    model = tiny_qmodel().eval()
    inputs = batch()[:3]
    with torch.no_grad():
        phi_out = model(*inputs)
        theta_out = model.set_stage("theta")(*inputs)
    assert torch.equal(theta_out.logits, theta_out.ckpt_logits)
    assert torch.equal(theta_out.values, phi_out.values) and phi_out.value_residual is None
    assert not theta_out.value_residual.any()     # h1 - h2 = 0 exactly: V_theta = V_phi either way
    assert torch.equal(phi_out.logits, phi_out.ckpt_logits)
    with_grad = model(*inputs)
    assert torch.allclose(with_grad.logits, with_grad.ckpt_logits, rtol=0, atol=1e-5)
    assert torch.allclose(with_grad.values, phi_out.values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_one_encoder_pass_feeds_every_decoder(stage):
    model = tiny_qmodel(stage)
    calls = {"encoder": 0, "decoders": 0}
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    for decoder in (model.ckpt.decoder, model.phi_decoder, model.theta_decoder):
        decoder.register_forward_hook(lambda *_: calls.__setitem__("decoders", calls["decoders"] + 1))
    model(*batch()[:3])
    assert calls == {"encoder": 1, "decoders": 2 if stage == "phi" else 3}


def test_stage_trainable_sets():
    model = tiny_qmodel()
    phi = named(model, model.trainable_parameters("phi"))
    theta = named(model, model.trainable_parameters("theta"))
    assert phi and all(n.split(".")[0] in ("phi_decoder", "phi_value_head") for n in phi)
    assert phi == {n for n, _ in model.named_parameters(remove_duplicate=False)
                   if n.startswith(("phi_decoder.", "phi_value_head."))}
    assert {n.split(".")[0] for n in theta} == {"theta_decoder", "theta_lm_head", "h1"}
    assert model.theta_lm_head.weight is model.theta_decoder.embed_tokens.weight  # tied, trained once
    for stage, expected in (("phi", phi), ("theta", theta)):
        model.set_stage(stage).train()
        requires_grad = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        assert requires_grad == expected
        assert not any(n.startswith(("ckpt.", "h2.")) for n in requires_grad)  # encoder, theta_ckpt, h2
        frozen = [m for name, m in model.named_children() if not name.startswith(stage) and name != "h1"]
        assert all(not m.training for m in frozen)


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_bellman_gradients_reach_only_trainable_parameters(stage):
    model = tiny_qmodel(stage).train()
    prompt_ids, prompt_mask, programs, rewards, is_ground_truth = batch()
    out = model(prompt_ids, prompt_mask, programs)
    loss_of(out, programs, rewards, is_ground_truth, stage).backward()
    trainable = named(model, model.trainable_parameters())
    with_grad = {n for n, p in model.named_parameters(remove_duplicate=False) if p.grad is not None}
    assert with_grad == trainable
    heads = ("phi_value_head", "phi_decoder") if stage == "phi" else ("h1", "theta_lm_head", "theta_decoder")
    for head in heads:
        assert any(p.grad.abs().sum() > 0 for p in getattr(model, head).parameters())


def test_no_init_ablation_has_no_phi_and_a_fresh_head():
    model = tiny_qmodel("theta", init_value_from_phi=False).eval()
    assert not hasattr(model, "phi_decoder") and not hasattr(model, "h2")
    prompt_ids, prompt_mask, programs, rewards, is_ground_truth = batch()
    out = model(prompt_ids, prompt_mask, programs)
    assert torch.allclose(out.values, model.h1(model.theta_decoder(
        input_ids=model.ckpt._shift_right(programs), encoder_hidden_states=model.encoder(prompt_ids, prompt_mask)[0],
        encoder_attention_mask=prompt_mask).last_hidden_state))
    loss_of(out, programs, rewards, is_ground_truth, "theta").backward()
    assert named(model, [p for p in model.parameters() if p.grad is not None]) == named(
        model, model.trainable_parameters())
    with pytest.raises(ValueError, match="ablation"):
        model.set_stage("phi")


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_hidden_times_lm_head_weight_is_logits(stage):
    model = tiny_qmodel(stage).eval()
    out = model(*batch()[:3], return_hidden=True)
    assert torch.equal(out.hidden @ model.lm_head_weight.T, out.logits)
    assert torch.equal(out.ckpt_hidden @ model.ckpt_lm_head_weight.T, out.ckpt_logits)
    lean = model(*batch()[:3], return_logits=False, return_hidden=True)
    assert lean.logits is None and lean.ckpt_logits is None and torch.equal(lean.hidden, out.hidden)


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_fused_head_loss_from_hidden_matches_logits(stage):
    """The lean path (no logits) gives the loss and parameter gradients of the logits path."""
    model = tiny_qmodel(stage).eval()
    prompt_ids, prompt_mask, programs, rewards, is_ground_truth = batch()
    out = model(prompt_ids, prompt_mask, programs)
    loss_of(out, programs, rewards, is_ground_truth, stage).backward()
    expected = [p.grad.clone() for p in model.trainable_parameters()]
    model.zero_grad()
    lean = model(prompt_ids, prompt_mask, programs, return_logits=False, return_hidden=True)
    bellman_loss_from_hidden(lean.hidden, model.lm_head_weight, lean.ckpt_hidden if stage == "theta" else None,
                             model.ckpt_lm_head_weight if stage == "theta" else None, lean.values, programs,
                             program_mask(programs, EOS), rewards, is_ground_truth, backend="reference",
                             value_residual=lean.value_residual).loss.backward()
    for want, p in zip(expected, model.trainable_parameters()):
        assert torch.allclose(p.grad, want, rtol=1e-4, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = tiny_qmodel("theta", value_head="linear")
    with torch.no_grad():  # make theta, h1 and phi differ from their initial copies
        for p in model.trainable_parameters("theta") + model.trainable_parameters("phi"):
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    loaded = QModel.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.stage == "theta"
    assert loaded.theta_lm_head.weight is loaded.theta_decoder.embed_tokens.weight
    assert named(loaded, loaded.trainable_parameters()) == named(model, model.trainable_parameters())
    inputs = batch()[:3]
    expected, got = model.eval()(*inputs), loaded.eval()(*inputs)
    for field in ("values", "logits", "ckpt_logits"):
        assert torch.equal(getattr(got, field), getattr(expected, field))


def test_bfloat16_round_trip(tmp_path):
    model = QModel.from_checkpoint(tiny_t5(), dtype=torch.bfloat16)
    assert model.h1.net[0].weight.dtype == torch.bfloat16
    model.save_pretrained(tmp_path)
    loaded = QModel.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) and a.dtype == torch.bfloat16
               for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_from_checkpoint_directory(tmp_path):
    ckpt = tiny_t5()
    ckpt.save_pretrained(tmp_path)
    model = QModel.from_checkpoint(tmp_path).eval()
    assert torch.equal(model.ckpt.lm_head.weight, ckpt.lm_head.weight)
    with torch.no_grad():
        out = model.set_stage("theta")(*batch()[:3])
    assert torch.equal(out.logits, out.ckpt_logits)


@pytest.mark.parametrize("policy", ["theta", "ckpt"])
def test_policy_view_samples_programs_for_forward(policy):
    model = tiny_qmodel("theta").eval()
    prompt_ids, prompt_mask, *_ = batch()
    torch.manual_seed(0)
    with torch.no_grad():
        sequences = model.policy_model(policy).generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                                        do_sample=True, num_return_sequences=2, max_new_tokens=5)
    programs = sequences[:, 1:]  # without the decoder start token
    assert programs.shape[0] == 6 and 1 <= programs.shape[1] <= 5 and programs.dtype == torch.long
    # The samples feed straight back into the teacher-forced forward and the loss.
    out = model(prompt_ids.repeat_interleave(2, 0), prompt_mask.repeat_interleave(2, 0), programs)
    assert out.values.shape == out.logits.shape[:2] == programs.shape


def test_theta_view_shares_weights_and_matches_forward():
    model = tiny_qmodel("theta").eval()
    with torch.no_grad():
        model.theta_lm_head.weight.add_(0.1)  # theta now differs from theta_ckpt
    view = model.policy_model("theta")
    assert view.encoder is model.encoder and view.lm_head is model.theta_lm_head
    assert not any(p.is_meta for p in view.parameters())
    prompt_ids, prompt_mask, programs, *_ = batch()
    expected = view(input_ids=prompt_ids, attention_mask=prompt_mask, labels=programs).logits
    assert torch.equal(model(prompt_ids, prompt_mask, programs).logits, expected)


def test_program_mask():
    programs = torch.tensor([[5, 6, EOS, PAD], [5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, PAD, PAD, PAD]])
    assert program_mask(programs, EOS).tolist() == [
        [True, True, True, False], [True, True, False, False], [True] * 4, [True, False, False, False]]


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        QModel.from_checkpoint(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        QModel.from_checkpoint(tmp_path)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=VOCAB)).save_pretrained(gpt2)
    with pytest.raises(ValueError, match="'gpt2' model \\(GPT2LMHeadModel\\)"):
        QModel.from_checkpoint(gpt2)
    with pytest.raises(TypeError, match="got GPT2LMHeadModel"):
        QModel.from_checkpoint(GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=VOCAB)))
    no_weights = tmp_path / "no_weights"
    tiny_t5().config.save_pretrained(no_weights)
    with pytest.raises(FileNotFoundError, match="no weights"):
        QModel.from_checkpoint(no_weights)


def test_bad_qmodel_directories_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Q-model directory not found"):
        QModel.from_pretrained(tmp_path / "missing")
    tiny_t5().save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="use|from_checkpoint"):
        QModel.from_pretrained(tmp_path / "plain")
    saved = tmp_path / "saved"
    tiny_qmodel().save_pretrained(saved)
    with pytest.raises(ValueError, match="from_pretrained"):
        QModel.from_checkpoint(saved)
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        QModel.from_pretrained(saved)
    meta = json.loads((saved / "bcoder_qmodel.json").read_text())
    assert meta["qmodel"]["stage"] == "phi"


def test_bad_stages_are_rejected():
    with pytest.raises(ValueError, match="stage must be one of"):
        QModelConfig(stage="omega")
    with pytest.raises(ValueError, match="stage must be one of"):
        tiny_qmodel().set_stage("omega")
    with pytest.raises(ValueError, match="value_head"):
        QModelConfig(value_head="transformer")
