"""A word-level tokenizer trained locally (no download), for models trained from scratch on
the tiny data set; a `transformers` fast tokenizer, so it saves and loads with
`save_pretrained` / `from_pretrained` (bcoder.models.checkpoint.tokenizer_in loads it as itself beside any model;
AutoTokenizer would take the class of the model type in config.json, a Qwen2Tokenizer beside a qwen2 model).

    tokenizer = train_tokenizer(texts)                  # or tiny_tokenizer(problems)
    ids = tokenizer(program).input_ids                   # ends with </s>
    tokenizer.decode(ids, skip_special_tokens=True) == program

Source code must come back exactly after decoding, whitespace included, for programs to
run: the text is cut into pieces that cover every character (a word or a symbol with at
most one leading space, a newline with the indentation after it, other whitespace) and
decoding concatenates them. Attaching the space to the next piece keeps sequences short
("x * x" is three tokens). Special tokens follow T5: <pad> 0 (also the decoder start),
</s> 1, <unk> 2; a piece never seen in training becomes <unk>, which decoding with
skip_special_tokens drops.
"""
import itertools

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from bcoder.data.prompt import prompt_text

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
OPERATORS = r"==|!=|<=|>=|\*\*|//|\+=|-=|\*="
PIECES = rf"\n *| (?= )| ?(?:{OPERATORS})| ?\w+| ?[^\s\w]|\s"
# Always in the vocabulary, so that any layout of known words survives: runs of spaces are
# single-space pieces, and indentation up to 8 levels deep is one piece with its newline.
WHITESPACE = [" ", "\t", "\n", "\r"] + ["\n" + "    " * depth for depth in range(1, 9)]


def train_tokenizer(texts, min_frequency=1):
    """A PreTrainedTokenizerFast whose vocabulary is every piece of `texts` seen at least
    `min_frequency` times, after the special tokens."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    texts = itertools.chain(texts, WHITESPACE * min_frequency)
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK],
                                                                   min_frequency=min_frequency))
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                             special_tokens=[(EOS, tokenizer.token_to_id(EOS))])
    # No clean-up: it would delete the spaces before punctuation that code needs.
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)


def problem_texts(problems):
    """The texts a model reads and writes for `problems`: APPS prompts and reference solutions."""
    for problem in problems:
        yield prompt_text(problem)
        yield from problem.solutions


def tiny_tokenizer(problems, min_frequency=1):
    """The tokenizer of a model trained on `problems` (train them all; the tiny test split
    uses no word that training lacks, but a model should not depend on that)."""
    return train_tokenizer(problem_texts(problems), min_frequency)
