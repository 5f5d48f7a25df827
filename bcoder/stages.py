"""The stages of a training run, each resumable and each writing into the run directory, and
`run_stages`, which runs them in order for `python -m bcoder.train` (its docstring: what each stage
does and how they run across processes). The eval stage's `evaluate_run` is also
`python -m bcoder.evaluate --run`'s.

This module is the orchestrator at the top: it uses bcoder.report (figures after each stage), which
never imports it. It loads torch, transformers and the models: the commands import it once their
flags are good.
"""
import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bcoder import distributed as dist
from bcoder.config import TrainingError, check_config
from bcoder.data.loading import load_split
from bcoder.data.problems import DataError
from bcoder.data.tokenizer import tiny_tokenizer
from bcoder.files import write_atomic
from bcoder.models import Checkpoint, check_checkpoint, new_checkpoint, q_loss
from bcoder.models.causal import causal_lm_loss
from bcoder.protocols import OUTCOMES, PROTOCOLS, outcome_returns, protocol_report
from bcoder.replay import ReplayStore
from bcoder.report import after_stage
from bcoder.run import (
    CKPT_DIR,
    EVAL_FILE,
    REPLAY_FILE,
    STAGES,
    ckpt_dir,
    copy_replay,
    open_run,
    read_run_config,
    stage_done,
)
from bcoder.sampling import encode, fit_prompts, generate, sample_pool
from bcoder.scoring import Scorer

SAMPLE_CHUNK = 16                 # problems per sampling call (and per seed) in the sample stage


# ----- the training loop shared by sft, phi and theta -----

def train_steps(run, stage, model, parameters, steps, lr, decay, step_fn, curve=None):
    """Runs step_fn(step, net) -> (loss, metrics) for steps [start, steps) with AdamW, resuming from
    the stage's last checkpoint; `decay` picks linear decay to 0 (else a constant lr).

    `model` sits on this process's device; `net` is what step_fn calls: the model itself in one
    process, its DistributedDataParallel (or, with run.fsdp, FSDP2) wrapper across several.
    `parameters(model)` lists the trained parameters. Each rank's loss must be scaled so that the
    ranks' mean is the global batch's loss (DDP averages the gradients); metrics["tokens"] and
    metrics["programs_cut"] (programs longer than max_program_tokens) are this rank's counts. Rank 0
    logs and saves the checkpoints: the unwrapped model's full state and the optimiser's, so that
    any number of processes resumes them. `curve(model)`, called by every rank every
    config.train.curve_every steps and after the last, returns the metrics to log then (rank 0's count).
    Returns the trained model (unwrapped).
    """
    config = run.config
    sharded = run.fsdp and dist.active()

    def make_optimizer():
        return torch.optim.AdamW(parameters(model), lr=lr, weight_decay=config.train.weight_decay)

    state = run.load_state(stage)
    if state is not None:  # the full state, from any number of processes, with or without FSDP
        optimizer_state, keyed_by_name = dist.load_full_state(model, state, sharded, make_optimizer)
    net = dist.wrap(model, fsdp=sharded)
    optimizer = make_optimizer()
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda step: max(0.0, 1 - step / steps)) if decay else (lambda step: 1.0))
    start = 0
    if state is not None:
        dist.load_optimizer_state(model, optimizer, optimizer_state, keyed_by_name)
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        start = state["step"]
        run.forget_metrics_after(stage, start)
    model.train()
    last = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=stage, unit="step", file=sys.stderr,
               disable=not dist.is_main())
    for step in bar:
        if curve and config.train.curve_every and step % config.train.curve_every == 0:
            run.log({"stage": stage, "step": step, **curve(model)})
            model.train()
        loss, metrics = step_fn(step, net)
        # The ranks' mean loss: the global batch's; every rank sees the same value (and stops together).
        total_loss, tokens, programs_cut = dist.all_sum([loss.item(), metrics.get("tokens", 0),
                                                         metrics.get("programs_cut", 0)])
        total_loss /= dist.world_size()
        if not math.isfinite(total_loss):
            raise TrainingError(f"{stage}: non-finite loss {total_loss} at step {step} "
                                f"({metrics.get('batch', 'batch ' + str(step))}); the last good checkpoint "
                                f"is kept in {run.path('state')}, resume after fixing the cause")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip_grad_norm(optimizer, config.train.grad_clip)
        optimizer.step()
        schedule.step()
        if (step + 1) % config.train.log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            seconds, last = now - last, now
            metrics.pop("batch", None)
            metrics["tokens"], metrics["programs_cut"] = int(tokens), int(programs_cut)
            run.log({"stage": stage, "step": step + 1, "loss": total_loss, "grad_norm": grad_norm,
                     "lr": schedule.get_last_lr()[0], **metrics,
                     "tokens_per_second": metrics.get("tokens", 0) * config.train.log_every / seconds})
            bar.set_postfix({name: f"{value:.4g}" for name, value in (("loss", total_loss), *metrics.items())
                             if name in ("loss", "td_loss", "adv_loss", "ce_loss")}, refresh=False)
        if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == steps:
            model_state, optimizer_state = dist.full_state(model, optimizer, sharded)
            run.save_state(stage, {"step": step + 1, "model": model_state, "optimizer": optimizer_state,
                                   "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                                   "python_rng": random.getstate(), "sharded": sharded,
                                   "world_size": dist.world_size()})
    if curve and config.train.curve_every and start < steps:
        run.log({"stage": stage, "step": steps, **curve(model)})
    return model


