"""Fails when pytest skipped a test for a reason not on the allow-list, so a suite cannot skip silently.

    python -m pytest -rs --junitxml=build/pytest.xml ...
    python .ci/check_skips.py build/pytest.xml .ci/expected_skips.txt

The allow-list has one skip reason per line, a glob (fnmatch) matched against the whole reason as
`pytest -rs` prints it; blank lines and # comments are ignored. Prints every skip reason with its
count and verdict, the tests skipped for a reason not on the list, and exits 1 if there are any
(or if the report is missing). Expected failures (xfail) are not skips and are not checked.
"""
import ast
import fnmatch
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def read_allowed(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def skips(report):
    """(test id, reason) of every skip in a pytest junit-xml report."""
    for case in ET.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None or skipped.get("type") == "pytest.xfail":
            continue
        test = "::".join(filter(None, (case.get("classname"), case.get("name"))))
        reason = skipped.get("message", "")
        if reason == "collection skipped":  # a whole module: the text is repr((path, line, "Skipped: reason"))
            try:
                path, _, reason = ast.literal_eval(skipped.text or "")
                test = path
            except (ValueError, SyntaxError, TypeError):
                reason = skipped.text or reason
        yield test, reason.removeprefix("Skipped: ")


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} JUNIT_XML ALLOWED_SKIPS")
    report, allowed_path = argv
    allowed = read_allowed(allowed_path)
    try:
        found = list(skips(report))
    except (OSError, ET.ParseError) as error:
        print(f"check_skips: cannot read the pytest report {report}: {error}")
        return 1
    by_reason = defaultdict(list)
    for test, reason in found:
        by_reason[reason].append(test)
    unexpected = {}
    print(f"skips ({len(found)}), checked against {allowed_path}:")
    for reason, tests in sorted(by_reason.items()):
        ok = any(fnmatch.fnmatchcase(reason, pattern) for pattern in allowed)
        print(f"  {len(tests):4}  {'allowed   ' if ok else 'UNEXPECTED'}  {reason}")
        if not ok:
            unexpected[reason] = tests
    unused = [p for p in allowed if not any(fnmatch.fnmatchcase(r, p) for r in by_reason)]
    if unused:
        print("allowed but not seen in this run: " + "; ".join(unused))
    if unexpected:
        print(f"check_skips: FAILED: {sum(map(len, unexpected.values()))} tests skipped for a reason not in "
              f"{allowed_path} (add the reason there if the skip is expected in CI):")
        for reason, tests in unexpected.items():
            print(f"  {reason}")
            for test in tests[:10]:
                print(f"      {test}")
            if len(tests) > 10:
                print(f"      ... and {len(tests) - 10} more")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
