"""The tiny data set: generated Python synthesis problems that a small model trained from
scratch in minutes can partly solve, so that sampling, RL and ranking have room to help.

Each problem is a composition over a list of integers or of words: an aggregate (sum,
product, max, min, count, list, join) of a map (square, add k, upper, reverse, len, ...) of
a filter (even, > k, starts with a letter, ...), e.g. "the sum of the squares of the even
numbers". It is described in one of several phrasings and asked in the call-based format
(a function of a given name) or the standard-input format (read a line, print the answer),
as in APPS. Each problem has three reference solutions (comprehension, loop, map/filter),
example tests and hidden tests (with the empty list and an all-negative list).

    train, test = make_tiny_problems(seed=0, n_train=2000, n_test=200)

The test split asks only compositions (element type, map, filter, aggregate) that never
occur in training, though each of their parts does: held-out problems need compositional
generalisation, not recall. Everything is a function of the config (seed included).

A harder task chains maps: with `maps=2`, half the problems (drawn by chain length) apply two
maps one after the other, e.g. "the sum of the squares of the even numbers after adding 3 to
each" (add 3, then square). Their compositions name the chain "add+square"; there are some
twenty times as many of them, so most held-out chains were never seen whole.
"""
import math
import random
from dataclasses import dataclass, replace

from bcoder.data.problems import Problem
from bcoder.sandbox.schema import CallTest, StdioTest, UnitTests


@dataclass(frozen=True)
class Step:
    """A map or a filter. `code` is a Python expression in the element `{v}` and the
    parameter `{k}`; `fn(value, k)` computes the same in-process, for the expected outputs."""
    name: str
    code: str
    fn: object
    phrases: tuple          # maps: noun phrases around `{n}` (the filtered elements); filters: noun phrases
    params: tuple = (None,)
    makes: str = ""         # maps: the value type produced, if not the element type


@dataclass(frozen=True)
class Aggregate:
    """How the mapped values become the answer, in each solution style. `comprehension`
    formats `{gen}` (a bare generator) or `{list}` (a list comprehension), `functional`
    formats `{it}` (map/filter over the input), `loop` is (variable, initial value, update
    with `{m}` the mapped value, result); `{d}` is the value type's default (max/min of none)."""
    name: str
    accepts: tuple          # value types
    comprehension: str
    functional: str
    loop: tuple
    fn: object              # fn(values, default)
    phrases: dict           # value type -> descriptions of the answer around `{m}` (the values)
    stdin_phrases: dict = None
    imports: str = ""


def _identity(x, k):
    return x


