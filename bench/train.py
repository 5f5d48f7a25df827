"""Training throughput of the theta-stage with the fused loss vs the reference loss, same run.

    python bench/train.py

One theta-stage step = Q-model forward (shared encoder, theta_ckpt, phi and theta decoders),
bellman_loss, backward, AdamW step, on a fixed batch of the tiny preset's shapes (64 programs of
about 45 tokens). Measured at the tiny preset's vocabulary and at CodeT5's (32128), where the
vocabulary-sized work weighs more. Prints tokens per second (valid program tokens) per backend.
The programs, their mask, rewards and ground-truth flags come from bench/common.py's builder
(lengths uniform in [15, 45], half of the programs ground truth).
"""
import statistics
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration

import bcoder
from bcoder.model import QModel, QModelConfig
from bcoder.run import PRESETS

from common import make_labels  # bench/common.py

STEPS = 45  # program tokens


def theta_step_seconds(model, optimizer, batch, backend, repeats):
    prompt_ids, prompt_mask, programs, mask, rewards, is_gt = batch
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = model(prompt_ids, prompt_mask, programs)
        loss = bcoder.bellman_loss(out.logits, out.ckpt_logits, out.values, programs, mask, rewards, is_gt,
                                   backend=backend).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    config = PRESETS["tiny"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| vocabulary | programs x tokens | backend | step ms | tokens/s | fused speed-up |")
    print("|---|---|---|---|---|---|")
    for vocab, programs_per_batch in ((240, config.theta_batch), (32128, 16)):
        torch.manual_seed(0)
        ckpt = T5ForConditionalGeneration(T5Config(
            vocab_size=vocab, d_model=config.d_model, d_ff=config.d_ff, d_kv=config.d_model // config.heads,
            num_layers=config.layers, num_heads=config.heads, dropout_rate=0.0, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1, feed_forward_proj="relu"))
        model = QModel.from_checkpoint(ckpt, QModelConfig(stage="theta"))
        model.train()
        optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
        prompt_ids = torch.randint(3, vocab, (programs_per_batch, STEPS))
        labels = make_labels(programs_per_batch, STEPS, vocab, min_length=15, requires_grad=False)
        mask = labels.mask
        batch = (prompt_ids, torch.ones_like(prompt_ids, dtype=torch.bool), labels.actions, mask, labels.rewards,
                 labels.is_ground_truth)
        seconds = {backend: theta_step_seconds(model, optimizer, batch, backend, 5) for backend in ("cpp", "reference")}
        for backend, step in seconds.items():
            print(f"| {vocab} | {programs_per_batch} x {STEPS} | {backend} | {step * 1e3:.0f} | {int(mask.sum()) / step:.0f} "
                  f"| {seconds['reference'] / seconds['cpp']:.2f}x |")


if __name__ == "__main__":
    main()
