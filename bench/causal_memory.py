"""Memory and time of one theta-stage step of the decoder-only Q-model (bcoder.models.CausalQModel):
LoRA adapters on one frozen base against three full copies.

    python bench/causal_memory.py              # the three rows below: ~4 min alone on 2 cores
    python bench/causal_memory.py --steps 1    # quicker: one timed round after the warm-up

Model: a random Qwen2ForCausalLM (seed 0) of ~110M parameters (hidden 768, 12 layers, 12 heads,
intermediate 2048, vocabulary 32000, tied LM head), fp32. Batch: 2 rows of 512 tokens = 2 x (256
prompt + 256 program), every token real, program 0 ground truth. One step as bcoder.train runs it:
q_loss(loss_path="fused", backend="auto"), zero_grad, backward, AdamW over trainable_parameters().

    lora          phi and theta are LoRA adapters (rank 16, all linear layers of the trunk) on one
                  frozen base; theta_ckpt is the base with the adapters off; share_prompt
    lora, full    the same, share_prompt=False: every policy runs all 511 positions (the adapters
                  act on the prompt too) instead of attending to the base's prompt cache
    none          three full copies: the frozen base, phi's trunk, theta's whole LM; share_prompt

Memory: each row in a fresh process (--memory-child) running two steps, with
MALLOC_MMAP_THRESHOLD_=65536 (large blocks mmap'd and given back on free, so the resident set
follows what is live); from /proc/self/status:
  imports     VmRSS after importing torch, transformers, peft and bcoder (before any model)
  built       VmRSS after building the model and the optimizer, before the first step (AdamW
              allocates its state in the first step)
  rise        how far VmHWM climbs above VmRSS at the step's start (VmHWM reset through
              /proc/self/clear_refs): the first step (gradients and AdamW state allocated) and the
              second (steady state: the previous gradients live until zero_grad)
  peak        the process's peak resident set over the whole run (max of VmHWM)
Time: one more process (--timing-child, default allocator, torch.set_num_threads(2)) builds all
three rows and runs their steps in turn, round by round (order alternating), so that a changing
load on the machine hits all alike; median of --steps rounds after one warm-up round. cpu/wall:
the process's CPU seconds per wall second over a row's timed steps (about 2 alone on this machine,
less when other processes take the cores). The first step's loss is printed: the value heads are
re-drawn from one seed and the adapters start at zero, so all rows agree.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = {"lora": ("lora", True), "lora, full": ("lora", False), "none": ("none", True)}
MIB = 2**20


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--program-tokens", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--memory-child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def build(args, mode):
    """(step, trainable parameter count, base parameter count) of one row; step() runs one theta-stage
    step and returns its loss."""
    import torch
    from common import generator, make_labels  # bench/common.py
    from torch import nn
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from bcoder.models import CausalQModel, CausalQModelConfig, q_loss

    adapter, share_prompt = MODES[mode]
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=2048, tie_word_embeddings=True))
    base_params = sum(p.numel() for p in base.parameters())
    model = CausalQModel(base, CausalQModelConfig(stage="theta", adapter=adapter, lora_rank=args.lora_rank,
                                                  share_prompt=share_prompt))
    torch.manual_seed(1)  # the same value heads in every row (h2 = h1's copy)
    for name in ("phi_value_head", "h1"):
        for layer in getattr(model, name).modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    model.h2.load_state_dict(model.h1.state_dict())
    model.train()
    trainable = model.trainable_parameters()
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    gen = generator(seed=1)
    B, S, T = args.batch, args.prompt_tokens, args.program_tokens
    prompt_ids = torch.randint(3, args.vocab, (B, S), generator=gen)
    prompt_mask = torch.ones(B, S, dtype=torch.bool)
    labels = make_labels(B, T, args.vocab, requires_grad=False, gen=gen)

    def step():
        _, parts = q_loss(model, "theta", prompt_ids, prompt_mask, labels.actions, loss_path="fused",
                          actions=labels.actions, mask=labels.mask, rewards=labels.rewards,
                          is_ground_truth=labels.is_ground_truth, gamma=0.999, alpha=1.0, beta_adv=0.1,
                          beta_ce=0.5, operator="conservative", backend="auto")
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        optimizer.step()
        return parts.loss.item()

    return step, sum(p.numel() for p in trainable), base_params


def memory_child(args):
    """One row's memory over two steps, in this fresh process: prints one JSON line."""
    import peft  # noqa: F401  (all imports done before "imports" is read, in every row)
    import torch
    from common import reset_peak_rss, resident_bytes  # bench/common.py

    import bcoder.models  # noqa: F401

    torch.set_num_threads(2)
    imports = resident_bytes("VmRSS")
    step, trainable, base_params = build(args, args.memory_child)
    built = resident_bytes("VmRSS")
    peak, rises, losses = resident_bytes("VmHWM"), [], []
    for _ in range(2):
        peak = max(peak, resident_bytes("VmHWM"))
        reset_peak_rss()
        before = resident_bytes("VmRSS")
        losses.append(step())
        rises.append(resident_bytes("VmHWM") - before)
    peak = max(peak, resident_bytes("VmHWM"))
    print(json.dumps({"base_params": base_params, "trainable_params": trainable, "imports_mib": imports / MIB,
                      "built_mib": built / MIB, "first_rise_mib": rises[0] / MIB, "steady_rise_mib": rises[1] / MIB,
                      "peak_mib": peak / MIB, "first_loss": losses[0]}))


