"""CausalQModel on tiny decoder-only models built in-process (Qwen2, Llama, GPT-2): the initial
identities, adapter routing, the shared prompt cache, gradients, the fused head, save/load (plain
peft included), sampling; and the smoke-causal preset end to end, resumed and ranked."""
import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from smoke_run import REPO, full_run, killed_and_resumed
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from bcoder.fused_head import bellman_loss_from_hidden
from bcoder.loss import bellman_loss
from bcoder.models import program_mask
from bcoder.models.causal import CausalQModel, CausalQModelConfig, causal_inputs
from bcoder.sampling import left_pad

VOCAB, PAD, EOS = 50, 0, 1
ARCHITECTURES = ("qwen2", "llama", "gpt2")
MODES = [("lora", True), ("lora", False), ("none", True), ("none", False)]   # (adapter, share_prompt)


def tiny_lm(architecture="qwen2", seed=0):
    torch.manual_seed(seed)
    if architecture == "qwen2":   # tied embeddings, grouped-query attention
        config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return Qwen2ForCausalLM(config)
    if architecture == "llama":   # an untied LM head
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
        return LlamaForCausalLM(config)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, bos_token_id=EOS, eos_token_id=EOS)
    return GPT2LMHeadModel(config)   # learned positions, Conv1D layers, dropout


def qmodel(architecture="qwen2", stage="phi", adapter="lora", share_prompt=True, **config):
    return CausalQModel(tiny_lm(architecture), CausalQModelConfig(stage=stage, adapter=adapter, share_prompt=share_prompt,
                                                                  lora_rank=4, **config))


def batch(seed=1, size=3, prompt_len=7, program_len=6):
    """Right-padded prompts (one a single token), programs ending in EOS then PAD, rewards, ground-truth flags."""
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(2, VOCAB, (size, prompt_len), generator=g)
    prompt_mask = torch.arange(prompt_len) < torch.tensor([prompt_len, 4, 1])[:size, None]
    programs = torch.randint(2, VOCAB, (size, program_len), generator=g)
    lengths = torch.tensor([program_len, 3, 4])[:size]
    programs[torch.arange(size), lengths - 1] = EOS
    programs[torch.arange(program_len) >= lengths[:, None]] = PAD
    return (prompt_ids.masked_fill(~prompt_mask, PAD), prompt_mask.long(), programs,
            torch.tensor([1.0, -0.3, -1.0])[:size], torch.tensor([True, False, False])[:size])


def perturb(model, *names):
    """Moves every trainable parameter of the named stages off its initial value."""
    with torch.no_grad():
        for stage in names:
            for p in model.trainable_parameters(stage):
                p.add_(0.05 * torch.randn_like(p))


