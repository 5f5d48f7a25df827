"""bcoder.rank: R~ and r~ of a trained run's theta, for any program; the rank CLI."""
import json
import subprocess
import sys

import pytest
import torch
from smoke_run import REPO, smoke_run_dir

from bcoder import token_rewards
from bcoder.data.loading import load_split
from bcoder.data.prompt import prompt_text
from bcoder.reference import capped_value
from bcoder.run import read_run_config
from bcoder.sampling import encode
from bcoder.scoring import Scorer


@pytest.fixture(scope="module")
def run_dir():
    return smoke_run_dir()


@pytest.fixture(scope="module")
def scorer(run_dir):
    return Scorer.from_run(run_dir, batch_size=3)


@pytest.fixture(scope="module")
def problems(run_dir):
    return load_split(read_run_config(run_dir).data)[1]


def test_return_is_the_sum_of_token_rewards_and_batching_changes_nothing(scorer, problems):
    prompts = [prompt_text(p) for p in problems for _ in range(2)]
    programs = [text for p in problems for text in (p.solutions[0], "x = (")]
    scores = scorer.score(prompts, programs)
    for s, program in zip(scores, programs):
        assert s.ret == pytest.approx(sum(s.rewards), abs=1e-5)
        assert len(s.rewards) == len(s.tokens) == len(scorer.tokenizer(program).input_ids)  # EOS included
        assert s.tokens[-1] == scorer.tokenizer.eos_token
    # One row at a time, straight through the model and bcoder.token_rewards.
    with torch.no_grad():
        for prompt, program, s in list(zip(prompts, programs, scores))[:3]:
            ids, mask, _ = encode(scorer.tokenizer, [prompt], 600)
            actions, amask, _ = encode(scorer.tokenizer, [program], 512)
            out = scorer.model(ids, mask, actions)
            r = token_rewards(out.logits, out.values, actions, amask, scorer.gamma, scorer.alpha,
                              value_residual=out.value_residual)[0]   # eq. 16: V_phi + (h1 - h2)
            assert s.rewards == pytest.approx(r.tolist(), abs=1e-5)
            # The free baselines from the same forward: phi's R~ (theta_ckpt's advantage, V_phi) and
            # theta_ckpt's mean token log-probability.
            r_phi = token_rewards(out.ckpt_logits, out.values, actions, amask, scorer.gamma, scorer.alpha)[0]
            assert s.ret_phi == pytest.approx(float(r_phi.sum()), abs=1e-5)
            logprob = torch.log_softmax(out.ckpt_logits[0], -1).gather(-1, actions[0].unsqueeze(-1))
            assert s.logprob == pytest.approx(float(logprob.mean()), abs=1e-5)


def test_token_rewards_are_q_minus_discounted_next_value():
    # Hand-built: one program of 3 tokens over 2 actions, A = l(a) - max l, V = capped_value(u).
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
    actions = torch.tensor([[1, 1, 0]])
    mask = torch.tensor([[True, True, True]])
    values = torch.zeros(1, 3)
    r = token_rewards(logits, values, actions, mask, gamma=0.5, alpha=1.0, backend="reference")
    v = capped_value(torch.zeros(3))
    q = torch.tensor([0.0, -2.0, 0.0]) + v
    expected = q - 0.5 * torch.cat([v[1:], torch.zeros(1)])
    assert r[0].tolist() == pytest.approx(expected.tolist())


def test_r_tilde_ranks_the_references_above_their_mutations(scorer, run_dir):
    """On the problems theta learnt (the run's training problems), every reference outranks the three
    programs made from it by changing one token (a quarter, half and three quarters in): R~ holds the
    policy's advantages, which are 0 along its own argmax path and negative off it."""
    train = load_split(read_run_config(run_dir).data)[0]

    def mutate(program, where):
        ids = scorer.tokenizer(program).input_ids[:-1]
        ids[len(ids) * where // 4] = (ids[len(ids) * where // 4] + 7) % len(scorer.tokenizer)
        return scorer.tokenizer.decode(ids, skip_special_tokens=True)

    pairs = [(p, s) for p in train for s in p.solutions]
    prompts = [prompt_text(p) for p, _ in pairs for _ in range(4)]
    programs = [program for _, s in pairs for program in (s, mutate(s, 1), mutate(s, 2), mutate(s, 3))]
    returns = [score.ret for score in scorer.score(prompts, programs)]
    below = [(pairs[i // 4][1], returns[i:i + 4]) for i in range(0, len(returns), 4)
             if not returns[i] > max(returns[i + 1:i + 4])]
    assert len(pairs) >= 16 and below == []


def test_scorer_needs_a_theta_model(run_dir):
    from bcoder.models import QModel

    phi = QModel.from_pretrained(run_dir / "phi")
    with pytest.raises(ValueError, match="theta"):
        Scorer(phi, None)


def test_cli_scores_each_sample_in_order(run_dir, problems, tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": problems[1].task_id, "program": problems[1].solutions[0], "model": "other"},
            {"task_id": problems[0].task_id, "program": "x = ("}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    result = subprocess.run([sys.executable, "-m", "bcoder.rank", "--run", str(run_dir), "--samples", str(samples),
                             "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["task_id"] for s in scored] == [r["task_id"] for r in rows] and scored[0]["model"] == "other"
    for s in scored:
        assert s["return"] == pytest.approx(sum(s["token_rewards"]), abs=1e-5)
        assert len(s["token_rewards"]) == len(s["tokens"])
    bad = subprocess.run([sys.executable, "-m", "bcoder.rank", "--run", str(tmp_path), "--samples", str(samples),
                          "--out", str(tmp_path / "other.jsonl")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "config.json" in bad.stderr
