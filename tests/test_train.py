"""bcoder.train: the smoke preset end to end, kill-and-resume, the loss inside a training step."""
import json

import pytest
import torch
from safetensors.torch import load_file
from smoke_run import full_run, killed_and_resumed, train
from transformers import AutoTokenizer

import bcoder
from bcoder.config import PRESETS
from bcoder.data.loading import load_split
from bcoder.models import QModel, QModelConfig, program_mask, q_loss
from bcoder.sampling import encode, fit_prompts
from bcoder.train import main


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run through every stage."""
    return full_run("smoke", tmp_path_factory.mktemp("runs") / "smoke")


def test_smoke_run_writes_every_artifact(smoke_run):
    for name in ("config.json", "ckpt/config.json", "replay.db", "phi/model.safetensors", "theta/model.safetensors",
                 "metrics.jsonl", "eval.json"):
        assert (smoke_run / name).exists(), name
    report = json.loads((smoke_run / "eval.json").read_text())
    samples = [json.loads(line) for line in (smoke_run / "eval_samples.jsonl").read_text().splitlines()]
    for policy in ("ckpt", "theta"):   # unranked pass@1: the fraction of each problem's samples that pass
        mine = [r for r in samples if r["policy"] == policy]
        tasks = {r["task_id"] for r in mine}
        expected = sum(sum(r["outcome"] == "passed" for r in mine if r["task_id"] == t) /
                       sum(r["task_id"] == t for r in mine) for t in tasks) / len(tasks)
        assert report[policy]["unranked"]["pass@1"] == pytest.approx(expected)
    metrics = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    stages = {m["stage"] for m in metrics}
    assert {"sft", "sample", "phi", "theta", "eval"} <= stages
    theta = [m for m in metrics if m["stage"] == "theta" and "loss" in m]
    assert theta and all(key in theta[-1] for key in ("td_loss", "adv_loss", "ce_loss", "lr", "tokens_per_second",
                                                       "mean_v_gt", "mean_q_generated"))


def test_existing_run_is_never_overwritten(smoke_run):
    result = train("smoke", "--out", str(smoke_run), "--stage", "eval")
    assert result.returncode != 0 and "--resume" in result.stderr and "--overwrite" in result.stderr


def test_killed_theta_stage_resumes_to_identical_weights(smoke_run, tmp_path):
    # A longer theta stage than the smoke preset's, so that the kill lands in its middle.
    straight, killed = killed_and_resumed("smoke", smoke_run, tmp_path)
    expected = load_file(straight / "theta" / "model.safetensors")
    got = load_file(killed / "theta" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_training_step_gradients_match_the_reference_loss(smoke_run):
    config = PRESETS["smoke"]
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "ckpt")
    train_problems, _ = load_split(config.data)
    problems = train_problems[:4]
    prompt_ids, prompt_mask, _ = encode(tokenizer, fit_prompts(tokenizer, problems, config.data.max_prompt_tokens)[0],
                                        config.data.max_prompt_tokens)
    programs, mask, _ = encode(tokenizer, [p.solutions[0] for p in problems], config.data.max_program_tokens)
    rewards = torch.tensor([1.0, -0.3, -0.6, -1.0])
    is_gt = torch.tensor([True, False, True, False])
    grads = {}
    for backend in ("cpp", "reference"):
        torch.manual_seed(0)
        model = QModel.from_pretrained(smoke_run / "phi")
        model.set_stage("theta")
        out = model(prompt_ids, prompt_mask, programs)
        loss = bcoder.bellman_loss(out.logits, out.ckpt_logits, out.values, programs, mask, rewards, is_gt,
                                   backend=backend).loss
        loss.backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["cpp"].keys() == grads["reference"].keys() and grads["cpp"]
    for name, grad in grads["cpp"].items():
        torch.testing.assert_close(grad, grads["reference"][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_the_fused_lm_head_trains_as_the_logits_do(smoke_run, stage):
    """loss_path "fused" (no [B, T, V] logits) and "logits": the same loss, Q and gradients."""
    config = PRESETS["smoke"]
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "ckpt")
    problems = load_split(config.data)[0][:4]
    prompt_ids, prompt_mask, _ = encode(tokenizer, fit_prompts(tokenizer, problems, config.data.max_prompt_tokens)[0],
                                        config.data.max_prompt_tokens)
    programs, mask, _ = encode(tokenizer, [p.solutions[0] for p in problems], config.data.max_program_tokens)
    loss_args = {"actions": programs, "mask": mask, "rewards": torch.tensor([1.0, -0.3, -0.6, -1.0]),
                 "is_ground_truth": torch.tensor([True, False, True, False]),
                 "beta_adv": 0.0 if stage == "phi" else 0.1, "beta_ce": 0.0 if stage == "phi" else 0.5}
    results = {}
    for path in ("fused", "logits"):
        model = QModel.from_pretrained(smoke_run / "phi")
        model.set_stage(stage)
        values, parts = q_loss(model, stage, prompt_ids, prompt_mask, programs, loss_path=path, **loss_args)
        parts.loss.backward()
        results[path] = (parts, {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    (fused, fused_grads), (logits, logits_grads) = results["fused"], results["logits"]
    for name in ("loss", "td_loss", "adv_loss", "ce_loss", "q"):
        torch.testing.assert_close(getattr(fused, name), getattr(logits, name), rtol=1e-5, atol=1e-5, msg=name)
    assert fused_grads.keys() == logits_grads.keys() and fused_grads
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, logits_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_phi_stage_lowers_td_error_on_fixed_data(smoke_run):
    # theta_ckpt's greedy programs: their advantage is 0 at every token, so the TD error is
    # reducible to 0 by the value alone (with another policy's tokens, Q = A_ckpt + V can be
    # out of reach of a value capped at R_max).
    config = PRESETS["smoke"]
    tokenizer = AutoTokenizer.from_pretrained(smoke_run / "ckpt")
    problems = load_split(config.data)[0][:8]
    prompt_ids, prompt_mask, _ = encode(tokenizer, fit_prompts(tokenizer, problems, config.data.max_prompt_tokens)[0],
                                        config.data.max_prompt_tokens)
    torch.manual_seed(0)
    model = QModel.from_checkpoint(smoke_run / "ckpt", QModelConfig(stage="phi"))
    programs = model.ckpt.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=False,
                                   max_new_tokens=20)[:, 1:]
    mask = program_mask(programs, tokenizer.eos_token_id)
    rewards = torch.tensor([1.0, -0.3, -0.6, -1.0] * 2)
    is_gt = torch.zeros(8, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model(prompt_ids, prompt_mask, programs)
        td = bcoder.bellman_loss(out.logits, None, out.values, programs, mask, rewards, is_gt,
                                 beta_adv=0.0, beta_ce=0.0).loss
        optimizer.zero_grad()
        td.backward()
        optimizer.step()
        losses.append(td.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_bad_inputs_end_with_clear_messages(tmp_path, capsys):
    not_t5 = tmp_path / "vit"   # neither a T5 nor a causal LM
    not_t5.mkdir()
    (not_t5 / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    result = train("smoke", "--out", str(tmp_path / "a"), "--model", str(not_t5), "--stage", "sample")
    assert result.returncode == 2 and "'vit' model" in result.stderr and "decoder-only" in result.stderr
    result = train("smoke", "--out", str(tmp_path / "b"), "--model", str(tmp_path / "missing"), "--stage", "sample")
    assert result.returncode == 2 and f"--model {tmp_path / 'missing'}: no such directory" in result.stderr

    bad = tmp_path / "mbpp.jsonl"
    bad.write_text('{"task_id": 601, "text": "x", "code": "", "test_list": ["assert f() == 1"], "test_setup_code": ""}\n'
                   '{oops\n')
    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--out", str(tmp_path / "c"), "--data", f"mbpp:{bad}", "--stage", "sample",
              "--model", str(not_t5)])
    assert f"{bad}:2" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--out", str(tmp_path / "d"), "--data", f"mbpp:{empty}", "--stage", "sample",
              "--model", str(not_t5)])
    assert "empty split" in capsys.readouterr().err


def test_the_paper_preset_and_print_config():
    result = train("paper", "--model", "ckpt", "--data", "apps:train", "--eval-data", "apps:test", "--print-config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(result.stdout)
    assert {key: config[key] for key in ("phi_lr", "phi_steps", "phi_batch", "theta_lr", "theta_steps", "theta_batch",
                                         "weight_decay", "samples_per_problem", "max_prompt_tokens",
                                         "max_program_tokens", "max_new_tokens", "rho_real", "alpha", "beta_adv",
                                         "beta_ce", "eval_temperature", "rank_m", "eval_data")} == {
        "phi_lr": 1e-5, "phi_steps": 18000, "phi_batch": 256, "theta_lr": 3e-5, "theta_steps": 10000,
        "theta_batch": 128, "weight_decay": 0.05, "samples_per_problem": 256, "max_prompt_tokens": 600,
        "max_program_tokens": 512, "max_new_tokens": 512, "rho_real": 0.5, "alpha": 1.0, "beta_adv": 0.1,
        "beta_ce": 0.5, "eval_temperature": 0.6, "rank_m": 256, "eval_data": "apps:test"}
    alone = train("paper", "--print-config")
    assert alone.returncode == 0 and json.loads(alone.stdout)["phi_steps"] == 18000
    assert "a run of --preset paper also needs --model and --data" in alone.stderr


def test_the_control_stage_runs_unless_turned_off():
    """The CE-only control trains after theta by default; --no-controls skips it, and eval does not need it."""
    from bcoder.config import PRESETS, with_values
    from bcoder.stages import stages_to_run

    assert stages_to_run(PRESETS["smoke"], None) == ["sft", "sample", "phi", "theta", "control", "eval"]
    assert "control" not in stages_to_run(with_values(PRESETS["smoke"], controls=False), None)


def test_passed_programs_count_as_ground_truth_only_when_asked():
    from bcoder.replay import StoredProgram
    from bcoder.stages import counts_as_ground_truth

    rows = {outcome: StoredProgram("p", "x", outcome, 1.0 if outcome == "passed" else -1.0)
            for outcome in ("passed", "failed", "runtime_error", "compile_error")}
    reference = StoredProgram("p", "x", "passed", 1.0, is_ground_truth=True)
    assert [counts_as_ground_truth(r, "reference") for r in (reference, *rows.values())] == [True] + [False] * 4
    assert [counts_as_ground_truth(r, "passed") for r in (reference, *rows.values())] == [True, True] + [False] * 3
