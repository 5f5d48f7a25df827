"""The judge: a trusted process that runs the problem's tests against the program by proxy.

One judge per sandbox slot, started by the pool beside the worker; it never loads a program.
For each call run the pool sends it the tests (test code, expected values) and its ends of a
fresh channel to the program's process. It runs the problem's own code (MBPP
`test_setup_code`, HumanEval's prompt helpers and `check`) in a fresh namespace and binds each
name the tests take from the program (`UnitTests.names`) to a `Remote`: calling it sends the
arguments to the program's process as plain data (values.py) and returns the answer as plain
data, or raises the builtin exception of the type the program raised. Everything a test
compares or asserts is therefore computed here, by this process's own builtins and modules, on
values that cannot run code. As root the judge runs as its own uid, apart from the programs'
uid, in its own namespaces and root (isolation.py), and it is never dumpable.

Protocol on its socket (4-byte big-endian length, UTF-8 JSON), after a hello {"tmp": its root}:

  request  pool -> judge   {"timeout": s, "answers": policy, "setup": code, "names": [...],
                            "modules": [...], "cases": [case, ...]} with the fds [calls, status]
                            of the channel;
                            a case is ["value", expr, expected] | ["assert", code] |
                            ["call", fn_name, args, expected] (values encoded by values.encode)
  reply    judge -> pool   {"verdicts": [verdict, ...]}: ["program", "compile_error" |
                            "program_error", type, message] or one ["test", index, status, type,
                            message] per test run, status passed | failed | error | died ("died":
                            the program's process was gone; the pool says how it ended) | timeout

`timeout` is CPU seconds of the judge's own (ITIMER_PROF: time spent waiting for the program is
the program's, limited by the worker): past it, the test running is a timeout and the others get
no verdict. Code that holds the interpreter in C (a set of 199k ints that all hash to 0) defers
that signal; the pool kills and replaces a judge that misses the run's wall-clock deadline.
"""
import builtins
import functools
import importlib
import json
import os
import random
import resource
import signal
import socket
import sys

from bcoder.sandbox import messages
from bcoder.sandbox.answers import call_matches
from bcoder.sandbox.isolation import become, interpreter_paths, isolate, lock_privileges, not_dumpable
from bcoder.sandbox.values import NotPlainData, decode, encode

SHOWN = 300                  # characters of a value shown in a failure message
REPLY_LIMIT = 64 << 20       # bytes of one answer from the program
# Exceptions of the program that a test must not see as what they are: StopIteration would end
# a test's map() or generator early, and the others would end the judge.
NOT_REPLAYED = (StopIteration, StopAsyncIteration, GeneratorExit, SystemExit, KeyboardInterrupt)


class ProgramError(Exception):
    """The program raised an exception that is not a builtin one (its type name is the message)."""


class ProgramDied(Exception):
    """The program's process closed its side of the channel (it exited, crashed or was killed)."""


class ProtocolError(Exception):
    """The program's process wrote something that is not an answer to the request."""


class UnservableTest(Exception):
    """A test would pass the program an object that cannot cross as plain data (a function)."""


class JudgeTimeout(BaseException):
    """The judge's own CPU time for a run is up (its test code, not the program, was running)."""


