"""What the theta-stage does to the sampled policy, measured on a trained run (issue 15's questions).

    python experiments/theta_drift.py --run runs/tiny [--batches 8] [--json OUT]

1. Policies: on the held-out samples of RUN/eval_samples.jsonl (each policy's own main pool, at the
   run's eval temperature), teacher-forced through both models: the mean per-token entropy of the
   sampled distribution softmax(l / temperature), and the share of sampled tokens that are the
   argmax of theta_ckpt's and of theta's logits.
2. Gradients: on `--batches` replay batches of the run's theta-stage (the same mixed batches, seeded
   as training draws them), the gradient of each loss term (TD, beta_adv L_adv, beta_ce L_ce) on
   theta's logits, at the theta-stage's start (theta = theta_ckpt, the trained phi) and at its end
   (RUN/theta). Per token group (ground-truth or generated row x action argmax of theta or not, and
   the sign of delta): the mean L2 norm of the gradient row, and the first-order change of the
   sampled policy's entropy that a unit gradient-descent step on that term makes, sum over the
   group's tokens of <grad_l H, -g>. Positive: the term flattens the distribution.
3. Compile errors: where each policy's compile-error samples break (the SyntaxError's line over the
   program's lines, in thirds), and how many ran out of tokens (no end token within max_new_tokens).
"""
import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

from bcoder.data.loading import load_split
from bcoder.models import Checkpoint
from bcoder.reference import bellman_loss
from bcoder.replay import ReplayStore
from bcoder.run import ckpt_dir, read_run_config
from bcoder.sampling import encode, fit_prompts


def entropy(logits, temperature):
    return torch.distributions.Categorical(logits=logits / temperature).entropy()


def teacher_forced(model, tokenizer, prompts, programs, config):
    causal = model.causal
    prompt_ids, prompt_mask, _ = encode(tokenizer, prompts, config.data.max_prompt_tokens)
    actions, mask, _ = encode(tokenizer, programs, config.data.max_program_tokens, program=True, causal=causal)
    with torch.no_grad():
        out = model(prompt_ids, prompt_mask, actions)
    return out, actions, mask.bool()


def policy_measures(run, config, model, tokenizer, problems):
    """Entropy and argmax shares of each policy's held-out samples."""
    data = config.data
    prompts = dict(zip((p.task_id for p in problems),
                       fit_prompts(tokenizer, problems, data.max_prompt_tokens, data.mbpp_instruction)[0]))
    samples = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    result = {}
    for policy in ("ckpt", "theta"):
        mine = [s for s in samples if s["policy"] == policy and s["pool"] == "main"]
        sums = Counter()
        for start in range(0, len(mine), 64):
            chunk = mine[start:start + 64]
            out, actions, mask = teacher_forced(model, tokenizer, [prompts[s["task_id"]] for s in chunk],
                                                [s["program"] for s in chunk], config)
            logits = out.logits if policy == "theta" else out.ckpt_logits
            sums["tokens"] += int(mask.sum())
            sums["entropy"] += float(entropy(logits.float(), config.eval.temperature)[mask].sum())
            sums["ckpt_argmax"] += int((out.ckpt_logits.argmax(-1) == actions)[mask].sum())
            sums["theta_argmax"] += int((out.logits.argmax(-1) == actions)[mask].sum())
        n = max(1, sums["tokens"])
        result[policy] = {"samples": len(mine), "tokens": sums["tokens"], "entropy": sums["entropy"] / n,
                          "share_ckpt_argmax": sums["ckpt_argmax"] / n, "share_theta_argmax": sums["theta_argmax"] / n}
    return result