def timing_child(args):
    """Every row's step time in one process, the rows in turn round by round (order alternating), so
    that a changing load on the machine hits all alike: prints one JSON line."""
    import torch

    torch.set_num_threads(2)
    steps = {mode: build(args, mode)[0] for mode in MODES}
    wall, cpu = ({mode: [] for mode in MODES} for _ in range(2))
    for round_ in range(1 + args.steps):
        for mode in list(MODES)[::-1] if round_ % 2 else MODES:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[mode]()
            wall[mode].append(time.perf_counter() - start)
            cpu[mode].append(time.process_time() - start_cpu)
    print(json.dumps({mode: {"step_ms": statistics.median(wall[mode][1:]) * 1e3,
                             "cpu_per_wall": sum(cpu[mode][1:]) / sum(wall[mode][1:])} for mode in MODES}))


def main():
    args = parse_args()
    if args.memory_child:
        return memory_child(args)
    if args.timing_child:
        return timing_child(args)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("memory_child", "timing_child")]

    def run_child(*child_args, env=None):
        print(f"bench/causal_memory.py: {' '.join(child_args)} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *flags, *child_args],
                             stdout=subprocess.PIPE, text=True, check=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    load_before, started = os.getloadavg(), time.perf_counter()
    mmap_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**16)}
    rows = {mode: run_child("--memory-child", mode, env=mmap_env) for mode in MODES}
    for mode, timing in run_child("--timing-child").items():
        rows[mode].update(timing)
    none = rows["none"]
    print(f"base: {none['base_params'] / 1e6:.1f}M parameters; batch {args.batch} x "
          f"{args.prompt_tokens + args.program_tokens} = {args.batch} x ({args.prompt_tokens} prompt + "
          f"{args.program_tokens} program) tokens; 2 threads; time: median of {args.steps} rounds after 1 warm-up; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print("| adapter | share_prompt | trainable params | imports MiB | built MiB | first-step rise MiB "
          "| steady rise MiB | peak MiB | peak vs none | step ms | time vs none | cpu/wall | loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        adapter, share_prompt = MODES[mode]
        print(f"| {adapter} | {share_prompt} | {r['trainable_params'] / 1e6:.2f}M | {r['imports_mib']:.0f} "
              f"| {r['built_mib']:.0f} | {r['first_rise_mib']:.0f} | {r['steady_rise_mib']:.0f} | {r['peak_mib']:.0f} "
              f"| {r['peak_mib'] / none['peak_mib']:.2f}x | {r['step_ms']:.0f} | {r['step_ms'] / none['step_ms']:.2f}x "
              f"| {r['cpu_per_wall']:.2f} | {r['first_loss']:.4f} |")


if __name__ == "__main__":
    main()