class Channel:
    """The requests to the program's process and its answers, in order."""

    def __init__(self, calls_fd, status_fd):
        self.calls = calls_fd
        self.status = os.fdopen(status_fd, "rb")
        self.seq = 0

    def line(self):
        data = self.status.readline(REPLY_LIMIT + 1)
        if not data:
            raise ProgramDied("the program's process ended")
        if len(data) > REPLY_LIMIT:
            raise ProtocolError("an answer over the size limit")
        try:
            message = json.loads(data)
        except ValueError:
            raise ProtocolError("an answer that is not JSON") from None
        if not isinstance(message, list) or not message:
            raise ProtocolError("an answer that is not a JSON list")
        return message

    def request(self, kind, *fields):
        self.seq += 1
        data = (json.dumps([self.seq, kind, *fields]) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.calls, data):]
        except BrokenPipeError:
            raise ProgramDied("the program's process ended") from None
        reply = self.line()
        if len(reply) < 3 or reply[0] != self.seq or reply[1] not in ("returned", "raised"):
            raise ProtocolError(f"expected the answer to request {self.seq}")
        if reply[1] == "raised":
            raise program_exception(reply[2], reply[3] if len(reply) > 3 else "")
        return decode(reply[2], self.remote)

    def remote(self, tag, fields, _):
        if tag != "object" or len(fields) != 2 or type(fields[1]) is not int:
            raise NotPlainData(f"unexpected {tag!r} from the program")
        return Remote(self, ["ref", fields[1]], str(fields[0]))

    def call(self, target, args, kwargs):
        return self.request("call", target, [self.encode(a) for a in args],
                            [[k, self.encode(v)] for k, v in kwargs.items()])

    def encode(self, value):
        def other(v, child):
            if type(v) is Remote:
                if object.__getattribute__(v, "_channel") is not self:
                    raise UnservableTest("a program object of another run")
                return object.__getattribute__(v, "_target")
            if getattr(builtins, getattr(v, "__name__", ""), None) is v and callable(v):
                return ["builtin", v.__name__]
            if getattr(type(v), "__module__", None) == TEST_MODULE and hasattr(v, "__dict__"):
                return ["instance", type(v).__name__, [[k, child(x)] for k, x in vars(v).items()]]
            raise UnservableTest(f"a {type(v).__name__} cannot be passed to the program as plain data")
        return encode(value, other)


def program_exception(type_name, message):
    """The exception a proxy raises for one the program raised: the builtin of that name where
    there is one (so a test's `except ValueError` works), else ProgramError."""
    type_name, message = str(type_name), str(message)
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, BaseException) and not issubclass(cls, NOT_REPLAYED):
        try:
            error = cls(message)
        except Exception:                 # UnicodeDecodeError and others take more arguments
            error = None
        if error is not None:
            error.from_program = type_name
            return error
    error = ProgramError(f"{type_name}: {message}")
    error.from_program = type_name
    return error


class Remote:
    """A program object, by reference: calling it, reading or setting one of its attributes runs
    in the program's process, on plain-data arguments. It equals only itself and has no truth
    value, length or iteration here, so nothing the program defines takes part in a comparison."""
    __slots__ = ("_channel", "_target", "_type")

    def __init__(self, channel, target, type_name):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_type", type_name)

    def __call__(self, *args, **kwargs):
        return object.__getattribute__(self, "_channel").call(object.__getattribute__(self, "_target"), args, kwargs)

    def __getattr__(self, name):
        return self._channel.request("getattr", self._handle(), name)

    def __setattr__(self, name, value):
        self._channel.request("setattr", self._handle(), name, self._channel.encode(value))

    def _handle(self):
        target = object.__getattribute__(self, "_target")
        if target[0] != "ref":
            raise AttributeError(f"the program's {target[1]!r} has no attributes here")
        return target[1]

    def __bool__(self):
        raise TypeError(f"a program {self._type} object has no truth value in a test")

    def __repr__(self):
        return f"<program {object.__getattribute__(self, '_type')} object>"


TEST_MODULE = "__test__"


def namespace_for(spec, program_names, channel):
    """The tests' globals: the program's names (proxies, or plain values), the standard modules the
    tests use without importing them (as `math.isclose` after a program that imported math), then
    the problem's own setup code over them."""
    namespace = {"__name__": TEST_MODULE, "__builtins__": builtins}
    for name in spec["modules"]:
        namespace[name] = importlib.import_module(name)
    for entry in program_names:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in spec["names"]):
            raise ProtocolError("a ready message that is not the program's names")
        namespace[entry[0]] = decode(entry[1], channel.remote)
    if spec["setup"]:
        exec(compiled(spec["setup"], "exec"), namespace)
    return namespace


@functools.lru_cache(maxsize=4096)
def compiled(code, mode):
    """Test code compiled once per judge: RL runs the same problem's tests for every sample."""
    return compile(code, "<test>", mode)


