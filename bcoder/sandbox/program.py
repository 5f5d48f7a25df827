"""What runs in the program's process: compile and run the program, then answer the judge.

Nothing here decides an outcome, and nothing of a test is ever in this process: the
program can change any of this code and any byte of its process, and all it can achieve
is a different answer. The child's file descriptors (set up by the worker):

    0 stdin (/dev/null, or a memfd of the test input of a standard-input run), 1 stdout, 2 stderr
      (memfds the pool reads once the program's processes are gone)
    3 STATUS   lines to the judge (call runs) or to a memfd the pool reads (stdin runs)
    4 CALLS    requests from the judge (call runs only)

Messages are JSON lists, one per line. Before the program runs, the harness writes
["compiled"] or ["compile_error", type, message] (so a compile error is never the
program's claim); then, once the program ran, ["program_error", type, message] or (call
runs) ["ready", [[name, value], ...]] with the names the tests take from the program (the
worker passes them: they are the functions the problem asks for, nothing of a test). A call
run then answers requests until the judge closes CALLS:

    [seq, "call", target, args, kwargs]       -> [seq, "returned", value] | [seq, "raised", type, message]
                                                 target: ["name", name] (a global, or a method of a
                                                 LeetCode-style `Solution`) or ["ref", handle]
    [seq, "getattr", handle, name]            -> the same
    [seq, "setattr", handle, name, value]     -> [seq, "returned", None] | raised

Values are plain data (values.py); an object that is not plain data crosses as a handle
into this process's table, which the judge can pass back, call, or read attributes of.
"""
import builtins
import json
import os
import sys
import types

from bcoder.sandbox.values import NotPlainData, decode, encode

STATUS_FD, CALLS_FD = 3, 4
MESSAGE_LIMIT = 2000         # characters kept of an exception message

# The imports the official APPS harness puts before every program (testing_util.py);
# `np` is added only for programs that mention it, since numpy is slow to import.
APPS_PREAMBLE = """\
import sys, time, itertools, collections, math, fractions, random, heapq
from itertools import accumulate, product, permutations, combinations
from collections import Counter, OrderedDict, deque, defaultdict, ChainMap
from functools import lru_cache
from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2
from typing import List, Tuple
from heapq import *
"""


# A small program in the style of MBPP, HumanEval and APPS solutions, for warm_up.
WARM_UP_PROGRAM = """\
import re, math, heapq, itertools, collections
from typing import List, Dict, Optional, Tuple


class Node:
    def __init__(self, value, children=None):
        self.value, self.children = value, children or []


def solve(numbers: List[int], text: str = "a1b22c") -> Tuple[int, List[str], Dict[str, int]]:
    total = sum(x * x for x in numbers if x % 2) + max(numbers, default=0)
    words = [w.upper() for w in re.findall(r"[a-z]+", text)] + sorted(set("cab"), key=lambda c: -ord(c))
    counts = dict(collections.Counter(text))
    heap = list(numbers)
    heapq.heapify(heap)
    total += math.isqrt(abs(total)) + len(list(itertools.combinations(heap, 2))) + int(f"{total:d}"[0])
    return total, words, {k: v for k, v in sorted(counts.items())}


def fail():
    return {}["missing"]


print(solve([3, 1, 2]), Node(1, [Node(2)]).children[0].value, end="\\n", file=__import__("io").StringIO())
"""


def add_site_builtins():
    """exit() and quit(), which the `site` module adds and programs call; the worker runs without site."""
    import _sitebuiltins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


def warm_up():
    """Runs WARM_UP_PROGRAM through the child's code paths twice, in the worker before it forks:
    a process's first compile, exec, class creation, exception and JSON round trip cost ten times
    the next (the interpreter fills caches and allocates its arenas on first use), and every
    forked child would pay that again (measured: 7.5 ms per child cold, 1.2 ms warm)."""
    def by_reference(value, _):
        return ["object", type(value).__name__, 0]

    for _ in range(2):
        namespace = {"__name__": "__warm_up__"}
        exec(compile(WARM_UP_PROGRAM, "<program>", "exec"), namespace)
        answer = namespace["solve"]([5, 4, 3])
        json.loads(json.dumps([1, "returned", encode([answer, namespace["Node"](0)], by_reference)]))
        decode(json.loads(json.dumps(encode({"a": (1, 2.5, None)}, by_reference))), None)
        try:
            namespace["fail"]()
        except KeyError as error:
            describe(error)


def describe(error):
    """(type name, message with the program line) of an exception."""
    try:
        text = str(error)
    except BaseException:
        text = "<unprintable>"
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<program>":
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (program line {line})" if line else ""
    return type(error).__name__, text[:MESSAGE_LIMIT] + where


