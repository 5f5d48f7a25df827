"""The prompt a model sees for a problem (docs/method.md#prompt-format)."""


def apps_prompt(problem):
    """The APPS / CodeRL prompt: question, starter code, the format line, then "ANSWER:"."""
    form = "\nUse Call-Based format" if problem.entry_point else "\nUse Standard Input format"
    return "\nQUESTION:\n" + problem.prompt + "\n" + problem.starter_code + form + "\nANSWER:\n"