def _clip_grad_norm(optimizer, max_norm):
    """Clips the (already averaged) gradients of every parameter the optimiser holds to max_norm (0: no clip);
    their norm before."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm or math.inf)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor over the shards
        norm = norm.full_tensor()
    return norm.item()


def global_weights(*counts):
    """(world_size * local / global) for each of this rank's counts (0 where the global count is 0).

    A loss part that is a mean over n_local items times its weight, averaged over the ranks (as
    DDP averages gradients), is the mean over all n_global items of the global batch; in one
    process every weight is 1.0."""
    totals = dist.all_sum(counts)
    return [dist.world_size() * local / total if total else 0.0 for local, total in zip(counts, totals)]


# ----- sft, sample, phi and theta -----

def stage_sft(run):
    """theta_ckpt from scratch: a tiny T5 or decoder-only model with a local tokenizer, trained on the
    reference solutions."""
    config = run.config
    train, _ = load_split(config.data)
    tokenizer = tiny_tokenizer(train)
    model_class, model_config = new_checkpoint(config.model, tokenizer,
                                               config.data.max_prompt_tokens + config.data.max_program_tokens)
    causal = not model_config.is_encoder_decoder
    torch.manual_seed(config.train.seed)
    model = model_class(model_config).to(dist.device())
    rows = dist.batch_slice(config.sft.batch)  # this rank's rows of every global batch
    prompts, prompts_cut = fit_prompts(tokenizer, train, config.data.max_prompt_tokens, config.data.mbpp_instruction)
    run.log({"stage": "sft", "problems": len(train), "prompts_cut": prompts_cut})
    pairs = [(prompt, solution) for problem, prompt in zip(train, prompts) for solution in problem.solutions]

    def step_fn(step, net):
        epoch = step * config.sft.batch // len(pairs)
        order = random.Random(f"{config.train.seed}/sft/{epoch}").sample(pairs, len(pairs))
        start = step * config.sft.batch % len(pairs)
        batch = (order + order)[start:start + config.sft.batch][rows]
        prompt_ids, prompt_mask, _ = encode(tokenizer, [p for p, _ in batch], config.data.max_prompt_tokens)
        labels, label_mask, programs_cut = encode(tokenizer, [s for _, s in batch], config.data.max_program_tokens,
                                                  program=True, causal=causal)
        prompt_ids, prompt_mask, labels, label_mask = to_device(prompt_ids, prompt_mask, labels, label_mask)
        if causal:
            loss = causal_lm_loss(net, prompt_ids, prompt_mask, labels, label_mask)
        else:
            loss = net(input_ids=prompt_ids, attention_mask=prompt_mask,
                       labels=labels.masked_fill(~label_mask, -100)).loss
        tokens = int(label_mask.sum())
        weight, = global_weights(tokens)  # the mean over the global batch's tokens
        ce = dist.all_sum([loss.item() * tokens])[0] / dist.all_sum([tokens])[0]
        return loss * weight, {"ce_loss": ce, "tokens": tokens, "programs_cut": programs_cut}

    model = train_steps(run, "sft", model, parameters=lambda m: list(m.parameters()), steps=config.sft.steps,
                        lr=config.sft.lr, decay=True, step_fn=step_fn)
    dist.save_pretrained_on_main(model, ckpt_dir(run.dir, config), lambda: model_class(model_config),
                                 also=[tokenizer])


def decoding(config):
    """generate's nucleus and limits, the same in sample, the curve and eval."""
    return {"top_p": config.sample.top_p, "max_prompt_tokens": config.data.max_prompt_tokens,
            "max_new_tokens": config.sample.max_new_tokens}


