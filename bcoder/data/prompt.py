"""The prompt a model sees for a problem (docs/method.md#prompt-format).

APPS (and the tiny set, asked in APPS's format): Hendrycks et al.'s prompt, which CodeRL keeps:

    "\nQUESTION:\n" + question [+ "\n" + starter code, when there is one]
        + "\nUse Call-Based format" (a problem with a function name) or "\nUse Standard Input format"
        + "\nANSWER:\n"

MBPP: WizardCoder's zero-shot instruction format (the paper's MBPP protocol), showing the task's
text and its test asserts; the instruction around them is configurable (`MBPP_INSTRUCTION`, with
one "{question}" where the text and the tests go):

    question = "\n" + text + "\nTest examples:" + "".join("\n" + assert_ for assert_ in tests)

A prompt is head + question + tail; when it must be cut to a token budget, the question is cut
(sampling.fit_prompt), never the tail that asks for the answer.
"""
MBPP_INSTRUCTION = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                    "the request.\n\n### Instruction:\nCreate a Python script for this problem:\n{question}\n\n"
                    "### Response:")


def prompt_parts(problem, mbpp_instruction=MBPP_INSTRUCTION):
    """(head, question, tail) of a problem's prompt."""
    if problem.dataset == "mbpp":
        head, tail = mbpp_instruction.split("{question}")
        question = "\n" + problem.prompt + "\nTest examples:" + "".join("\n" + test for test in problem.shown_tests)
        return head, question, tail
    starter = "\n" + problem.starter_code if problem.starter_code else ""
    form = "\nUse Call-Based format" if problem.entry_point else "\nUse Standard Input format"
    return "\nQUESTION:\n", problem.prompt, starter + form + "\nANSWER:\n"


def prompt_text(problem, mbpp_instruction=MBPP_INSTRUCTION):
    """The whole prompt of a problem, uncut."""
    return "".join(prompt_parts(problem, mbpp_instruction))
