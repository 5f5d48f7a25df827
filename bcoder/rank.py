"""The free reward model of a trained run (docs/method.md#the-q-function, paper section 4.5): score
programs from any generator.

    r~(s_t, a_t) = Q_theta(s_t, a_t) - gamma * V_theta(s_{t+1})      (V after the last token = 0)
    R~(W)        = sum_t r~(s_t, a_t)                                  rank candidates by it, highest first

    python -m bcoder.rank --run RUN_DIR --samples FILE --out FILE [--problems FILE --format mbpp|humaneval|apps]

Each sample line is {"task_id": ..., "program": "..."} (or "completion", as bcoder.evaluate reads
them); extra fields are kept. Without --problems the task ids are those of the run's own data
(train and held-out). --out gets one JSON line per sample, in input order, with "return" (R~),
"token_rewards" (r~ per program token, its EOS last) and "tokens".

Scores come from ONE teacher-forced pass of the run's theta Q-model over each batch (bcoder.scoring's
Scorer; the prompt encoded as in training, `bcoder.sampling.encode` with the run's length limits), through
`bcoder.token_rewards`: the same prompt and tokenization that the Q-function was trained on.
Programs from another model are scored the same way (the paper's Table 3).
"""
import json

from bcoder.cli import EXPECTED_ERRORS, ArgumentParser, exit_with
from bcoder.data.loading import problems_of, read_samples
from bcoder.data.problems import DataError, read_jsonl
from bcoder.files import check_output, write_atomic
from bcoder.run import read_run_config


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
        problems = problems_of(config.data, args.problems, args.format)
        samples = read_samples(args.samples, problems)
        if not samples:
            raise DataError(f"{args.samples}: no samples")
        records = [record for _, record in read_jsonl(args.samples)]
        # torch, transformers and the model load here, once the flags and the files are good
        from bcoder.sampling import fit_prompt
        from bcoder.scoring import Scorer
        scorer = Scorer.from_run(args.run, config, args.batch_size)
        data = config.data
        prompts = {t: fit_prompt(scorer.tokenizer, problems[t], data.max_prompt_tokens, data.mbpp_instruction)[0]
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