def gradient_measures(config, model, tokenizer, store, prompts, batches):
    """Per loss term and token group: mean gradient norm on theta's logits and the entropy change."""
    totals = defaultdict(float)
    groups = defaultdict(int)
    data, loss = config.data, config.loss
    schedule = store.batches(config.theta.batch, config.train.rho_real, seed=config.train.seed,
                             problem_ids=list(prompts))
    for step in range(batches):
        rows = store.by_ids(schedule.ids_of(step))
        prompt_ids, prompt_mask, _ = encode(tokenizer, [prompts[r.problem_id] for r in rows], data.max_prompt_tokens)
        actions, mask, _ = encode(tokenizer, [r.program for r in rows], data.max_program_tokens, program=True,
                                  causal=model.causal)
        mask = mask.bool()
        is_gt = torch.tensor([r.is_ground_truth for r in rows])
        rewards = torch.tensor([r.reward for r in rows], dtype=torch.float64)
        with torch.no_grad():
            out = model(prompt_ids, prompt_mask, actions)
        logits = out.logits.double().requires_grad_()
        ckpt_logits, values = out.ckpt_logits.double(), out.values.double()
        _, td, adv, ce = bellman_loss(logits, ckpt_logits, values, actions, mask, rewards, is_gt, gamma=loss.gamma,
                                      alpha=loss.alpha, operator=loss.operator)
        # delta's sign per token, from the TD term's gradient: dL/dQ_t = -2 delta_t / n
        h = entropy(logits, config.eval.temperature)
        grad_h, = torch.autograd.grad(h[mask].sum(), logits, retain_graph=True)
        is_argmax = logits.argmax(-1) == actions
        td_grad_q = None
        for name, term in (("td", td), ("adv", config.loss.beta_adv * adv), ("ce", config.loss.beta_ce * ce)):
            g, = torch.autograd.grad(term, logits, retain_graph=True)
            if name == "td":
                td_grad_q = g.gather(-1, actions.unsqueeze(-1)).squeeze(-1)   # sign of -delta on a_t (non-argmax)
            norm = g.norm(dim=-1)
            flattening = -(grad_h * g).sum(-1)
            for row_kind, rows_mask in (("gt", is_gt.unsqueeze(1)), ("generated", ~is_gt.unsqueeze(1))):
                for action_kind, action_mask in (("argmax", is_argmax), ("other", ~is_argmax)):
                    tokens = mask & rows_mask & action_mask
                    key = f"{row_kind}/{action_kind}"
                    totals[f"{name}/{key}/norm"] += float(norm[tokens].sum())
                    totals[f"{name}/{key}/entropy_change"] += float(flattening[tokens].sum())
                    if name == "td":
                        groups[key] += int(tokens.sum())
                        positive = tokens & (td_grad_q < 0)   # delta > 0: the TD step raises Q(s, a)
                        groups[key + "/delta>0"] += int(positive.sum())
    table = {}
    for key, count in groups.items():
        if "/delta" in key:
            continue
        table[key] = {"tokens": count, "share_delta_positive": groups[key + "/delta>0"] / max(1, count)}
        for name in ("td", "adv", "ce"):
            table[key][f"{name}_norm"] = totals[f"{name}/{key}/norm"] / max(1, count)
            table[key][f"{name}_entropy_change"] = totals[f"{name}/{key}/entropy_change"]
    return table


def compile_error_positions(run, config, tokenizer):
    samples = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    result = {}
    for policy in ("ckpt", "theta"):
        errors = [s for s in samples
                  if s["policy"] == policy and s["pool"] == "main" and s["outcome"] == "compile_error"]
        where = Counter()
        for s in errors:
            if len(tokenizer(s["program"], add_special_tokens=False).input_ids) >= config.sample.max_new_tokens - 1:
                where["out of tokens"] += 1
                continue
            try:
                compile(s["program"], "<program>", "exec")
                where["compiles (error at run time)"] += 1
            except SyntaxError as error:
                lines = max(1, s["program"].count("\n") + 1)
                where[("first", "middle", "last")[min(2, 3 * ((error.lineno or 1) - 1) // lines)] + " third"] += 1
            except ValueError:
                where["other"] += 1
        result[policy] = {"compile_errors": len(errors), **dict(where)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--batches", type=int, default=8, help="theta-stage replay batches for the gradients")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = read_run_config(args.run)
    checkpoint = Checkpoint(ckpt_dir(args.run, config), config.model.architecture)
    tokenizer = checkpoint.tokenizer()
    train, test = load_split(config.data)
    theta = checkpoint.load_q_model(args.run / "theta").eval()
    report = {"policies": policy_measures(args.run, config, theta, tokenizer, test),
              "compile_errors": compile_error_positions(args.run, config, tokenizer)}
    prompts = dict(zip((p.task_id for p in train),
                       fit_prompts(tokenizer, train, config.data.max_prompt_tokens, config.data.mbpp_instruction)[0]))
    with ReplayStore(args.run / "replay.db", read_only=True) as store:
        start = checkpoint.load_q_model(args.run / "phi").set_stage("theta").eval()
        report["gradients_at_start"] = gradient_measures(config, start, tokenizer, store, prompts, args.batches)
        report["gradients_at_end"] = gradient_measures(config, theta, tokenizer, store, prompts, args.batches)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