def to_device(*tensors):
    return [t.to(dist.device(), non_blocking=True) for t in tensors]


def stage_sample(run):
    """m samples per training problem from theta_ckpt, scored in the sandbox, into the replay store.

    Across N processes: the problems come in chunks of SAMPLE_CHUNK, each sampled with its own seed
    (the same programs at any N); rank r samples and runs chunks r, r + N, ... on its own machine's
    sandbox and sends them to rank 0, which alone writes the store, in chunk order (the rows that
    one process would write, in the same order)."""
    config = run.config
    checkpoint = Checkpoint(ckpt_dir(run.dir, config), config.model.architecture)
    model = checkpoint.load().to(dist.device())
    train, _ = load_split(config.data)
    tokenizer = checkpoint.tokenizer()
    chunk, ranks = SAMPLE_CHUNK, dist.world_size()
    prompts, prompts_cut = fit_prompts(tokenizer, train, config.data.max_prompt_tokens, config.data.mbpp_instruction)
    state = run.load_state("sample") or {"next": 0, "programs": 0, "capped": 0}
    store = ReplayStore(run.path(REPLAY_FILE), create=True) if dist.is_main() else None
    try:
        with dist.sandbox(config.sandbox.timeout, config.sandbox.workers) as sandbox:
            if state["next"] == 0:
                truths = [(p, s) for p in train for s in p.solutions]
                mine = truths[dist.contiguous_part(len(truths))]
                results = sandbox.run([s for _, s in mine], [p.tests for p, _ in mine])
                results = dist.gather(results)
                if store is not None:
                    store.add_problems(train)
                    store.add_results([p.task_id for p, _ in truths], [s for _, s in truths],
                                      [r for part in results for r in part], model="ground_truth",
                                      is_ground_truth=True)
            for round_start in tqdm(range(state["next"], len(train), chunk * ranks),
                                    total=math.ceil((len(train) - state["next"]) / (chunk * ranks)), desc="sample",
                                    unit="round", file=sys.stderr, disable=not dist.is_main()):
                start, mine = round_start + dist.rank() * chunk, None
                if start < len(train):
                    problems = train[start:start + chunk]
                    torch.manual_seed(hash((config.train.seed, start)) % 2**31)
                    programs, capped = generate(model, tokenizer, prompts[start:start + chunk],
                                                samples=config.sample.samples_per_problem,
                                                temperature=config.sample.temperature, **decoding(config))
                    owners = [p for p in problems for _ in range(len(programs) // len(problems))]
                    results = sandbox.run(programs, [p.tests for p in owners])
                    mine = ([p.task_id for p in owners], programs, results, sum(capped))
                for part in dist.gather(mine) or ():
                    if part is not None:
                        *rows, capped = part
                        store.add_results(*rows, model=str(ckpt_dir(run.dir, config)))
                        state["programs"] += len(rows[1])
                        state["capped"] += capped
                state["next"] = min(len(train), round_start + chunk * ranks)
                run.save_state("sample", state)
        if store is not None:
            run.log({"stage": "sample", "step": len(train), "prompts_cut": prompts_cut, "programs": state["programs"],
                     "programs_capped": state["capped"],
                     **{f"count_{k}": v for k, v in store.counts().items()}})
    finally:
        if store is not None:
            store.close()


def q_model_for(run, checkpoint, stage):
    """The Q-model a stage starts from: phi from theta_ckpt; theta from the trained phi (or, with
    --no-init-value-from-phi, from theta_ckpt with a value head trained from scratch)."""
    config = run.config
    torch.manual_seed(config.train.seed)
    if stage == "theta" and config.model.init_value_from_phi:
        return checkpoint.load_q_model(run.path("phi")).set_stage("theta")
    return checkpoint.new_q_model(config.model, stage)


def counts_as_ground_truth(row, ground_truth):
    """Whether a replay row gets L_adv and L_ce: a reference solution, or with ground_truth "passed" also a
    generated program that passed every test (section 4.1: correct programs should attain the highest
    advantage, whoever wrote them)."""
    return row.is_ground_truth or (ground_truth == "passed" and row.outcome == "passed")


def stage_value(run, stage):
    """The phi-stage (L_V, only phi trains), the theta-stage (L_ft) or its CE-only control ("control": the
    theta-stage's start, steps and batches, with L_Q and L_adv cut from theta's logits, so that only L_ce moves
    the policy and L_Q trains the value head alone), on replay batches; writes RUN/<stage>."""
    config = run.config
    checkpoint = Checkpoint(ckpt_dir(run.dir, config), config.model.architecture)
    tokenizer = checkpoint.tokenizer()
    control, stage = stage == "control", "theta" if stage == "control" else stage
    saved_as = "control" if control else stage
    model = q_model_for(run, checkpoint, stage).to(dist.device())
    model.checkpoint_activations(config.train.gradient_checkpointing)
    causal = model.causal
    train, _ = load_split(config.data)
    by_id = {p.task_id: p for p in train}
    data = config.data
    prompts = dict(zip(by_id, fit_prompts(tokenizer, train, data.max_prompt_tokens, data.mbpp_instruction)[0]))
    store = ReplayStore(run.path(REPLAY_FILE), read_only=True)
    batch_size = config.phi.batch if stage == "phi" else config.theta.batch
    batches = store.batches(batch_size, config.train.rho_real, seed=config.train.seed, problem_ids=list(by_id))
    mine = dist.batch_slice(batch_size)  # this rank's rows of every global batch
    device = dist.device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.dtype == "bfloat16")
    loss = config.loss
    beta_adv, beta_ce = (0.0, 0.0) if stage == "phi" else (loss.beta_adv, loss.beta_ce)

    def step_fn(step, net):
        rows = store.by_ids(batches.ids_of(step)[mine])  # batches[step][mine], reading only this rank's rows
        prompt_ids, prompt_mask, _ = encode(tokenizer, [prompts[r.problem_id] for r in rows], data.max_prompt_tokens)
        programs, mask, programs_cut = encode(tokenizer, [r.program for r in rows], data.max_program_tokens,
                                              program=True, causal=causal)
        is_gt = torch.tensor([counts_as_ground_truth(r, loss.ground_truth) for r in rows])
        rewards = torch.tensor([r.reward for r in rows])
        prompt_ids, prompt_mask, programs, mask, is_gt, rewards = to_device(
            prompt_ids, prompt_mask, programs, mask, is_gt, rewards)
        # Each term is a mean over this rank's programs (td_scale program) or tokens (token), ground-truth
        # programs (adv; ce_scale sum) or ground-truth tokens (ce_scale mean): weighted by this rank's share of
        # the global counts, the ranks' mean loss is the global batch's.
        gt_tokens = mask & is_gt.unsqueeze(1)
        counts = [len(rows) if loss.td_scale == "program" else int(mask.sum()), int(is_gt.sum()),
                  int(is_gt.sum()) if loss.ce_scale == "sum" else int(gt_tokens.sum())]
        w_td, w_adv, w_ce = global_weights(*counts)
        loss_args = {"actions": programs, "mask": mask, "rewards": rewards, "is_ground_truth": is_gt,
                     "gamma": loss.gamma, "alpha": loss.alpha, "beta_adv": beta_adv * w_adv / w_td,
                     "beta_ce": beta_ce * w_ce / w_td, "operator": loss.operator, "backend": loss.backend,
                     "td_scale": loss.td_scale, "ce_scale": loss.ce_scale}
        if control:
            loss_args["logit_terms"] = "ce"
        with autocast:
            value, parts = q_loss(net, stage, prompt_ids, prompt_mask, programs, loss_path=loss.path,
                                  value_residual=loss.value_residual, **loss_args)
        sums = [parts.td_loss.item() * counts[0], parts.adv_loss.item() * counts[1],
                parts.ce_loss.item() * counts[2], *counts]
        with torch.no_grad():
            q = parts.q
            for rows_of in (is_gt, ~is_gt):
                tokens = mask & rows_of.unsqueeze(1)
                sums += [value[tokens].sum().item(), q[tokens].sum().item(), int(tokens.sum())]
        sums = dist.all_sum(sums)  # the global batch's metrics
        td, adv, ce = (total / max(count, 1) for total, count in zip(sums[:3], sums[3:6]))
        metrics = {"td_loss": td, "td_rmse": math.sqrt(td), "adv_loss": adv, "ce_loss": ce,
                   "tokens": int(mask.sum()), "programs_cut": programs_cut,
                   "batch": f"replay rows {[r.id for r in rows]}"}
        for name, (v, q_sum, count) in (("gt", sums[6:9]), ("generated", sums[9:12])):
            if count:
                metrics[f"mean_v_{name}"], metrics[f"mean_q_{name}"] = v / count, q_sum / count
        return parts.loss * w_td, metrics

    steps, lr = (config.phi.steps, config.phi.lr) if stage == "phi" else (config.theta.steps, config.theta.lr)
    measure_curve = config.train.curve_every and not control   # Figure 1's curves are theta's and phi's
    with (dist.sandbox(config.sandbox.timeout, config.sandbox.workers) if measure_curve and dist.is_main()
          else contextlib.nullcontext()) as sandbox:
        curve = pass_curve(config, stage, train, prompts, tokenizer, sandbox,
                           build=lambda: q_model_for(run, checkpoint, stage)) if measure_curve else None
        model = train_steps(run, saved_as, model, parameters=lambda m: m.trainable_parameters(), steps=steps, lr=lr,
                            decay=stage == "theta", step_fn=step_fn, curve=curve)
    store.close()
    dist.save_pretrained_on_main(model, run.path(saved_as), lambda: q_model_for(run, checkpoint, stage))


def pass_curve(config, stage, train, prompts, tokenizer, sandbox, build):
    """Figure 1's curve: greedy pass@1 of the stage's policy on a fixed, seeded subset of the training
    problems (theta in the theta-stage; in the phi-stage the policy is theta_ckpt, frozen, so its value
    is computed once). Rank 0 generates and runs the programs, from the whole model (under FSDP every
    rank gathers it to rank 0 first: build() makes the unsharded model that takes the state)."""
    subset = random.Random(f"{config.train.seed}/curve").sample(train, min(config.train.curve_problems, len(train)))
    known, measured = {}, []

    def curve(model):
        if stage == "phi" and measured:   # on every rank: the others gather the model only when rank 0 measures
            return dict(known)
        measured.append(True)
        model = dist.unsharded_on_main(model, build)
        if model is None:
            return {}
        policy = model.policy_model("theta" if stage == "theta" else "ckpt")
        programs, _ = generate(policy, tokenizer, [prompts[p.task_id] for p in subset], samples=1, temperature=0,
                               **decoding(config))
        passed = sum(r.passed for r in sandbox.run(programs, [p.tests for p in subset]))
        known.update({"train_pass@1": passed / len(subset), "curve_problems": len(subset)})
        return dict(known)

    return curve


# ----- eval: the protocols on a trained run (also python -m bcoder.evaluate --run) -----

EVAL_CHUNK = 16  # held-out problems per sampling call and seed in evaluate_run


def _record_outcomes(sandbox, records, problems, field, tests_of):
    """Sets record[field] to the outcome on tests_of(problem), running each distinct (task, program) once;
    "no_tests" where the problem has none of those tests (nothing to run: no program passes no tests)."""
    for r in records:
        if not tests_of(problems[r["task_id"]]).cases:
            r[field] = "no_tests"
    records = [r for r in records if field not in r]
    keys = list(dict.fromkeys((r["task_id"], r["program"]) for r in records))
    results = dict(zip(keys, sandbox.run([p for _, p in keys], [tests_of(problems[t]) for t, _ in keys])))
    for r in records:
        r[field] = results[(r["task_id"], r["program"])].outcome


RANKERS = {"phi": "return_phi", "logprob": "logprob"}   # the free baselines beside theta's R~: record fields


def evaluate_run(run_dir, config=None, protocols=PROTOCOLS, samples=None, problems=None, out=None, answers="strict"):
    """The eval of a trained run: samples (a pool of config.eval.samples per held-out problem and policy at
    config.eval.temperature, plus greedy; a second pool for filtered/oracle if config.eval.filter_samples), or
    the given `samples` (dicts with task_id, program and optionally policy); runs them against all of their
    problem's tests, answers compared under the policy `answers` (and the example tests alone, for filtered),
    scores them by R~ under theta and by the free baselines (RANKERS: R~ under phi, theta_ckpt's mean token
    log-probability), and writes eval.json and eval_samples.jsonl (to the run directory, or `out` and
    `<out stem>_samples.jsonl`). Returns the report.

    The policies sampled: theta_ckpt ("ckpt"), theta, and theta's CE-only control ("control") where the run
    has one. Every policy samples chunk c with the same seed (common random numbers), so the differences
    between policies are measured on matched draws."""
    run_dir = Path(run_dir)
    config = config or read_run_config(run_dir)
    protocols = [p for p in PROTOCOLS if p in protocols]
    if problems is None:
        problems = load_split(config.data)[1]
    by_id = {p.task_id: p for p in problems}
    scorer = Scorer.from_run(run_dir, config)
    scorer.model.to(dist.device())
    prompts, prompts_cut = fit_prompts(scorer.tokenizer, problems, config.data.max_prompt_tokens,
                                       config.data.mbpp_instruction)
    m = config.eval.rank_m or None
    settings = {"n": config.eval.samples, "m": min(m or config.eval.samples, config.eval.samples),
                "temperature": config.eval.temperature, "top_p": config.sample.top_p, "ks": list(config.eval.ks),
                "reward_model": "theta", "problems": len(problems), "prompts_cut": prompts_cut,
                "max_new_tokens": config.sample.max_new_tokens, "answers": answers}
    records, greedy, capped = [], {}, {}
    if samples is None:
        policies = ["ckpt", "theta"] + (["control"] if (run_dir / "control").is_dir() else [])
        models = {policy: scorer.model for policy in ("ckpt", "theta")}
        if "control" in policies:
            checkpoint = Checkpoint(ckpt_dir(run_dir, config), config.model.architecture)
            models["control"] = checkpoint.load_q_model(run_dir / "control").to(dist.device())
        pools = [("main", config.eval.samples, config.eval.temperature)]
        if config.eval.filter_samples > 0 and {"filtered", "oracle"} & set(protocols):
            pools.append(("filter", config.eval.filter_samples, config.eval.filter_temperature))
            settings["filter"] = {"n": config.eval.filter_samples, "m": config.eval.filter_samples,
                                  "temperature": config.eval.filter_temperature}
        for index, policy in enumerate(policies):
            policy_model = models[policy].policy_model("ckpt" if policy == "ckpt" else "theta")
            greedy[policy], capped[policy] = [], [0, 0]     # programs that stopped at max_new_tokens, of all
            # Chunks of EVAL_CHUNK problems, each with its own seed: the same programs however many
            # processes share them (rank r takes chunks r, r + N, ...; bcoder.distributed).
            for start in tqdm(dist.shard(range(0, len(problems), EVAL_CHUNK)), desc=f"eval {policy}", unit="chunk",
                              file=sys.stderr, disable=not dist.is_main()):
                torch.manual_seed(hash((config.train.seed, start)) % 2**31)
                chunk = problems[start:start + EVAL_CHUNK]
                programs, stopped = generate(policy_model, scorer.tokenizer, prompts[start:start + EVAL_CHUNK],
                                             samples=1, temperature=0, **decoding(config))
                greedy[policy] += zip(range(start, start + len(chunk)), programs)
                capped[policy] = [capped[policy][0] + sum(stopped), capped[policy][1] + len(stopped)]
                for pool, size, temperature in pools:
                    programs, stopped = sample_pool(policy_model, scorer.tokenizer, prompts[start:start + EVAL_CHUNK],
                                                    size=size, temperature=temperature, **decoding(config))
                    capped[policy] = [capped[policy][0] + sum(stopped), capped[policy][1] + len(stopped)]
                    owners = [p for p in chunk for _ in range(size)]
                    records += [{"policy": policy, "pool": pool, "task_id": p.task_id, "program": program}
                                for p, program in zip(owners, programs)]
                for i, r in enumerate(records[len(records) - len(chunk) * sum(size for _, size, _ in pools):]):
                    r["_order"] = (index, start, i)
    else:
        records = [{"policy": str(s.get("policy", "samples")), "pool": "main", "task_id": str(s["task_id"]),
                    "program": s["program"]} for s in samples]
        unknown = {r["task_id"] for r in records} - set(by_id)
        if unknown:
            raise DataError(f"samples for task ids that are not among the problems: {sorted(unknown)[:5]}")
        policies = list(dict.fromkeys(r["policy"] for r in records))
        per_task = {}
        for r in records:
            per_task[(r["policy"], r["task_id"])] = per_task.get((r["policy"], r["task_id"]), 0) + 1
        n = max(per_task.values(), default=0)
        settings.update(n=n, n_min=min(per_task.values(), default=0), m=min(m or n, n), temperature=None,
                        top_p=None, samples="given")
        wanted = {r["task_id"] for r in records}
        problems = [p for p in problems if p.task_id in wanted]
        for i, r in enumerate(records):
            r["_order"] = (i,)
        records = dist.shard(records)  # judged and scored by rank r: every N-th from r on
    with dist.sandbox(config.sandbox.timeout, config.sandbox.workers, answers) as sandbox:
        _record_outcomes(sandbox, records, by_id, "outcome", lambda p: p.tests)
        if "filtered" in protocols:
            filter_pool = "filter" if "filter" in settings else "main"
            _record_outcomes(sandbox, [r for r in records if r["pool"] == filter_pool], by_id, "example_outcome",
                             lambda p: p.example_tests)
        greedy_outcomes = {policy: list(zip([i for i, _ in pairs], sandbox.run(
            [program for _, program in pairs], [problems[i].tests for i, _ in pairs])))
                           for policy, pairs in greedy.items()}
    keys = list(dict.fromkeys((r["task_id"], r["program"]) for r in records))
    prompt_of = dict(zip(by_id, prompts))
    scores = dict(zip(keys, scorer.score([prompt_of[t] for t, _ in keys], [p for _, p in keys])))
    for r in records:
        score = scores[(r["task_id"], r["program"])]
        r["return"], r["return_phi"], r["logprob"] = score.ret, score.ret_phi, score.logprob
        r["passed"] = r["outcome"] == "passed"
        if "example_outcome" in r:        # a problem without example tests filters nothing out
            r["example_passed"] = r["example_outcome"] in ("passed", "no_tests")
        r["difficulty"] = getattr(by_id[r["task_id"]], "difficulty", "")
    # Rank 0 gathers every rank's records (in one process's order) and alone writes the report.
    gathered = dist.gather((records, greedy_outcomes, capped))
    if not dist.is_main():
        return dist.broadcast(None)
    records = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r.pop("_order"))
    greedy_outcomes = {policy: [r.outcome for _, r in sorted((pair for _, outcomes, _ in gathered
                                                              for pair in outcomes.get(policy, ())),
                                                             key=lambda pair: pair[0])]
                       for policy in greedy_outcomes}
    if capped:
        settings["programs_capped"] = {policy: {"capped": sum(part[policy][0] for _, _, part in gathered),
                                                "programs": sum(part[policy][1] for _, _, part in gathered)}
                                       for policy in capped}

    report = {"policies": list(policies), "settings": settings}
    for policy in policies:
        mine = [r for r in records if r["policy"] == policy]
        report[policy] = protocol_report(mine, problems, protocols, config.eval.ks, m)
        ranked = [p for p in protocols if p in ("ranked", "filtered")]
        report[policy]["ranked_by"] = {
            name: protocol_report([{**r, "return": r[field]} for r in mine], problems, ranked, config.eval.ks, m)
            for name, field in RANKERS.items() if ranked and all(r[field] is not None for r in mine)}
        if policy in greedy_outcomes:
            outcomes = greedy_outcomes[policy]
            report[policy]["greedy"] = {"pass@1": sum(o == "passed" for o in outcomes) / len(outcomes)}
    returns = {"all": outcome_returns(records), **{p: outcome_returns([r for r in records if r["policy"] == p])
                                                   for p in policies}}
    report["mean_return_by_outcome"] = {o: returns["all"][o]["mean"] for o in OUTCOMES}
    report["return_by_outcome"] = returns

    eval_path = Path(out) if out else run_dir / EVAL_FILE
    samples_path = eval_path.with_name(eval_path.stem + "_samples.jsonl")
    write_atomic(samples_path, "".join(
        json.dumps({k: r[k] for k in ("policy", "pool", "task_id", "difficulty", "program", "return", "return_phi",
                                      "logprob", "outcome", "example_outcome") if k in r}) + "\n" for r in records))
    write_atomic(eval_path, json.dumps(report, indent=2) + "\n")
    return dist.broadcast(report)


