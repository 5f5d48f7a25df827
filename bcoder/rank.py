"""The free reward model of a trained run (docs/method.md#the-q-function, paper section 4.5): score
programs from any generator.

    r~(s_t, a_t) = Q_theta(s_t, a_t) - gamma * V_theta(s_{t+1})      (V after the last token = 0)
    R~(W)        = sum_t r~(s_t, a_t)                                  rank candidates by it, highest first

    python -m bcoder.rank --run RUN_DIR --samples FILE --out FILE [--problems FILE --format mbpp|humaneval|apps]

Each sample line is {"task_id": ..., "program": "..."} (or "completion", as bcoder.evaluate reads
them); extra fields are kept. Without --problems the task ids are those of the run's own data
(train and held-out). --out gets one JSON line per sample, in input order, with "return" (R~),
"token_rewards" (r~ per program token, its EOS last) and "tokens".

Scores come from ONE teacher-forced pass of the run's theta Q-model over each batch (the prompt
encoded as in training, `bcoder.sampling.encode` with the run's length limits), through
`bcoder.token_rewards`: the same prompt and tokenization that the Q-function was trained on.
Programs from another model are scored the same way (the paper's Table 3).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bcoder.data.loading import problems_of, read_samples
from bcoder.data.problems import DataError, read_jsonl
from bcoder.files import check_output, write_atomic
from bcoder.loss import token_rewards
from bcoder.run import EXPECTED_ERRORS, ArgumentParser, exit_with, load_q_model, load_tokenizer, read_run_config
from bcoder.sampling import encode, fit_prompt


@dataclass
class ProgramScore:
    ret: float             # R~(W)
    rewards: list          # r~ per token of the program (EOS included)
    tokens: list           # the program's tokens, as the tokenizer cut it


class Scorer:
    """R~ and r~ of (prompt, program) pairs under a theta-stage Q-model (T5 QModel or CausalQModel).

    scorer = Scorer.from_run("runs/tiny"); scores = scorer.score(prompts, programs)
    """

    def __init__(self, model, tokenizer, gamma=0.999, alpha=1.0, max_prompt_tokens=600, max_program_tokens=512,
                 batch_size=64, backend="auto"):
        if model.stage != "theta":
            raise ValueError(f"the reward model is Q_theta: need a theta-stage QModel, got stage {model.stage!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.gamma, self.alpha, self.backend = gamma, alpha, backend
        self.max_prompt_tokens, self.max_program_tokens, self.batch_size = max_prompt_tokens, max_program_tokens, batch_size

    @classmethod
    def from_run(cls, run_dir, config=None, batch_size=64):
        """The scorer of a trained run: RUN_DIR/theta (the Q-model) and the run's tokenizer, gamma, alpha."""
        run_dir = Path(run_dir)
        config = config or read_run_config(run_dir)
        if not (run_dir / "theta").is_dir():
            raise FileNotFoundError(f"{run_dir / 'theta'} not found: the run has no trained theta (run its theta stage)")
        model = load_q_model(run_dir, config, "theta")
        tokenizer = load_tokenizer(run_dir, config)
        return cls(model, tokenizer, gamma=config.gamma, alpha=config.alpha, max_prompt_tokens=config.max_prompt_tokens,
                   max_program_tokens=config.max_program_tokens, batch_size=batch_size, backend=config.loss_backend)

    @torch.no_grad()
    def score(self, prompts, programs):
        """One ProgramScore per (prompt, program), in input order. Batches group rows by prompt and
        length (less padding); padding does not change a row's scores."""
        if len(prompts) != len(programs):
            raise ValueError(f"{len(prompts)} prompts for {len(programs)} programs")
        causal = self.model.causal
        lengths = [len(self.tokenizer(p).input_ids) for p in programs]
        order = sorted(range(len(programs)), key=lambda i: (lengths[i], prompts[i]))
        scores = [None] * len(programs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            prompt_ids, prompt_mask, _ = encode(self.tokenizer, [prompts[i] for i in rows], self.max_prompt_tokens)
            actions, mask, _ = encode(self.tokenizer, [programs[i] for i in rows], self.max_program_tokens,
                                      program=True, causal=causal)
            device = next(self.model.parameters()).device
            prompt_ids, prompt_mask, actions, mask = (t.to(device) for t in (prompt_ids, prompt_mask, actions, mask))
            out = self.model(prompt_ids, prompt_mask, actions)
            r = token_rewards(out.logits.float(), out.values.float(), actions, mask, gamma=self.gamma,
                              alpha=self.alpha, backend=self.backend)
            for row, i in enumerate(rows):
                n = int(mask[row].sum())
                per_token = r[row, :n].tolist()
                scores[i] = ProgramScore(float(r[row, :n].double().sum()), per_token,
                                         self.tokenizer.convert_ids_to_tokens(actions[row, :n].tolist()))
        return scores


def main(argv=None):
    parser = ArgumentParser(prog="bcoder.rank", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run directory (with theta/)")
    parser.add_argument("--problems", help="problems file; default: the run's own data")
    parser.add_argument("--format", choices=("mbpp", "humaneval", "apps"), help="of --problems (default: the run's)")
    parser.add_argument("--samples", required=True, help="JSONL of {task_id, program|completion, ...}")
    parser.add_argument("--out", required=True, help="JSONL: each sample with return, token_rewards, tokens")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        check_output(args.out, args.force, [("--samples", args.samples), ("--problems", args.problems)])
        config = read_run_config(args.run)
        problems = problems_of(config, args.problems, args.format)
        samples = read_samples(args.samples, problems)
        if not samples:
            raise DataError(f"{args.samples}: no samples")
        records = [record for _, record in read_jsonl(args.samples)]
        scorer = Scorer.from_run(args.run, config, args.batch_size)
        prompts = {t: fit_prompt(scorer.tokenizer, problems[t], config.max_prompt_tokens, config.mbpp_instruction)[0]
                   for t, _ in samples}
        scores = scorer.score([prompts[t] for t, _ in samples], [p for _, p in samples])
        write_atomic(args.out, "".join(json.dumps({**record, "program": program, "return": s.ret,
                                                   "token_rewards": s.rewards, "tokens": s.tokens}) + "\n"
                                       for record, (_, program), s in zip(records, samples, scores)))
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.rank", error)
    returns = [s.ret for s in scores]
    print(json.dumps({"samples": len(scores), "mean_return": sum(returns) / max(1, len(returns))}))


if __name__ == "__main__":
    main()
