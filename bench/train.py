"""Theta-stage training step of the Q-model on the CPU: the loss backends' throughput, and the fused
LM-head path's memory and time against the logits path.

    python bench/train.py                  # throughput table: bellman_loss backends cpp vs reference
    python bench/train.py --memory --json  # CodeT5-small shape: loss_path "fused" vs "logits", one JSON object

One theta-stage step = bcoder.models.q_loss (shared encoder, theta_ckpt, phi and theta decoders and
the loss), backward, AdamW step, as bcoder.stages' training loop runs it (zero_grad after the
forward; no gradient clipping here). Random weights, fixed batches; the programs, their mask,
rewards and ground-truth flags come from bench/common.py's builder (half of the programs ground
truth, the even ones).

Default mode: the tiny preset's model (d_model 128, 2 layers) on 64 programs of about 45 tokens
(lengths uniform in [15, 45]) at the tiny preset's vocabulary and at CodeT5's (32128), where the
vocabulary-sized work weighs more; loss_path "logits" with the two backends of bcoder.bellman_loss
("cpp", the fused op, and "reference"). Prints tokens per second (valid program tokens) per backend.

--memory: CodeT5-small's shape (d_model 512, 6 + 6 layers, d_ff 2048, 8 heads of 64, vocabulary
32100, tied LM head; dropout 0 as in bcoder's presets), 8 programs of 512 positions (lengths
uniform in [256, 512], padded with 0) behind prompts of 512 tokens; q_loss with loss_path "fused"
(the loss from the decoders' hidden states: no [B, T, V] logits) and "logits" (logits of theta
and theta_ckpt, then bellman_loss), backend "cpp", same weights (seed 0) and batch.
  peak_mib_*   each path in its own fresh process (--memory-child PATH): the rise of the peak
               resident set (VmHWM, reset through /proc/self/clear_refs) over one steady-state
               step (the second: the optimizer state exists, the previous step's gradients are
               live until zero_grad, as in training) above the resident set at its start. Large
               blocks are mmap'd (MALLOC_MMAP_THRESHOLD_=64 KiB), so the resident set follows what
               is live. Per-phase peaks (forward, backward, optimizer), what the forward leaves
               held for the backward, the first step's rise and the absolute peak come along.
  step_ms_*    one more process (--timing-child) with the default allocator running the two
               paths in turn, round by round (a changing load on the machine hits both alike),
               median of --repeats rounds after --warmup ones.
The JSON also carries the shape, the machine (torch, threads, cores, load average before and
after) and the first step's loss of each path (same weights, same batch: they agree).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import transformers
from common import generator, make_labels, reset_peak_rss, resident_bytes  # bench/common.py
from transformers import T5Config, T5ForConditionalGeneration

from bcoder.config import PRESETS
from bcoder.models import QModel, QModelConfig, q_loss

STEPS = 45  # program tokens (default mode)
LOSS_PATHS = ("fused", "logits")
MIB = 2**20


# ----- shared -----

def t5_checkpoint(vocab, d_model, d_ff, layers, heads, d_kv):
    """A random T5ForConditionalGeneration (seed 0): relu feed-forward, tied LM head, no dropout."""
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=vocab, d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_layers=layers, num_decoder_layers=layers,
        num_heads=heads, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        feed_forward_proj="relu"))


def theta_model(ckpt):
    model = QModel.from_checkpoint(ckpt, QModelConfig(stage="theta"))
    model.train()
    return model, torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)


def theta_step(model, optimizer, batch, loss_path, backend, probe=lambda phase: None):
    """One theta-stage step as bcoder.train runs it: q_loss, zero_grad, backward, AdamW. The loss.
    probe(phase) is called after "forward", "backward" and "optimizer"."""
    prompt_ids, prompt_mask, labels = batch
    _, out = q_loss(model, "theta", prompt_ids, prompt_mask, labels.actions, loss_path=loss_path,
                    actions=labels.actions, mask=labels.mask, rewards=labels.rewards,
                    is_ground_truth=labels.is_ground_truth, backend=backend)
    probe("forward")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    probe("backward")
    optimizer.step()
    probe("optimizer")
    return out.loss.item()


# ----- default mode: the throughput table -----

def theta_step_seconds(model, optimizer, batch, backend, repeats):
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        theta_step(model, optimizer, batch, "logits", backend)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def throughput_table():
    config = PRESETS["tiny"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| vocabulary | programs x tokens | backend | step ms | tokens/s | fused speed-up |")
    print("|---|---|---|---|---|---|")
    for vocab, programs_per_batch in ((240, config.theta.batch), (32128, 16)):
        shape = config.model
        model, optimizer = theta_model(t5_checkpoint(vocab, shape.d_model, shape.d_ff, shape.layers, shape.heads,
                                                     shape.d_model // shape.heads))
        prompt_ids = torch.randint(3, vocab, (programs_per_batch, STEPS))
        labels = make_labels(programs_per_batch, STEPS, vocab, min_length=15, requires_grad=False)
        batch = (prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool), labels)
        seconds = {backend: theta_step_seconds(model, optimizer, batch, backend, 5) for backend in ("cpp", "reference")}
        for backend, step in seconds.items():
            print(f"| {vocab} | {programs_per_batch} x {STEPS} | {backend} | {step * 1e3:.0f} "
                  f"| {int(labels.mask.sum()) / step:.0f} | {seconds['reference'] / seconds['cpp']:.2f}x |")


# ----- --memory: fused vs logits path at CodeT5-small's shape -----

def shape_of(args):
    return {"model": "CodeT5-small shape (T5ForConditionalGeneration, random weights)", "d_model": args.d_model,
            "encoder_layers": args.layers, "decoder_layers": args.layers, "d_ff": args.d_ff, "heads": args.heads,
            "d_kv": args.d_kv, "vocab": args.vocab, "tied_lm_head": True, "dropout_rate": 0.0,
            "programs": args.programs, "program_tokens": args.program_tokens,
            "program_lengths": [args.program_tokens // 2, args.program_tokens], "prompt_tokens": args.prompt_tokens,
            "ground_truth_fraction": 0.5, "dtype": "float32", "stage": "theta", "backend": args.backend,
            "optimizer": "AdamW (all of theta's trainable parameters)",
            "gradient_checkpointing": args.gradient_checkpointing}


def codet5_setup(args):
    """(model, optimizer, batch) of --memory: the same weights and batch in every process."""
    model, optimizer = theta_model(t5_checkpoint(args.vocab, args.d_model, args.d_ff, args.layers, args.heads,
                                                 args.d_kv))
    model.checkpoint_activations(args.gradient_checkpointing)
    gen = generator(seed=1)
    labels = make_labels(args.programs, args.program_tokens, args.vocab, min_length=args.program_tokens // 2,
                         requires_grad=False, gen=gen)
    labels = labels._replace(actions=labels.actions.masked_fill(~labels.mask, 0))  # right-padded with pad id 0
    prompt_ids = torch.randint(3, args.vocab, (args.programs, args.prompt_tokens), generator=gen)
    return model, optimizer, (prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool), labels)


def tensor_mib(tensors):
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def measured_step(model, optimizer, batch, loss_path, backend):
    """One step's loss, seconds and memory (MiB): the rise of the peak resident set over the step above
    the resident set at its start, per phase (each phase's peak, above the step's start) and in all;
    what the forward leaves held (the autograd graph's saved tensors); the absolute peak."""
    reset_peak_rss()
    before = resident_bytes("VmRSS")
    phases, held = {}, {}

    def probe(phase):
        phases[phase] = (resident_bytes("VmHWM") - before) / MIB
        held[phase] = (resident_bytes("VmRSS") - before) / MIB
        reset_peak_rss()

    start = time.perf_counter()
    loss = theta_step(model, optimizer, batch, loss_path, backend, probe)
    seconds = time.perf_counter() - start
    peak = max(phases.values())
    return {"loss": loss, "seconds": seconds, "rss_at_start_mib": before / MIB, "peak_rise_mib": peak,
            "peak_total_mib": before / MIB + peak, "peak_rise_by_phase_mib": phases,
            "held_after_phase_mib": held}


def memory_child(args):
    """Prints one JSON line: the first and a steady-state step of one loss path, in this fresh process."""
    path = args.memory_child
    model, optimizer, batch = codet5_setup(args)
    unique = {id(p): p for p in model.parameters()}.values()
    trainable = model.trainable_parameters()
    after_build = resident_bytes("VmRSS") / MIB
    first = measured_step(model, optimizer, batch, path, args.backend)
    steady = measured_step(model, optimizer, batch, path, args.backend)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    print(json.dumps({"path": path, "first_step": first, "steady_step": steady, "rss_after_build_mib": after_build,
                      "weights_mib": tensor_mib(unique), "trainable_mib": tensor_mib(trainable),
                      "optimizer_state_mib": tensor_mib(state), "threads": torch.get_num_threads()}))


def timing_child(args):
    """Prints one JSON line: each path's step milliseconds, the paths in turn round by round (the
    order alternating), --warmup rounds then --repeats; and each step's CPU seconds per wall second
    (near the thread count alone on the machine, lower when other processes take the cores)."""
    model, optimizer, batch = codet5_setup(args)
    times, cpu = ({path: [] for path in LOSS_PATHS} for _ in range(2))
    for round_ in range(args.warmup + args.repeats):
        for path in LOSS_PATHS[::-1] if round_ % 2 else LOSS_PATHS:
            start, start_cpu = time.perf_counter(), time.process_time()
            theta_step(model, optimizer, batch, path, args.backend)
            wall = time.perf_counter() - start
            times[path].append(wall * 1e3)
            cpu[path].append(round((time.process_time() - start_cpu) / wall, 2))
    print(json.dumps({"step_ms": times, "cpu_per_wall": cpu}))


def machine_facts():
    def first_line(path, prefix):
        try:
            with open(path) as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
        except OSError:
            return None

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "cpu_model": first_line("/proc/cpuinfo", "model name"),
            "mem_total": first_line("/proc/meminfo", "MemTotal"),
            "platform": platform.platform(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def memory_report(args):
    started, load_before = time.perf_counter(), os.getloadavg()
    shape_args = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in CHILD_ARGS]
    shape_args += ["--gradient-checkpointing"] if args.gradient_checkpointing else []

    def run_child(*child_args, env=None):
        print(f"bench/train.py: {' '.join(child_args)} ...", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, os.path.abspath(__file__), *shape_args, *child_args],
                                stdout=subprocess.PIPE, text=True, check=True, env=env)
        return json.loads(result.stdout.strip().splitlines()[-1])

    # Large blocks straight from mmap and back to the kernel on free: the resident set follows what is live.
    mmap_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**16)}
    memory = {path: run_child("--memory-child", path, env=mmap_env) for path in LOSS_PATHS}
    timing = run_child("--timing-child")
    times = timing["step_ms"]
    step_ms = {path: statistics.median(t[args.warmup:]) for path, t in times.items()}
    peak = {path: memory[path]["steady_step"]["peak_rise_mib"] for path in LOSS_PATHS}
    logits_mib = args.programs * args.program_tokens * args.vocab * 4 / MIB
    report = {
        "peak_mib_fused": round(peak["fused"], 1), "peak_mib_logits": round(peak["logits"], 1),
        "step_ms_fused": round(step_ms["fused"], 1), "step_ms_logits": round(step_ms["logits"], 1),
        "peak_ratio_fused_over_logits": round(peak["fused"] / peak["logits"], 3),
        "step_ratio_fused_over_logits": round(step_ms["fused"] / step_ms["logits"], 3),
        "prompt_tokens": args.prompt_tokens,
        "peak_total_mib_fused": round(memory["fused"]["steady_step"]["peak_total_mib"], 1),
        "peak_total_mib_logits": round(memory["logits"]["steady_step"]["peak_total_mib"], 1),
        "first_step_loss": {path: memory[path]["first_step"]["loss"] for path in LOSS_PATHS},
        "one_logits_tensor_mib": round(logits_mib, 1),
        "shape": shape_of(args),
        "machine": {**machine_facts(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "method": {"peak": "rise of VmHWM over the second (steady-state) step above VmRSS at its start, one fresh "
                           "process per path, MALLOC_MMAP_THRESHOLD_=65536",
                   "time": f"median of {args.repeats} steps after {args.warmup} warm-up, paths interleaved in one "
                           "process, default allocator; step_cpu_per_wall_all: process CPU seconds per wall "
                           f"second of each step (about {torch.get_num_threads()} when alone on the machine)"},
        "memory": memory, "step_ms_all": times, "step_cpu_per_wall_all": timing["cpu_per_wall"],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.programs} x {args.program_tokens} "
          f"programs, {args.prompt_tokens}-token prompts, V = {args.vocab}\n")
    print("| loss path | peak MiB (step rise) | peak MiB (total) | step ms |\n|---|---|---|---|")
    for path in LOSS_PATHS:
        steady = memory[path]['steady_step']['peak_total_mib']
        print(f"| {path} | {peak[path]:.0f} | {steady:.0f} | {step_ms[path]:.0f} |")


CHILD_ARGS = ("vocab", "d_model", "d_ff", "layers", "heads", "d_kv", "programs", "program_tokens", "prompt_tokens",
              "backend", "warmup", "repeats")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", action="store_true", help="fused vs logits loss path at CodeT5-small's shape")
    parser.add_argument("--json", action="store_true", help="with --memory: print one JSON object")
    parser.add_argument("--vocab", type=int, default=32100)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=6, help="encoder layers, and as many decoder layers")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d-kv", type=int, default=64)
    parser.add_argument("--programs", type=int, default=8)
    parser.add_argument("--program-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--backend", default="cpp", help="bellman_loss backend of both paths")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute the theta decoder's activations in the backward (both paths)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (--memory)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (--memory)")
    parser.add_argument("--memory-child", choices=LOSS_PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    if args.memory_child:
        return memory_child(args)
    if args.timing_child:
        return timing_child(args)
    if args.memory:
        return memory_report(args)
    throughput_table()


if __name__ == "__main__":
    main()