INT_MAPS = (
    Step("identity", "{v}", _identity, ("{n}",)),
    Step("square", "{v} * {v}", lambda x, k: x * x, ("the squares of {n}", "{n}, each squared")),
    Step("times", "{v} * {k}", lambda x, k: x * k, ("{n}, each multiplied by {k}", "{k} times each of {n}"),
         (2, 3, 4, 5)),
    Step("add", "{v} + {k}", lambda x, k: x + k, ("{n} after adding {k} to each", "{n}, each increased by {k}"),
         (1, 2, 3, 4, 5, 6, 7, 8, 9)),
    Step("subtract", "{v} - {k}", lambda x, k: x - k,
         ("{n} after subtracting {k} from each", "{n}, each decreased by {k}"), (1, 2, 3, 4, 5, 6, 7, 8, 9)),
    Step("negate", "-{v}", lambda x, k: -x, ("the negatives of {n}", "{n}, each negated")),
    Step("abs", "abs({v})", lambda x, k: abs(x), ("the absolute values of {n}",)),
    Step("half", "{v} // 2", lambda x, k: x // 2, ("{n}, each halved and rounded down",)),
    Step("mod", "{v} % {k}", lambda x, k: x % k, ("the remainders of {n} divided by {k}",), (3, 4, 5)),
)
INT_FILTERS = (
    Step("all", "", None, ("the numbers", "all the numbers")),
    Step("even", "{v} % 2 == 0", lambda x, k: x % 2 == 0, ("the even numbers",)),
    Step("odd", "{v} % 2 == 1", lambda x, k: x % 2 == 1, ("the odd numbers",)),
    Step("positive", "{v} > 0", lambda x, k: x > 0, ("the positive numbers",)),
    Step("negative", "{v} < 0", lambda x, k: x < 0, ("the negative numbers",)),
    Step("nonzero", "{v} != 0", lambda x, k: x != 0, ("the nonzero numbers", "the numbers that are not zero")),
    Step("greater", "{v} > {k}", lambda x, k: x > k, ("the numbers greater than {k}", "the numbers above {k}"),
         (-3, -2, -1, 1, 2, 3, 4, 5, 6)),
    Step("less", "{v} < {k}", lambda x, k: x < k, ("the numbers less than {k}", "the numbers below {k}"),
         (-3, -2, -1, 1, 2, 3, 4, 5, 6)),
    Step("multiple", "{v} % {k} == 0", lambda x, k: x % k == 0,
         ("the multiples of {k}", "the numbers divisible by {k}"),
         (3, 4, 5)),
)
WORD_MAPS = (
    Step("identity", "{v}", _identity, ("{n}",)),
    Step("upper", "{v}.upper()", lambda w, k: w.upper(), ("{n} in upper case", "{n}, each uppercased")),
    Step("reverse", "{v}[::-1]", lambda w, k: w[::-1], ("{n}, each reversed", "the reverses of {n}")),
    Step("double", "{v} * 2", lambda w, k: w * 2, ("{n}, each repeated twice",)),
    Step("first", "{v}[:1]", lambda w, k: w[:1], ("the first letters of {n}", "the first letter of each of {n}")),
    Step("capitalize", "{v}.capitalize()", lambda w, k: w.capitalize(), ("{n}, each capitalized",)),
    Step("length", "len({v})", lambda w, k: len(w), ("the lengths of {n}", "the length of each of {n}"), makes="int"),
)
LETTERS = "abcde"
WORD_FILTERS = (
    Step("all", "", None, ("the words", "all the words")),
    Step("nonempty", "len({v}) > 0", lambda w, k: len(w) > 0, ("the non-empty words", "the words that are not empty")),
    Step("starts", '{v}.startswith("{k}")', lambda w, k: w.startswith(k),
         ("the words starting with the letter {k}", "the words that begin with {k}"), tuple(LETTERS)),
    Step("ends", '{v}.endswith("{k}")', lambda w, k: w.endswith(k), ("the words ending with the letter {k}",),
         tuple(LETTERS)),
    Step("contains", '"{k}" in {v}', lambda w, k: k in w, ("the words containing the letter {k}",), tuple(LETTERS)),
    Step("longer", "len({v}) > {k}", lambda w, k: len(w) > k,
         ("the words longer than {k} letters", "the words with more than {k} letters"), (1, 2, 3, 4)),
    Step("shorter", "len({v}) < {k}", lambda w, k: len(w) < k, ("the words shorter than {k} letters",), (2, 3, 4, 5)),
)
AGGREGATES = (
    Aggregate("sum", ("int",), "sum({gen})", "sum({it})", ("s", "0", "s += {m}", "s"), lambda xs, d: sum(xs),
              {"int": ("the sum of {m}", "the total of {m}")}),
    Aggregate("product", ("int",), "math.prod({gen})", "math.prod({it})", ("p", "1", "p *= {m}", "p"),
              lambda xs, d: math.prod(xs), {"int": ("the product of {m}",)}, imports="import math\n"),
    Aggregate("max", ("int", "str"), "max({list}, default={d})", "max({it}, default={d})",
              ("ys", "[]", "ys.append({m})", "max(ys, default={d})"), lambda xs, d: max(xs, default=d),
              {"int": ("the largest of {m}, or 0 if there are none", "the maximum of {m} (0 if there is none)"),
               "str": ("the alphabetically last of {m}, or an empty string if there are none",)}),
    Aggregate("min", ("int", "str"), "min({list}, default={d})", "min({it}, default={d})",
              ("ys", "[]", "ys.append({m})", "min(ys, default={d})"), lambda xs, d: min(xs, default=d),
              {"int": ("the smallest of {m}, or 0 if there are none", "the minimum of {m} (0 if there is none)"),
               "str": ("the alphabetically first of {m}, or an empty string if there are none",)}),
    # Counting ignores the map, so it only comes with the identity map (see compositions()).
    Aggregate("count", ("int", "str"), "len({list})", "len(list({it}))", ("n", "0", "n += 1", "n"),
              lambda xs, d: len(xs), {"int": ("the number of {m}", "the count of {m}"),
                                      "str": ("the number of {m}", "the count of {m}")}),
    Aggregate("list", ("int", "str"), "{list}", "list({it})", ("ys", "[]", "ys.append({m})", "ys"),
              lambda xs, d: list(xs), {"int": ("a list of {m}", "the list of {m}"), "str": ("a list of {m}",)},
              stdin_phrases={"int": ("{m}, separated by spaces", "{m} on one line"),
                             "str": ("{m}, separated by spaces", "{m} on one line")}),
    Aggregate("join", ("str",), '"".join({gen})', '"".join({it})', ("s", '""', "s += {m}", "s"),
              lambda xs, d: "".join(xs), {"str": ("{m} joined into one string", "the concatenation of {m}")}),
    Aggregate("dashes", ("str",), '"-".join({gen})', '"-".join({it})', ("ys", "[]", "ys.append({m})", '"-".join(ys)'),
              lambda xs, d: "-".join(xs), {"str": ("{m} joined with dashes",)}),
)


@dataclass(frozen=True)
class Element:
    """What the input list holds, and the names its solutions use."""
    type: str               # "int" | "str"
    noun: str               # for the prompt
    sequence: str           # the argument / the variable read from stdin
    variable: str           # one element
    read: str               # the stdin line that reads the list
    maps: tuple
    filters: tuple


ELEMENTS = {
    "int": Element("int", "integers", "xs", "x", "xs = list(map(int, input().split()))\n", INT_MAPS, INT_FILTERS),
    "str": Element("str", "words", "words", "w", "words = input().split()\n", WORD_MAPS, WORD_FILTERS),
}
DEFAULTS = {"int": "0", "str": '""'}   # of max/min over no values, as code
FUNCTION_NAMES = ("solve", "compute", "answer", "calc", "f", "g", "process", "result_of")
CALL_PHRASES = ("Write a function {f}({p}) that takes a list of {t} and returns {a}.",
                "Given a list of {t} {p}, {f}({p}) should return {a}.",
                "Define {f}({p}) to return {a}, where {p} is a list of {t}.")
STDIN_PHRASES = ("Read a line of {t} separated by spaces and print {a}.",
                 "The input is one line of {t}. Print {a}.",
                 "Given {t} on one line of standard input, output {a}.")


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    n_train: int = 2000
    n_test: int = 200
    test_fraction: float = 0.15       # of the compositions, held out for the test split
    formats: tuple = ("call", "stdin")
    n_examples: int = 2
    n_hidden: int = 6                 # including the empty list and an all-negative list (ints)
    maps: int = 1                     # the longest chain of maps a problem applies (1 or 2)


@dataclass
class TinyProblem(Problem):
    """A Problem that also names what it asks: (element type, map, filter, aggregate) and
    their parameters, and its format ("call" or "stdin")."""
    composition: tuple = ()
    params: tuple = ()
    format: str = ""


def map_chains(element, maps):
    """The chains of maps of one element type, as lists of Steps: each single map, then (maps=2) each
    pair of distinct maps other than the identity whose first keeps the element's type."""
    chains = [[step] for step in element.maps]
    if maps >= 2:
        chains += [[first, second] for first in element.maps for second in element.maps
                   if "identity" not in (first.name, second.name) and first is not second and not first.makes]
    return chains


def compositions(maps=1):
    """Every (element type, map chain, filter, aggregate) that makes sense, in a fixed order; a chain of
    two maps is named "first+second"."""
    found = []
    for element in ELEMENTS.values():
        for chain in map_chains(element, maps):
            value_type = chain[-1].makes or element.type
            for keep in element.filters:
                for aggregate in AGGREGATES:
                    if value_type in aggregate.accepts and (aggregate.name != "count" or chain[0].name == "identity"):
                        found.append((element.type, "+".join(s.name for s in chain), keep.name, aggregate.name))
    return found


def split_compositions(seed, test_fraction, maps=1):
    """(train, test) compositions: a random `test_fraction` held out, keeping every map,
    filter and aggregate (per element type) in some training composition."""
    everything = compositions(maps)
    order = list(everything)
    random.Random(f"tiny-split-{seed}").shuffle(order)
    uses = {}
    for composition in everything:
        for part in _parts(composition):
            uses[part] = uses.get(part, 0) + 1
    held_out = set()
    for composition in order:
        if len(held_out) >= round(test_fraction * len(everything)):
            break
        if all(uses[part] > 1 for part in _parts(composition)):
            held_out.add(composition)
            for part in _parts(composition):
                uses[part] -= 1
    return [c for c in everything if c not in held_out], [c for c in everything if c in held_out]


def _parts(composition):
    element, chain, keep, aggregate = composition
    return [(element, "map", name) for name in chain.split("+")] + [(element, "filter", keep),
                                                                    (element, "aggregate", aggregate)]


def make_tiny_problems(config=None, **fields):
    """(train, test) lists of TinyProblem; `fields` override those of `config` (a TinyConfig)."""
    config = replace(config or TinyConfig(), **fields)
    rng = random.Random(config.seed)
    train_compositions, test_compositions = split_compositions(config.seed, config.test_fraction, config.maps)
    train = _sample_problems(rng, config, train_compositions, config.n_train, "train")
    test = _sample_problems(rng, config, test_compositions, config.n_test, "test")
    return train, test


def _sample_problems(rng, config, pool, count, split):
    problems, seen = [], set()
    by_length = [[c for c in pool if c[1].count("+") == n] for n in range(config.maps)]
    by_length = [group for group in by_length if group]
    for _ in range(100 * count + 1000):
        if len(problems) == count:
            break
        # (a chain length first: else nearly every problem would chain the most maps)
        choices = rng.choice(by_length) if len(by_length) > 1 else pool
        composition, form = rng.choice(choices), rng.choice(config.formats)
        element = ELEMENTS[composition[0]]
        chain, keep, aggregate = _lookup(element, composition)
        params = (*(rng.choice(step.params) for step in chain), rng.choice(keep.params))
        if (composition, params, form) in seen:
            continue
        seen.add((composition, params, form))
        problem = _problem(rng, config, f"tiny-{config.seed}-{split}-{len(problems):05d}", composition, chain, keep,
                           aggregate, params, form)
        if len(chain) > 1 and len(set(map(_answer, problem.tests.cases))) < 3:
            continue        # two maps can make a near-constant answer (first letters' lengths), which no test tells
        problems.append(problem)
    if len(problems) < count:
        raise ValueError(f"only {len(problems)} distinct {split} problems found; ask for fewer")
    return problems


def _answer(case):
    return repr(case.expected) if isinstance(case, CallTest) else case.output


def _lookup(element, composition):
    _, chain, filter_name, aggregate_name = composition
    return ([next(s for s in element.maps if s.name == name) for name in chain.split("+")],
            next(s for s in element.filters if s.name == filter_name),
            next(a for a in AGGREGATES if a.name == aggregate_name))


def _operand(expression, code):
    """`expression` as the operand `{v}` of the map `code`: bracketed where it has an operator and the
    code does not bracket it already (a call's argument)."""
    return f"({expression})" if " " in expression and "({v})" not in code else expression


def _problem(rng, config, task_id, composition, chain, keep, aggregate, params, form):
    element = ELEMENTS[composition[0]]
    value_type = chain[-1].makes or element.type
    *map_params, b = params
    values = rng.choice(keep.phrases).format(k=b)
    for step, a in zip(chain, map_params):        # the first map's phrase is innermost
        values = rng.choice(step.phrases).format(n=values, k=a)
    phrases = (aggregate.stdin_phrases if form == "stdin" and aggregate.stdin_phrases else aggregate.phrases)
    answer = rng.choice(phrases[value_type]).format(m=values)
    name = rng.choice(FUNCTION_NAMES) if form == "call" else ""
    sentence = rng.choice(CALL_PHRASES if form == "call" else STDIN_PHRASES)
    prompt = sentence.format(f=name, p=element.sequence, t=element.noun, a=answer)

    mapped = element.variable
    for step, a in zip(chain, map_params):
        mapped = step.code.format(v=_operand(mapped, step.code), k=a)
    condition = keep.code.format(v=element.variable, k=b)
    solutions = []
    for style in (_comprehension, _loop, _functional):
        body, value = style(element, mapped, condition, aggregate, DEFAULTS[value_type])
        program = _program(element, form, name, aggregate.imports, body, value, aggregate.name == "list")
        if program not in solutions:
            solutions.append(program)

    def apply(x):
        for step, a in zip(chain, map_params):
            x = step.fn(x, a)
        return x

    def solve(xs):
        kept = [x for x in xs if keep.fn is None or keep.fn(x, b)]
        return aggregate.fn([apply(x) for x in kept], "" if value_type == "str" else 0)

    inputs = _inputs(rng, element, form, config.n_examples, config.n_hidden, solve)
    cases = [CallTest(name, [xs], solve(xs)) if form == "call" else StdioTest(" ".join(map(str, xs)) + "\n",
                                                                                _printed(solve(xs)) + "\n")
             for xs in inputs]
    return TinyProblem(task_id=task_id, prompt=prompt, example_tests=UnitTests(cases[:config.n_examples]),
                       hidden_tests=UnitTests(cases[config.n_examples:]), solutions=solutions, entry_point=name,
                       composition=composition, params=params, format=form, dataset="tiny")


def _comprehension(element, mapped, condition, aggregate, default):
    v, xs = element.variable, element.sequence
    if mapped == v and not condition:          # nothing to map or filter: aggregate the input itself
        return _functional(element, mapped, condition, aggregate, default)
    generator = f"{mapped} for {v} in {xs}" + (f" if {condition}" if condition else "")
    return [], aggregate.comprehension.format(gen=generator, list=f"[{generator}]", d=default)


def _functional(element, mapped, condition, aggregate, default):
    v, iterable = element.variable, element.sequence
    if condition:
        iterable = f"filter(lambda {v}: {condition}, {iterable})"
    if mapped != v:
        iterable = f"map(lambda {v}: {mapped}, {iterable})"
    return [], aggregate.functional.format(it=iterable, d=default)


def _loop(element, mapped, condition, aggregate, default):
    variable, initial, update, result = aggregate.loop
    lines = [f"{variable} = {initial}", f"for {element.variable} in {element.sequence}:"]
    if condition:
        lines.append(f"    if {condition}:")
    lines.append("    " * (1 + bool(condition)) + update.format(m=mapped))
    return lines, result.format(d=default)


def _program(element, form, name, imports, body, value, prints_list):
    imports = imports if "math." in value else ""      # the loop needs no import
    if form == "call":
        lines = [f"def {name}({element.sequence}):"] + ["    " + line for line in body] + [f"    return {value}"]
        return imports + "\n".join(lines) + "\n"
    output = f"print(*{value})" if prints_list else f"print({value})"
    return imports + element.read + "\n".join(body + [output]) + "\n"


def _printed(value):
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _inputs(rng, element, form, n_examples, n_hidden, solve):
    """Distinct input lists: the examples (random, non-empty), then the edge cases (the empty
    list; for integers, an all-negative list), then random ones. Random lists are redrawn
    (a few times) until their answer is new and depends on their first (or, alternately,
    last) element, so that the tests tell apart programs that differ on a few inputs."""
    if element.type == "int":
        def draw():
            return [rng.randint(-9, 9) for _ in range(rng.randint(1, 7))]
        edges = [[], [rng.randint(-9, -1) for _ in range(rng.randint(1, 4))]]
    else:
        shortest = 0 if form == "call" else 1      # words read from stdin cannot be empty
        def draw():
            return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(shortest, 5)))
                    for _ in range(rng.randint(1, 6))]
        edges = [[]]

    def telling(xs):
        without = xs[1:] if len(answers) % 2 else xs[:-1]
        return solve(xs) not in answers and solve(xs) != solve(without)

    examples, hidden = [], edges[:n_hidden]
    answers = [solve(xs) for xs in hidden]
    for chosen, size in ((examples, n_examples), (hidden, n_hidden)):
        while len(chosen) < size:
            candidate = next((xs for xs in (draw() for _ in range(20)) if telling(xs)), draw())
            if candidate not in examples + hidden:
                chosen.append(candidate)
                answers.append(solve(candidate))
    return examples + hidden
