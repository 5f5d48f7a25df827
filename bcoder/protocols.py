"""The paper's evaluation protocols, as pure functions of scored candidates (docs/method.md#ranking-and-the-protocols).

A candidate is a dict with "passed" (all of its problem's tests passed), "return" (R~ under the
reward model) and, for "filtered", "example_passed" (the example tests passed; True where a
problem has none). Per problem:

    unranked  pass@k by the unbiased estimator from the n samples of a problem
    ranked    the CodeT protocol: m samples, the k with the highest R~; solved if one passes
    filtered  drop the samples that fail the example tests, then rank the rest; none left = unsolved
    oracle    filtered by all the tests: solved if any of the m passes (an upper bound)

With m < n (the pool) a protocol's value is its exact expectation over the pool's m-subsets drawn
uniformly without replacement (as pass@k's estimator is over k-subsets), not one random draw.
"""
import math

PROTOCOLS = ("unranked", "ranked", "filtered", "oracle")
OUTCOMES = ("passed", "failed", "runtime_error", "compile_error")


def pass_at_k(n, c, k):
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021)."""
    if not (isinstance(k, int) and k >= 1 and 0 <= c <= n):
        raise ValueError(f"pass@k needs k >= 1 and 0 <= c <= n, got n={n}, c={c}, k={k!r}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def top_k_solved(scores, passed, k, m=None, keep=None):
    """Probability that a problem is solved when m of its n candidates are drawn uniformly without
    replacement, the drawn ones with keep True are ranked by score (highest first; ties by position)
    and the top k are submitted: solved if any of them passed. m = n (default) is the plain
    deterministic protocol; no kept candidate drawn counts as unsolved.

    Exact: the problem stays unsolved iff the k-th kept candidate drawn sits at some rank i with the
    k - 1 drawn above it all failing, or fewer than k kept candidates are drawn, all failing.
    """
    n = len(scores)
    m = n if m is None else m
    if len(passed) != n or (keep is not None and len(keep) != n):
        raise ValueError(f"scores, passed and keep must have one entry per candidate ({n})")
    if not 1 <= k <= m <= n:
        raise ValueError(f"need 1 <= k <= m <= n, got k={k}, m={m}, n={n}")
    kept = sorted((i for i in range(n) if keep is None or keep[i]), key=lambda i: (-scores[i], i))
    unsolved, failing = 0, 0
    for rank, i in enumerate(kept, 1):
        if not passed[i]:
            unsolved += math.comb(failing, k - 1) * math.comb(n - rank, m - k)
            failing += 1
    others = n - len(kept)
    unsolved += sum(math.comb(failing, j) * math.comb(others, m - j) for j in range(k))
    return 1.0 - unsolved / math.comb(n, m)


def protocol_pass_at_k(protocol, candidates, k, m=None):
    """pass@k of one problem under a protocol; candidates are dicts with "return" (R~), "passed"
    (all tests) and, for "filtered", "example_passed". None where k > m (or k > n, unranked)."""
    n = len(candidates)
    m = n if m is None else min(m, n)
    passed = [c["passed"] for c in candidates]
    if protocol == "unranked":
        return pass_at_k(n, sum(passed), k) if k <= n else None
    if k > m:
        return None
    scores = [c["return"] for c in candidates]
    if protocol not in ("ranked", "filtered", "oracle"):
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    keep = (None if protocol == "ranked" else passed if protocol == "oracle"
            else [c["example_passed"] for c in candidates])
    return top_k_solved(scores, passed, k, m, keep)


def protocol_table(groups, protocols=PROTOCOLS, ks=(1, 5), m=None):
    """{protocol: {"pass@k": mean over problems}} for groups, one candidate list per problem. m applies to
    the k it can hold (k <= m); a larger k ranks the whole pool, as the paper's Table 1 takes pass@1 and @5
    from m = 256 and pass@1000 from all 2500. A protocol's "pass@k" is left out where some problem has fewer
    than k candidates."""
    table = {}
    for protocol in protocols:
        row = {}
        for k in ks:
            values = [protocol_pass_at_k(protocol, group, k, m if m and k <= m else None) for group in groups]
            if groups and None not in values:
                row[f"pass@{k}"] = sum(values) / len(values)
        table[protocol] = row
    return table


def outcome_returns(records):
    """{outcome: {"mean", "std", "count"}} of R~ over records (outcomes on all tests); mean None if none."""
    summary = {}
    for outcome in OUTCOMES:
        values = [r["return"] for r in records if r["outcome"] == outcome]
        mean = sum(values) / len(values) if values else None
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if values else None
        summary[outcome] = {"mean": mean, "std": std, "count": len(values)}
    return summary


def protocol_report(records, problems, protocols=PROTOCOLS, ks=(1, 5), m=None):
    """eval.json's tables for the records of one policy: {protocol: {"pass@k"}} overall and, where the
    problems have a difficulty (APPS), "by_difficulty". filtered reads the "filter" pool when the records
    have one (the paper's Table 2: 1000 samples at temperature 0.4); oracle always ranks the main pool,
    as the paper's Table 9 filters Table 1's candidates."""
    by_task = {}
    for r in records:
        by_task.setdefault((r["pool"], r["task_id"]), []).append(r)
    has_filter_pool = any(pool == "filter" for pool, _ in by_task)

    def table(subset):
        tasks = [p.task_id for p in subset if ("main", p.task_id) in by_task]
        main = [by_task[("main", t)] for t in tasks]
        result = protocol_table(main, [p for p in protocols if p in ("unranked", "ranked", "oracle")], ks, m)
        if "filtered" in protocols:
            if has_filter_pool:
                result.update(protocol_table([by_task[("filter", t)] for t in tasks], ["filtered"], ks))
            else:
                result.update(protocol_table(main, ["filtered"], ks, m))
        result["problems"] = len(tasks)
        return result

    report = table(problems)
    difficulties = sorted({getattr(p, "difficulty", "") for p in problems} - {""})
    if difficulties:
        report["by_difficulty"] = {d: table([p for p in problems if getattr(p, "difficulty", "") == d])
                                   for d in difficulties}
    return report