def run_case(case, namespace, channel, answers):
    """(status, type, message) of one test."""
    kind = case[0]
    try:
        if kind == "assert":
            exec(compiled(case[1], "exec"), namespace)
            return "passed", "", ""
        if kind == "value":
            value = eval(compiled(case[1], "eval"), namespace)
            expected = decode(case[2], None)
            matches = value == expected
        else:
            value = channel.call(["name", case[1]], decode(case[2], None), {})
            expected = decode(case[3], None)
            matches = call_matches(answers, value, expected)
        if type(matches) is not bool:     # plain data compares to a bool; anything else is a Remote's doing
            raise TypeError("a comparison with a program object")
        if matches:
            return "passed", "", ""
        return "failed", "WrongAnswer", f"expected {repr(expected)[:SHOWN]}, got {repr(value)[:SHOWN]}"
    except ProgramDied:
        return "died", "", ""
    except JudgeTimeout:
        raise
    except BaseException as error:
        if type(error) is AssertionError and not hasattr(error, "from_program") and raised_by_test(error):
            return "failed", "AssertionError", str(error)[:SHOWN]
        return "error", getattr(error, "from_program", type(error).__name__), str(error)[:2000]


def raised_by_test(error):
    """True for an AssertionError raised by a test's own assert."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == "<test>"


def judge_run(spec, channel, verdicts):
    """Appends the verdicts of one call run to `verdicts` (as they come: the run's time may end it)."""
    try:
        first = channel.line()
        if first[0] == "compile_error":
            return verdicts.append(["program", "compile_error", *map(str, first[1:3])])
        second = channel.line()
        if second[0] == "program_error":
            return verdicts.append(["program", "program_error", *map(str, second[1:3])])
        if first != ["compiled"] or second[0] != "ready" or len(second) != 2 or not isinstance(second[1], list):
            raise ProtocolError("the program's process did not start as the harness does")
        namespace = namespace_for(spec, second[1], channel)
    except ProgramDied:
        return verdicts.append(["test", 0, "died", "", ""])
    except JudgeTimeout:
        raise
    except BaseException as error:
        return verdicts.append(["program", "program_error", getattr(error, "from_program", type(error).__name__),
                                f"in the tests' setup: {str(error)[:2000]}"])
    for index, case in enumerate(spec["cases"]):
        status, error_type, message = run_case(case, namespace, channel, spec["answers"])
        verdicts.append(["test", index, status, error_type, message])
        if status == "died":
            return


def _time_up(*_):
    raise JudgeTimeout("the run's time is up")


class Judge:
    def __init__(self, config, sock_fd):
        self.sock = socket.socket(fileno=sock_fd)
        not_dumpable()
        paths = interpreter_paths(config["site_packages"])
        self.root = None
        if config["judge_uid"] is not None:
            self.root = isolate(paths)
            os.chroot(self.root)
        os.chdir("/")
        # Test code imports only from the interpreter's read-only directories.
        sys.path[:] = [p for p in sys.path + config["site_packages"]
                       if any(p == q or p.startswith(q + "/") for q in paths)]
        sys.path_importer_cache.clear()
        resource.setrlimit(resource.RLIMIT_AS, (config["memory_limit"],) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        become(config["judge_uid"])
        lock_privileges(config["judge_uid"])
        signal.signal(signal.SIGPROF, _time_up)

    def serve(self):
        messages.send(self.sock, {"tmp": self.root})
        while True:
            spec, fds = messages.receive(self.sock)
            if spec is None:
                break
            random.seed(0)                # the same tests for every program: a test drawing inputs
            channel = Channel(*fds)       # from `random` judges each program on the same ones
            signal.setitimer(signal.ITIMER_PROF, spec["timeout"])
            verdicts = []
            try:
                judge_run(spec, channel, verdicts)
            except JudgeTimeout:          # the verdicts so far are tests 0 .. n-1: n was running
                verdicts.append(["test", len(verdicts), "timeout", "Timeout", "the test's code ran out of time"])
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
                os.close(channel.calls)
                channel.status.close()
            messages.send(self.sock, {"verdicts": verdicts})


def main():
    Judge(json.loads(sys.argv[1]), int(sys.argv[2])).serve()