def loss_of(out, programs, rewards, is_ground_truth, stage):
    return bellman_loss(out.logits, out.ckpt_logits if stage == "theta" else None, out.values, programs,
                        program_mask(programs, EOS), rewards, is_ground_truth, backend="reference",
                        value_residual=out.value_residual).loss


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("adapter,share_prompt", MODES)
def test_ckpt_logits_are_the_base_models(architecture, adapter, share_prompt):
    """theta_ckpt's logits at s_t are the base LM's on the sequence prompt + a_<t."""
    base = tiny_lm(architecture).eval()
    prompt_ids, prompt_mask, programs, *_ = batch()
    ids, mask, positions = causal_inputs(prompt_ids, prompt_mask, programs)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, prompt_ids.shape[1] - 1:]
    model = CausalQModel(base, CausalQModelConfig(adapter=adapter, share_prompt=share_prompt)).eval()
    perturb(model, "phi", "theta")
    with torch.no_grad():
        got = model(prompt_ids, prompt_mask, programs).ckpt_logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_disabled_adapters_give_the_base_logits_bit_for_bit(architecture):
    base = tiny_lm(architecture).eval()
    ids = torch.randint(2, VOCAB, (2, 9))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = CausalQModel(base, CausalQModelConfig(stage="theta", share_prompt=False)).eval()
    perturb(model, "phi", "theta")
    with torch.no_grad():
        assert not torch.equal(model.policy_model("theta")(input_ids=ids).logits, expected)
        assert torch.equal(model.policy_model("ckpt")(input_ids=ids).logits, expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("adapter,share_prompt", MODES)
def test_theta_starts_as_ckpt_and_phi(architecture, adapter, share_prompt):
    """At the start of the theta-stage l_theta = l_ckpt and u = u_phi exactly, so Q_theta = Q_phi."""
    model = qmodel(architecture, "phi", adapter, share_prompt).eval()
    perturb(model, "phi")   # a trained phi
    inputs = batch()[:3]
    with torch.no_grad():
        u_phi = model(*inputs).values
        theta = model.set_stage("theta")(*inputs)
    assert torch.equal(theta.logits, theta.ckpt_logits)
    assert torch.equal(theta.values, u_phi) and not theta.value_residual.any()   # h1 - h2 = 0 exactly


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_the_shared_prompt_cache_equals_the_full_sequence_until_the_adapters_train(adapter):
    """share_prompt changes no loss while phi and theta are the base (each stage's start) and gives the
    adapters no hold on the prompt once they train."""
    inputs = batch()
    shared, full = qmodel(stage="theta", adapter=adapter).eval(), qmodel(stage="theta", adapter=adapter,
                                                                        share_prompt=False).eval()
    full.load_state_dict(shared.state_dict())
    with torch.no_grad():
        a, b = shared(*inputs[:3]), full(*inputs[:3])
        torch.testing.assert_close(loss_of(a, *inputs[2:], "theta"), loss_of(b, *inputs[2:], "theta"),
                                   rtol=1e-6, atol=1e-6)
        perturb(shared, "theta")
        full.load_state_dict(shared.state_dict())
        a, b = shared(*inputs[:3]), full(*inputs[:3])
    assert (a.logits - b.logits).abs().max() > 1e-3


@pytest.mark.parametrize("adapter,share_prompt", MODES)
def test_padding_changes_no_row(adapter, share_prompt):
    model = qmodel(stage="theta", adapter=adapter, share_prompt=share_prompt).eval()
    perturb(model, "phi", "theta")
    prompt_ids, prompt_mask, programs, *_ = batch()
    with torch.no_grad():
        together = model(prompt_ids, prompt_mask, programs)
        alone = model(prompt_ids[2:, :1], prompt_mask[2:, :1], programs[2:, :4])   # the 1-token prompt, its program
    torch.testing.assert_close(alone.logits, together.logits[2:, :4], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone.values, together.values[2:, :4], rtol=0, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("adapter", ["lora", "none"])
@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_gradients_reach_exactly_the_stages_parameters(architecture, adapter, stage):
    model = qmodel(architecture, stage, adapter)
    perturb(model, "phi", "theta")   # nonzero LoRA B matrices, so that A gets a gradient too
    prompt_ids, prompt_mask, programs, rewards, is_gt = batch()
    loss_of(model(prompt_ids, prompt_mask, programs), programs, rewards, is_gt, stage).backward()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    if adapter == "lora":
        names = [name for name, p in model.named_parameters() if id(p) in trainable]
        assert all(f".{stage}." in name or name.startswith(("h1.", "phi_value_head.")) for name in names)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("adapter", ["lora", "none"])
@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_fused_head_loss_from_hidden_matches_logits(architecture, adapter, stage):
    """The lean path (hidden states and the LM-head weight, tied or not) gives the logits path's gradients."""
    model = qmodel(architecture, stage, adapter).eval()
    perturb(model, "phi", "theta")
    prompt_ids, prompt_mask, programs, rewards, is_gt = batch()
    out = model(prompt_ids, prompt_mask, programs, return_hidden=True)
    torch.testing.assert_close(out.hidden @ model.lm_head_weight.T, out.logits)
    loss_of(out, programs, rewards, is_gt, stage).backward()
    expected = [p.grad.clone() for p in model.trainable_parameters()]
    model.zero_grad()
    lean = model(prompt_ids, prompt_mask, programs, return_logits=False, return_hidden=True)
    theta = stage == "theta"
    bellman_loss_from_hidden(lean.hidden, model.lm_head_weight, lean.ckpt_hidden if theta else None,
                             model.ckpt_lm_head_weight if theta else None, lean.values, programs,
                             program_mask(programs, EOS), rewards, is_gt, backend="reference",
                             value_residual=lean.value_residual).loss.backward()
    for want, p in zip(expected, model.trainable_parameters()):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("adapter,share_prompt", MODES)
@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_activation_checkpointing_gives_the_same_gradients(adapter, share_prompt, stage):
    """Recomputing the trained trunk's layers in the backward (the shared prompt cache read again) changes
    no gradient."""
    model = qmodel(stage=stage, adapter=adapter, share_prompt=share_prompt).train()   # qwen2: no dropout
    perturb(model, "phi", "theta")
    prompt_ids, prompt_mask, programs, rewards, is_gt = batch()

    def gradients():
        model.zero_grad()
        loss_of(model(prompt_ids, prompt_mask, programs), programs, rewards, is_gt, stage).backward()
        return [p.grad.clone() for p in model.trainable_parameters()]

    expected = gradients()
    model.checkpoint_activations(True)
    for want, got in zip(expected, gradients()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adapter", ["lora", "none"])
def test_save_load_round_trip(adapter, tmp_path):
    model = qmodel(stage="theta", adapter=adapter, value_head="linear")
    perturb(model, "phi", "theta")
    model.save_pretrained(tmp_path / "q")
    loaded = CausalQModel.from_pretrained(tmp_path / "q", tiny_lm())   # the same base, built again
    assert loaded.config == model.config and loaded.stage == "theta"
    inputs = batch()[:3]
    expected, got = model.eval()(*inputs), loaded.eval()(*inputs)
    for field in ("values", "logits", "ckpt_logits"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    if adapter == "none":
        assert loaded.theta_lm.lm_head.weight is loaded.theta_lm.model.embed_tokens.weight   # still tied


def test_the_theta_adapter_loads_in_plain_peft(tmp_path):
    """DIR/theta is a peft adapter: transformers + peft alone reproduce theta's logits."""
    model = qmodel(stage="theta", share_prompt=False).eval()
    perturb(model, "phi", "theta")
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "theta").iterdir()}
    plain = PeftModel.from_pretrained(tiny_lm(), tmp_path / "theta").eval()
    prompt_ids, prompt_mask, programs, *_ = batch()
    ids, mask, positions = causal_inputs(prompt_ids, prompt_mask, programs)
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, prompt_ids.shape[1] - 1:]
        got = model(prompt_ids, prompt_mask, programs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_loading_checks_what_it_loads(tmp_path):
    model = qmodel(stage="theta")
    model.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="another base model"):
        CausalQModel.from_pretrained(tmp_path / "q", GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1,
                                                                                  n_head=4)))
    (tmp_path / "q" / "theta" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        CausalQModel.from_pretrained(tmp_path / "q", tiny_lm())
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="encoder-decoder"):
        CausalQModel(t5)
    with pytest.raises(ValueError, match="adapter must be one of"):
        CausalQModelConfig(adapter="qlora")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("adapter,share_prompt", MODES)
