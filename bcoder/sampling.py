"""Sampling programs from a policy: prompts encoded as the models see them, and generation.

The prompt of a problem is bcoder.data.prompt.apps_prompt's (question, starter code, format line,
"ANSWER:"), cut at max_prompt_tokens; programs are cut at max_program_tokens, as in training.
"""
import torch

from bcoder.data.prompt import apps_prompt


def encode(tokenizer, texts, max_tokens):
    """(ids, mask) of right-padded token sequences, each cut at max_tokens (EOS kept last)."""
    rows = []
    for text in texts:
        ids = tokenizer(text).input_ids
        if len(ids) > max_tokens:
            ids = ids[:max_tokens - 1] + [tokenizer.eos_token_id]
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    mask = torch.arange(width) < torch.tensor([len(r) for r in rows]).unsqueeze(1)
    return ids, mask


def prompts_of(problems):
    return [apps_prompt(p) for p in problems]


def generate(policy_model, tokenizer, problems, samples, temperature, config):
    """`samples` programs per problem (adjacent), decoded; temperature 0 means one greedy program.

    policy_model is a T5ForConditionalGeneration: sampling from softmax(logits) samples the
    B-Coder policy (docs/method.md#the-q-function), so Hugging Face `generate` serves as it is."""
    prompt_ids, prompt_mask = encode(tokenizer, prompts_of(problems), config.max_prompt_tokens)
    device = next(policy_model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    if temperature == 0:
        sampling = {"do_sample": False}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": config.top_p,
                    "num_return_sequences": samples}
    policy_model.eval()
    with torch.no_grad():
        sequences = policy_model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                          max_new_tokens=config.max_new_tokens, **sampling)
    return tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)  # drop the start token


def sample_pool(policy_model, tokenizer, problems, size, temperature, config, cap=256):
    """`size` programs per problem (adjacent), generated at most `cap` sequences at a time."""
    programs = []
    per_call = max(1, cap // size)
    for start in range(0, len(problems), per_call):
        chunk = problems[start:start + per_call]
        for done in range(0, size, cap):
            programs += generate(policy_model, tokenizer, chunk, samples=min(cap, size - done), temperature=temperature,
                                 config=config)
    return programs