def stage_eval(run):
    """theta_ckpt and theta on the held-out problems: greedy pass@1 and the protocols (unranked, ranked,
    filtered, oracle; evaluate_run), R~ per outcome; eval.json."""
    report = evaluate_run(run.dir, run.config)
    print(json.dumps({key: report[key] for key in ("ckpt", "theta", "mean_return_by_outcome")}, indent=2))


# ----- running the stages in order -----

STAGE_FUNCTIONS = {"sft": stage_sft, "sample": stage_sample, "phi": lambda run: stage_value(run, "phi"),
                   "theta": lambda run: stage_value(run, "theta"), "control": lambda run: stage_value(run, "control"),
                   "eval": stage_eval}


def stages_to_run(config, only):
    if only:
        return [only]
    skipped = {"sft"} if config.model.checkpoint else set()
    if config.sample.replay:
        skipped.add("sample")
    if not config.model.init_value_from_phi:
        skipped.add("phi")
    if not config.theta.controls:
        skipped.add("control")
    return [s for s in STAGES if s not in skipped]


def validate(config):
    """TrainingError (or DataError, ReplayError), one line naming the flag, for a config that cannot
    run: before a run directory exists. bcoder.config.check_config's checks of the values (again: a run
    may start here, not from the command line), then what the run will read: the data files, the
    checkpoint's config and tokenizer (not its weights) and the replay database."""
    check_config(config)
    load_split(config.data)
    model = config.model
    causal = check_checkpoint(Path(model.checkpoint)) if model.checkpoint else model.architecture != "t5"
    if not causal and model.adapter == "lora":
        raise TrainingError("--adapter lora is for decoder-only models; a T5 theta_ckpt's phi and theta are copies "
                            "(--adapter auto or none)")
    if config.sample.replay:
        with ReplayStore(config.sample.replay, read_only=True):
            pass