@pytest.mark.parametrize("policy", ["theta", "ckpt"])
def test_greedy_generation_follows_the_teacher_forced_argmax(architecture, adapter, share_prompt, policy):
    """Programs generated from left-padded prompts feed back into the forward, whose argmax at each s_t is
    the token generate chose: prompt alignment, positions, the shared prompt cache and routing agree."""
    model = qmodel(architecture, stage="theta", adapter=adapter, share_prompt=share_prompt).eval()
    perturb(model, "phi", "theta")
    prompt_ids, prompt_mask, *_ = batch()
    left_ids, left_mask = left_pad(prompt_ids, prompt_mask.bool(), PAD)
    with torch.no_grad():
        sequences = model.policy_model(policy).generate(input_ids=left_ids, attention_mask=left_mask.long(),
                                                        do_sample=False, max_new_tokens=6, pad_token_id=PAD,
                                                        eos_token_id=EOS)
        programs = sequences[:, left_ids.shape[1]:]
        out = model(prompt_ids, prompt_mask, programs)
    logits = out.logits if policy == "theta" else out.ckpt_logits
    mask = program_mask(programs, EOS)
    assert torch.equal(logits.argmax(-1)[mask], programs[mask])
    assert not torch.equal(out.logits, out.ckpt_logits)   # the forward routed theta and ckpt apart again


# ----- the smoke-causal preset, end to end -----

@pytest.fixture(scope="module")
def causal_run(tmp_path_factory):
    """A smoke-causal run through every stage."""
    return full_run("smoke-causal", tmp_path_factory.mktemp("runs") / "smoke-causal")


def test_smoke_causal_runs_every_stage(causal_run):
    assert json.loads((causal_run / "ckpt" / "config.json").read_text())["model_type"] == "qwen2"
    for name in ("phi/phi/adapter_model.safetensors", "theta/theta/adapter_config.json", "theta/value_heads.safetensors",
                 "eval.json", "report.md"):
        assert (causal_run / name).exists(), name
    report = json.loads((causal_run / "eval.json").read_text())
    assert {"ckpt", "theta"} <= report.keys() and "ranked" in report["theta"]
    # The tokenizer beside the qwen2 model is the one sft trained with (not a Qwen2Tokenizer over its vocabulary).
    from bcoder.data.loading import load_split
    from bcoder.data.tokenizer import tiny_tokenizer
    from bcoder.models import Checkpoint
    from bcoder.run import read_run_config

    config = read_run_config(causal_run)
    train_problems = load_split(config.data)[0]
    text = train_problems[0].solutions[0]
    assert Checkpoint(causal_run / "ckpt").tokenizer()(text).input_ids == tiny_tokenizer(train_problems)(text).input_ids
    metrics = [json.loads(line) for line in (causal_run / "metrics.jsonl").read_text().splitlines()]
    assert {"sft", "sample", "phi", "theta", "eval"} <= {m["stage"] for m in metrics}