def compile_program(source, apps):
    try:
        return compile(source, "<program>", "exec")
    except SyntaxError as error:
        if not (apps and "outside function" in str(error.msg)):
            raise
    # The APPS harness runs a program as the body of a function (imports stay at the
    # top), so a top-level `return` ends the program there. (ast loads here, for the few programs
    # that need it: every module the worker holds makes each fork slower.)
    import ast

    tree = ast.parse(source, "<program>")
    hoisted = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    body = [s for s in tree.body if s not in hoisted] or [ast.Pass()]
    function = ast.FunctionDef(name="__apps_code__", args=ast.arguments(
        posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=body, decorator_list=[], returns=None, type_comment=None)
    call = ast.Expr(ast.Call(ast.Name("__apps_code__", ast.Load()), [], []))
    tree.body = hoisted + [function, call]
    return compile(ast.fix_missing_locations(tree), "<program>", "exec")


def write_line(fd, message):
    write_all(fd, (json.dumps(message) + "\n").encode())


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


COMPILED_LINE = b'["compiled"]\n'   # a constant: the encoder's first use costs a forked child ~20 page copies


def read_source(fd, size):
    """The program's source from its sealed memfd of `size` bytes (read in the forked child: the worker
    never holds it): one read of that many bytes (a megabyte's buffer and a read to the end, or an
    fstat, cost the child some 50 page copies)."""
    parts, offset = [], 0
    while offset < size and (chunk := os.pread(fd, size - offset, offset)):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts).decode()


def read_lines(fd):
    """The lines on fd, read with os.read: a file object's buffers cost a forked child more than
    its whole run of a small program."""
    parts = []
    while chunk := os.read(fd, 1 << 16):
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            parts.append(piece)
            yield b"".join(parts)
            parts = []
        parts.append(rest)


def program_main(source, apps, stdio, names=()):
    """Runs in the forked child: compiles and runs `source`, then (call runs) serves the judge."""
    module = types.ModuleType("__main__" if stdio else "__program__")
    sys.modules[module.__name__] = sys.modules["__main__"] = module
    namespace = module.__dict__
    if apps:
        exec(APPS_PREAMBLE + ("import numpy as np\n" if "np." in source else ""), namespace)
    try:
        code = compile_program(source, apps)
    except BaseException as error:
        write_line(STATUS_FD, ["compile_error", *describe(error)])
        return 1
    write_all(STATUS_FD, COMPILED_LINE)
    try:
        exec(code, namespace)
    except SystemExit as error:
        # A judge treats sys.exit() after the output as a normal end of a stdin program.
        if not (stdio and error.code in (None, 0)):
            write_line(STATUS_FD, ["program_error", "SystemExit", f"exit code {error.code!r}"])
            return 1
    except BaseException as error:
        write_line(STATUS_FD, ["program_error", *describe(error)])
        return 1
    if not stdio:
        Server(namespace).serve(names)
    return 0


class Server:
    """Answers the judge's requests on the program's namespace until the judge closes the channel."""

    def __init__(self, namespace):
        self.namespace = namespace
        self.objects = []                 # handle -> object

    def serve(self, names):
        """First ["ready", [[name, value], ...]]: the names the tests take from the program (a name it
        does not define is left out), then one answer per request."""
        ready = []
        for name in names:
            if name in self.namespace:
                try:
                    ready.append([name, encode(self.namespace[name], self.by_reference)])
                except BaseException:
                    pass                  # left out: the test that uses it fails with NameError
        write_line(STATUS_FD, ["ready", ready])
        for line in read_lines(CALLS_FD):
            request = json.loads(line)
            try:
                reply = [request[0], "returned", encode(self.answer(request), self.by_reference)]
            except BaseException as error:
                reply = [request[0], "raised", *describe(error)]
            try:
                sys.stdout.flush()
            except BaseException:
                pass                      # the program closed or replaced it
            write_line(STATUS_FD, reply)

    def answer(self, request):
        kind = request[1]
        if kind == "call":
            args = [decode(a, self.tagged) for a in request[3]]
            kwargs = {k: decode(v, self.tagged) for k, v in request[4]}
            return self.target(request[2])(*args, **kwargs)
        if kind == "getattr":
            return getattr(self.objects[request[2]], request[3])
        if kind == "setattr":
            return setattr(self.objects[request[2]], request[3], decode(request[4], self.tagged))
        raise ValueError(f"unknown request {kind!r}")

    def target(self, spec):
        if spec[0] == "ref":
            return self.objects[spec[1]]
        name = spec[1]
        if callable(self.namespace.get(name)):
            return self.namespace[name]
        if "Solution" in self.namespace:  # LeetCode-style starter code
            return getattr(self.namespace["Solution"](), name)
        raise NameError(f"the program defines no function {name!r}")

    def by_reference(self, value, _):
        if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
            return encode(value.tolist(), self.by_reference)
        self.objects.append(value)
        kind = type(value).__name__
        return ["object", kind if isinstance(kind, str) else "?", len(self.objects) - 1]

    def tagged(self, tag, fields, dec):
        if tag == "ref":
            return self.objects[fields[0]]
        if tag == "builtin":
            return getattr(builtins, fields[0])
        if tag == "instance":             # a problem-defined object: rebuilt with the program's class
            name, attributes = fields
            cls = self.namespace.get(name)
            if not isinstance(cls, type):
                cls = self.namespace.setdefault(f"__instance_class_{name}", type(name, (), {}))
            instance = cls.__new__(cls)
            for attribute, value in attributes:
                object.__setattr__(instance, attribute, dec(value))
            return instance
        raise NotPlainData(f"unexpected tag {tag!r}")