def check_stage_inputs(config, out, stages, overwrite):
    """TrainingError, before a run directory is touched, when a stage in `stages` would read a model or
    the replay database that neither --model/--replay, nor the run directory `out` (unless --overwrite
    empties it), nor an earlier stage of `stages` provides."""
    out = Path(out)
    kept = (lambda name: False) if overwrite else (lambda name: (out / name).exists())
    provided = {"ckpt": bool(config.model.checkpoint) or kept(CKPT_DIR),
                "replay": bool(config.sample.replay) or kept(REPLAY_FILE), "phi": kept("phi"), "theta": kept("theta"),
                "control": kept("control")}
    makers = {"ckpt": "sft", "replay": "sample", "phi": "phi", "theta": "theta", "control": "control"}
    from_phi = ["phi"] if config.model.init_value_from_phi else []
    for stage in stages:
        needs = {"sample": ["ckpt"], "phi": ["ckpt", "replay"], "theta": ["ckpt", "replay"] + from_phi,
                 "control": ["ckpt", "replay"] + from_phi, "eval": ["ckpt", "theta"]}.get(stage, [])
        for name in needs:
            if not provided[name]:
                where = {"ckpt": f"{out / CKPT_DIR} or --model", "replay": f"{out / REPLAY_FILE} or --replay"}
                raise TrainingError(f"the {stage} stage reads {where.get(name, out / name)}, which is not there: "
                                    f"run the {makers[name]} stage first")
        provided.update({name: True for name, maker in makers.items() if maker == stage})


