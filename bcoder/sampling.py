"""Sampling programs from a policy: prompts fitted and encoded as the models see them, and generation.

A problem's prompt (bcoder.data.prompt) is fitted to max_prompt_tokens by cutting its question,
never the tail that asks for the answer; programs are cut at max_program_tokens, as in training.
Both cuts are counted (Encoded.cut, fit_prompts' count), as are generated programs that stopped
at max_new_tokens without ending (generate's `capped`): the run logs them per stage.
"""
from typing import NamedTuple

import torch

from bcoder.data.prompt import MBPP_INSTRUCTION, prompt_parts


class Encoded(NamedTuple):
    ids: torch.Tensor     # [B, L] right-padded token ids
    mask: torch.Tensor    # [B, L] bool
    cut: int              # sequences longer than the cap, cut to it


def encode(tokenizer, texts, max_tokens, program=False, causal=False):
    """Encoded (ids, mask, cut) of right-padded token sequences, each cut at max_tokens (EOS kept last).

    Programs for a causal model (program and causal True) are the text's tokens and EOS, without the
    tokenizer's own special tokens (a BOS, say): they continue the prompt in one sequence, and EOS ends
    the episode whatever the tokenizer adds. Everything else is encoded as the tokenizer does it."""
    rows, cut = [], 0
    for text in texts:
        if program and causal:
            ids = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        else:
            ids = tokenizer(text).input_ids
        if len(ids) > max_tokens:
            ids, cut = ids[:max_tokens - 1] + [tokenizer.eos_token_id], cut + 1
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    mask = torch.arange(width) < torch.tensor([len(r) for r in rows]).unsqueeze(1)
    return Encoded(ids, mask, cut)


def fit_prompt(tokenizer, problem, max_tokens, mbpp_instruction=MBPP_INSTRUCTION):
    """(prompt text, whether its question was cut): the problem's prompt in at most max_tokens tokens
    (EOS included), its question cut at a token boundary when the whole does not fit."""
    head, question, tail = prompt_parts(problem, mbpp_instruction)
    text = head + question + tail
    if len(tokenizer(text).input_ids) <= max_tokens:
        return text, False
    words = tokenizer(question, add_special_tokens=False).input_ids
    keep = max(0, max_tokens - len(tokenizer(head + tail).input_ids))
    while True:   # tokens merge across the cut: shorten until the re-tokenized whole fits
        text = head + tokenizer.decode(words[:keep], skip_special_tokens=True) + tail
        over = len(tokenizer(text).input_ids) - max_tokens
        if over <= 0 or keep == 0:
            return text, True
        keep = max(0, keep - over)


def fit_prompts(tokenizer, problems, max_tokens, mbpp_instruction=MBPP_INSTRUCTION):
    """([prompt text per problem], how many were cut)."""
    fitted = [fit_prompt(tokenizer, problem, max_tokens, mbpp_instruction) for problem in problems]
    return [text for text, _ in fitted], sum(cut for _, cut in fitted)


def generate(policy_model, tokenizer, prompts, samples, temperature, top_p, max_prompt_tokens, max_new_tokens):
    """(programs, capped): `samples` programs per prompt (adjacent), decoded, and for each whether it
    stopped at max_new_tokens without its end token; temperature 0 means one greedy program, else nucleus
    sampling with top_p. Prompts are cut to max_prompt_tokens.

    policy_model is a T5ForConditionalGeneration or a causal LM (`policy_model` of a Q-model): sampling
    from softmax(logits) samples the B-Coder policy (docs/method.md#the-q-function), so Hugging Face
    `generate` serves as it is. A causal LM continues its left-padded prompts."""
    prompt_ids, prompt_mask, _ = encode(tokenizer, prompts, max_prompt_tokens)
    causal = not policy_model.config.is_encoder_decoder
    if causal:
        prompt_ids, prompt_mask = left_pad(prompt_ids, prompt_mask, tokenizer.pad_token_id)
    device = next(policy_model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    if temperature == 0:
        sampling = {"do_sample": False}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p,
                    "num_return_sequences": samples}
    policy_model.eval()
    with torch.no_grad():
        if causal:  # the tokenizer's: a downloaded causal LM's generation config may name other ids
            sampling.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        sequences = policy_model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                          max_new_tokens=max_new_tokens, **sampling)
    tokens = sequences[:, prompt_ids.shape[1] if causal else 1:]  # without the prompt (causal) or start token
    capped = (~(tokens == tokenizer.eos_token_id).any(dim=1) & (tokens.shape[1] >= max_new_tokens)).tolist()
    return tokenizer.batch_decode(tokens, skip_special_tokens=True), capped


def left_pad(ids, mask, pad_token_id):
    """Right-padded rows moved to end at the last column (padding on the left), as a causal LM continues them."""
    mask = mask.bool()
    pads = (~mask).sum(dim=1, keepdim=True)
    columns = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    source = (columns - pads) % ids.shape[1]
    left_mask = columns >= pads
    return ids.gather(1, source).masked_fill(~left_mask, pad_token_id), left_mask


def sample_pool(policy_model, tokenizer, prompts, size, temperature, cap=256, **decoding):
    """(programs, capped): `size` programs per prompt (adjacent), generated at most `cap` sequences at a time;
    decoding: generate's top_p, max_prompt_tokens and max_new_tokens."""
    programs, capped = [], []
    per_call = max(1, cap // size)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        for done in range(0, size, cap):
            more, more_capped = generate(policy_model, tokenizer, chunk, samples=min(cap, size - done),
                                         temperature=temperature, **decoding)
            programs += more
            capped += more_capped
    return programs, capped