def test_killed_causal_theta_stage_resumes_to_identical_adapters(causal_run, tmp_path):
    # phi/theta (phi's untrained theta adapter) stays in the copies: only the theta-stage's outputs go
    straight, killed = killed_and_resumed("smoke-causal", causal_run, tmp_path)
    for name in ("theta/theta/adapter_model.safetensors", "theta/value_heads.safetensors"):
        expected, got = load_file(straight / name), load_file(killed / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), name


def test_rank_scores_programs_with_a_causal_run(causal_run, tmp_path):
    from bcoder.scoring import Scorer

    samples = [json.loads(line) for line in (causal_run / "eval_samples.jsonl").read_text().splitlines()][:6]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": s["task_id"], "program": s["program"]}) + "\n" for s in samples))
    result = subprocess.run([sys.executable, "-m", "bcoder.rank", "--run", str(causal_run), "--samples", str(path),
                             "--out", str(tmp_path / "scored.jsonl"), "--batch-size", "4"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [s["program"] for s in scored] == [s["program"] for s in samples]
    for s in scored:
        assert s["tokens"][-1] == "</s>" and len(s["token_rewards"]) == len(s["tokens"])
        assert s["return"] == pytest.approx(sum(s["token_rewards"]), abs=1e-4)
    scorer = Scorer.from_run(causal_run, batch_size=1)     # one row per batch: the same scores
    alone = scorer.score(["p"] * 2, [scored[0]["program"], scored[1]["program"]])
    together = Scorer.from_run(causal_run, batch_size=8).score(["p"] * 2, [scored[0]["program"], scored[1]["program"]])
    assert [a.ret for a in alone] == pytest.approx([t.ret for t in together], abs=1e-4)


# ----- a downloaded-style checkpoint through --model -----

def save_checkpoint(directory, extra_vocab=0):
    """A Qwen2 model with the tiny tokenizer of the smoke data, saved as a downloaded checkpoint would be."""
    from bcoder.config import PRESETS
    from bcoder.data.loading import load_split
    from bcoder.data.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer(load_split(PRESETS["smoke-causal"].data)[0])
    config = Qwen2Config(vocab_size=len(tokenizer) + extra_vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_model_flag_takes_a_causal_checkpoint_and_checks_it(tmp_path):
    from bcoder.config import PRESETS, TrainingError, with_values
    from bcoder.models import Checkpoint, CheckpointError
    from bcoder.stages import validate

    config = with_values(PRESETS["smoke-causal"], model=str(save_checkpoint(tmp_path / "ok")))
    validate(config)
    checkpoint = Checkpoint(config.model.checkpoint)
    assert checkpoint.causal and checkpoint.q_model_config(config.model, "phi").adapter == "lora"
    with pytest.raises(CheckpointError, match="tokenizer has .* tokens but the model's vocabulary"):
        validate(with_values(config, model=str(save_checkpoint(tmp_path / "off", extra_vocab=1000))))
    with pytest.raises(TrainingError, match="--adapter lora is for decoder-only models"):
        validate(with_values(PRESETS["smoke"], adapter="lora"))
    with pytest.raises(TrainingError, match="--lora-rank must be an integer >= 1"):
        validate(with_values(config, lora_rank=0))


def test_programs_for_a_causal_model_end_in_eos_without_the_tokenizers_bos():
    """A Llama-style tokenizer puts BOS before every text and no EOS after it: the prompt keeps the BOS, a
    program continuing it gets none, and EOS ends it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from bcoder.sampling import encode

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "def": 3, "f": 4, "return": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="</s>")
    prompt = encode(tokenizer, ["def f"], 10)
    program = encode(tokenizer, ["return f", "f"], 10, program=True, causal=True)
    assert prompt.ids.tolist() == [[1, 3, 4]]
    assert program.ids.tolist() == [[5, 4, 2], [4, 2, 2]] and program.mask.sum(1).tolist() == [3, 2]
    assert encode(tokenizer, ["return f"], 10, program=True).ids.tolist() == [[1, 5, 4]]   # T5: as the tokenizer does