def run_stages(config, out, only=None, resume=False, overwrite=False, fsdp=False):
    """`python -m bcoder.train`'s run once its flags are good: every check of the config and of the files
    it reads, then into the run directory `out` the stages not yet done there (or `only` that one).
    `resume`, `overwrite`: bcoder.run.open_run's; `fsdp`: train with FSDP2 instead of DDP."""
    dist.init()  # joins the process group under torchrun (WORLD_SIZE > 1); nothing in one process
    try:
        validate(config)  # every flag and every file the run reads, before anything is written
        for name, size in (("--sft-batch", config.sft.batch), ("--phi-batch", config.phi.batch),
                           ("--theta-batch", config.theta.batch)):
            if size % dist.world_size():
                raise TrainingError(f"{name} {size} is the global batch: it must split evenly over the "
                                    f"{dist.world_size()} processes")

        stages = [stage for stage in stages_to_run(config, only) if only or overwrite or not stage_done(out, stage)]
        check_stage_inputs(config, out, stages, overwrite)

        def open_and_copy():
            run = open_run(out, config, resume, overwrite)
            if config.sample.replay and not run.path(REPLAY_FILE).exists():
                copy_replay(config.sample.replay, run.path(REPLAY_FILE))
            return run

        run = dist.on_main(open_and_copy)  # rank 0 writes (and locks) the run directory; the others wait
        run.writes, run.fsdp = dist.is_main(), fsdp
        for stage in stages:
            started = time.perf_counter()
            STAGE_FUNCTIONS[stage](run)
            dist.barrier()  # every rank's part is done (and rank 0 has written it) before the next stage
            run.mark_done(stage)
            run.log({"stage": stage, "wall_seconds": time.perf_counter() - started})
            if dist.is_main():
                after_stage(run.dir, stage)  # curves.png after sft/phi/theta; report.md after eval
    finally:
        dist.shutdown()
