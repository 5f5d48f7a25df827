"""The free reward model of a trained run (bcoder.rank's docstring: r~ and R~): `Scorer` scores
(prompt, program) pairs under the run's theta Q-model. It loads torch, transformers and the model:
the commands import it once their flags are good.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from bcoder.loss import token_rewards
from bcoder.models import Checkpoint
from bcoder.models.q_loss import value_terms
from bcoder.run import ckpt_dir, read_run_config
from bcoder.sampling import encode


@dataclass
class ProgramScore:
    ret: float             # R~(W) under Q_theta
    rewards: list          # r~ per token of the program (EOS included)
    tokens: list           # the program's tokens, as the tokenizer cut it
    ret_phi: float | None  # R~(W) under Q_phi (theta_ckpt's advantage, V_phi): the value without the theta-stage
    logprob: float         # theta_ckpt's mean log-probability per token: the standard free ranking baseline


class Scorer:
    """R~ and r~ of (prompt, program) pairs under a theta-stage Q-model (T5 QModel or CausalQModel).

    scorer = Scorer.from_run("runs/tiny"); scores = scorer.score(prompts, programs)
    """

    def __init__(self, model, tokenizer, gamma=0.999, alpha=1.0, max_prompt_tokens=600, max_program_tokens=512,
                 batch_size=64, backend="auto", value_residual="additive"):
        if model.stage != "theta":
            raise ValueError(f"the reward model is Q_theta: need a theta-stage QModel, got stage {model.stage!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.gamma, self.alpha, self.backend, self.value_residual = gamma, alpha, backend, value_residual
        self.max_prompt_tokens, self.max_program_tokens = max_prompt_tokens, max_program_tokens
        self.batch_size = batch_size

    @classmethod
    def from_run(cls, run_dir, config=None, batch_size=64):
        """The scorer of a trained run: RUN_DIR/theta (the Q-model) and the run's tokenizer, gamma, alpha."""
        run_dir = Path(run_dir)
        config = config or read_run_config(run_dir)
        if not (run_dir / "theta").is_dir():
            raise FileNotFoundError(f"{run_dir / 'theta'} not found: the run has no trained theta "
                                    f"(run its theta stage)")
        checkpoint = Checkpoint(ckpt_dir(run_dir, config), config.model.architecture)
        loss, data = config.loss, config.data
        return cls(checkpoint.load_q_model(run_dir / "theta"), checkpoint.tokenizer(), gamma=loss.gamma,
                   alpha=loss.alpha, max_prompt_tokens=data.max_prompt_tokens,
                   max_program_tokens=data.max_program_tokens, batch_size=batch_size, backend=loss.backend,
                   value_residual=loss.value_residual)

    @torch.no_grad()
    def score(self, prompts, programs):
        """One ProgramScore per (prompt, program), in input order: R~ under theta, and from the same forward the
        free baselines' scores (R~ under phi, theta_ckpt's log-probability). Batches group rows by prompt and
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
            values, residual = value_terms(out, self.value_residual)
            rewards = {"gamma": self.gamma, "alpha": self.alpha, "backend": self.backend}
            r = token_rewards(out.logits.float(), values.float(), actions, mask,
                              value_residual=None if residual is None else residual.float(), **rewards)
            # Q_phi's advantage is theta_ckpt's and its value u_phi (frozen in the theta-stage), when phi exists
            r_phi = token_rewards(out.ckpt_logits.float(), out.values.float(), actions, mask, **rewards) \
                if self.model.config.init_value_from_phi else None
            logprob = torch.log_softmax(out.ckpt_logits.float(), dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(rows):
                n = int(mask[row].sum())
                scores[i] = ProgramScore(float(r[row, :n].double().sum()), r[row, :n].tolist(),
                                         self.tokenizer.convert_ids_to_tokens(actions[row, :n].tolist()),
                                         None if r_phi is None else float(r_phi[row, :n].double().sum()),
                                         float(logprob[row, :n].double().mean()))
        return scores
