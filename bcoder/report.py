"""A report of a trained run that a reader can look at: tables and the paper's figures.

    python -m bcoder.report RUN_DIR [--ablation NAME=RUN_DIR ...]

Writes RUN_DIR/report.md with
  * the pass@k table: theta_ckpt and theta x protocols (greedy, unranked, ranked, filtered, oracle) x k,
    with n, m and the temperature (from eval.json; per difficulty where the data has one);
  * the mean R~ per true outcome (on all tests) and whether it is ordered passed > failed >
    runtime error > compile error (the paper's Figure 3);
and the figures
  * returns.png: the density of R~ per outcome (scipy.stats.gaussian_kde; Figure 3),
  * ranked_vs_m.png: ranked pass@k against m (Figure 5; m in 2^4..2^8 where the pool holds that many,
    else the powers of two up to the pool size), each m the exact average over the pool's m-subsets,
  * curves.png: the training curves of sft, phi and theta (Figure 1), with the ablation runs overlaid.
`bcoder.train` writes curves.png after each training stage and the whole report after eval.
"""
import json
import math
import sys
from pathlib import Path

from bcoder.cli import EXPECTED_ERRORS, ArgumentParser, exit_with
from bcoder.data.loading import split_description
from bcoder.files import write_atomic, write_atomic_with
from bcoder.protocols import OUTCOMES, PROTOCOLS, protocol_table
from bcoder.run import (
    CONFIG_FILE,
    CURVES_FILE,
    EVAL_FILE,
    EVAL_SAMPLES_FILE,
    METRICS_FILE,
    REPORT_FILE,
    STAGES,
    read_records,
    read_run_config,
)

# The policies and rankers of eval.json, as the tables name them.
POLICY_NAMES = {"ckpt": "θ_ckpt", "theta": "θ (B-Coder)", "control": "θ, CE only (control)"}
RANKER_NAMES = {"phi": "φ R~ (no θ-stage)", "logprob": "θ_ckpt log-prob"}

# How answers were compared; an eval.json written before the policies existed used APPS's fallbacks.
ANSWER_POLICY_TEXT = {"strict": "answers compared strictly, as for rewards",
                      "apps": "answers compared with the official APPS checker's fallbacks, which accept some wrong "
                              "answers"}
OUTCOME_LABELS = {"passed": "passed", "failed": "failed", "runtime_error": "runtime error",
                  "compile_error": "compile error"}
OUTCOME_COLORS = {"passed": "tab:green", "failed": "tab:orange", "runtime_error": "tab:red",
                  "compile_error": "tab:gray"}
# (stage, metric, dashed: the same metric of another stage or a second metric, panel title): the panels of
# curves.png; a panel is drawn only when some run logged its metric
CURVES = [("sft", "ce_loss", None, "sft: cross-entropy"),
          ("phi", "td_loss", None, "phi: L_V (TD loss)"),
          ("theta", "td_loss", None, "theta: L_Q (TD loss)"),
          ("theta", "adv_loss", None, "theta: L_adv"),
          ("theta", "ce_loss", None, "theta: L_ce"),
          ("theta", "mean_v_gt", ("theta", "mean_v_generated"), "theta: mean V (gt solid, generated dashed)"),
          ("theta", "train_pass@1", ("phi", "train_pass@1"),
           "greedy pass@1, training problems (theta; phi dashed)")]


def read_log(path):
    """The records of a JSON-lines file the run wrote (a line a kill left torn skipped); none if it does
    not exist."""
    return read_records(path) if Path(path).exists() else []


def read_metrics(run_dir):
    """{stage: [records with a step]} of a run's metrics.jsonl, in step order."""
    stages = {}
    for record in read_log(Path(run_dir) / METRICS_FILE):
        if "step" in record and "stage" in record:
            stages.setdefault(record["stage"], []).append(record)
    return {stage: sorted(rows, key=lambda r: r["step"]) for stage, rows in stages.items()}


def plot_curves(runs, path):
    """Training curves of one or more runs ({label: run_dir}) into one PNG, one panel per metric some run
    logged; returns the path, or None when no run logged any."""
    # matplotlib and scipy take seconds to import and only drawing needs them: --help answers at once
    from matplotlib import rcParams
    from matplotlib.figure import Figure  # drawn without pyplot: no backend, no global figure state

    metrics = {label: read_metrics(run_dir) for label, run_dir in runs.items()}

    def series(label, stage, name):
        return curve_series(metrics[label], stage, name)

    panels = curve_panels(metrics.values())
    if not panels:
        return None
    rows = math.ceil(len(panels) / 3)
    fig = Figure(figsize=(14, 3.75 * rows))
    axes = list(fig.subplots(rows, 3, squeeze=False).flat)
    colors = rcParams["axes.prop_cycle"].by_key()["color"] * 4
    for ax, (stage, name, dashed, title) in zip(axes, panels):
        values = []
        for label, color in zip(runs, colors):
            for (steps, ys), style in ((series(label, stage, name), "-"),
                                       (series(label, *dashed) if dashed else ([], []), "--")):
                if steps:
                    ax.plot(steps, ys, color=color, linestyle=style, marker="." if len(steps) < 3 else None,
                            label=label if style == "-" else None)
                    values += ys
        if name == "train_pass@1":
            ax.set_ylim(-0.02, 1.02)
        elif values and max(values) == min(values):  # a constant: a visible band around it, not a degenerate axis
            ax.set_ylim(values[0] - 0.5 - abs(values[0]) * 0.1, values[0] + 0.5 + abs(values[0]) * 0.1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Training curves" + (" (with ablations)" if len(runs) > 1 else ""))
    fig.tight_layout()
    write_atomic_with(path, lambda temporary: fig.savefig(temporary, dpi=100))
    return Path(path)


def curve_series(metrics, stage, name):
    """(steps, values) of one metric of a stage, from read_metrics' records."""
    rows = [r for r in metrics.get(stage, []) if isinstance(r.get(name), (int, float))]
    return [r["step"] for r in rows], [r[name] for r in rows]


def curve_panels(runs_metrics):
    """The CURVES panels some run logged the metric of (no empty panels)."""
    return [panel for panel in CURVES if any(curve_series(metrics, *panel[:2])[0] for metrics in runs_metrics)]


def write_curves(run_dir, ablations=None):
    """RUN_DIR/curves.png: this run's curves, and those of the ablation runs ({label: dir}) if given."""
    run_dir = Path(run_dir)
    return plot_curves({run_dir.name or "run": run_dir, **(ablations or {})}, run_dir / CURVES_FILE)


def plot_return_density(records, path):
    """Figure 3: the density of R~ per true outcome, one panel per policy and one for all."""
    import numpy as np
    from matplotlib.figure import Figure
    from scipy.stats import gaussian_kde

    policies = list(dict.fromkeys(r["policy"] for r in records))
    groups = [("all samples", records)] + ([(p, [r for r in records if r["policy"] == p]) for p in policies]
                                           if len(policies) > 1 else [])
    fig = Figure(figsize=(5 * len(groups), 3.8))
    axes = fig.subplots(1, len(groups), squeeze=False)
    returns = [r["return"] for r in records]
    low, high = (min(returns), max(returns)) if returns else (-1.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    grid = np.linspace(low - pad, high + pad, 400)
    for ax, (title, rows) in zip(axes[0], groups):
        for outcome in OUTCOMES:
            values = np.array([r["return"] for r in rows if r["outcome"] == outcome])
            label = f"{OUTCOME_LABELS[outcome]} (n={len(values)})"
            if len(values) >= 2 and np.ptp(values) > 0:
                ax.plot(grid, gaussian_kde(values)(grid), color=OUTCOME_COLORS[outcome], label=label)
            elif len(values):  # a point mass: no density to estimate
                ax.axvline(values[0], color=OUTCOME_COLORS[outcome], linestyle=":", label=label + ", all equal")
        ax.set_title(f"R~ by outcome: {title}", fontsize=10)
        ax.set_xlabel("R~(W) = sum_t r~(s_t, a_t)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomic_with(path, lambda temporary: fig.savefig(temporary, dpi=100))
    return Path(path)


def ms_for(pool):
    """The m of Figure 5: 2^4..2^8 within the pool, else the powers of two up to it (and the pool)."""
    paper = [m for m in (16, 32, 64, 128, 256) if m <= pool]
    if len(paper) >= 2:
        return paper
    ms = [2 ** i for i in range(int(math.log2(pool)) + 1)] if pool >= 1 else []
    return ms + ([pool] if pool not in ms else [])


def ranked_by_m(records, ks=(1, 5)):
    """{policy: {m: {"ranked": {...}, "unranked": {...}}}} on the main pool (see ms_for)."""
    curves = {}
    for policy in dict.fromkeys(r["policy"] for r in records):
        groups = {}
        for r in records:
            if r["policy"] == policy and r.get("pool", "main") == "main":
                groups.setdefault(r["task_id"], []).append({**r, "passed": r["outcome"] == "passed"})
        pool = min(len(g) for g in groups.values())
        curves[policy] = {m: protocol_table(list(groups.values()), ("ranked",), ks, m) for m in ms_for(pool)}
        unranked = protocol_table(list(groups.values()), ("unranked",), ks)["unranked"]
        for m in curves[policy]:
            curves[policy][m]["unranked"] = unranked
    return curves


def plot_ranked_vs_m(curves, path, ks=(1, 5)):
    """Figure 5: ranked pass@k against m (log2 axis), unranked pass@k dotted for reference."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-o", "-s", "-^", "-v"]
    for c, (policy, by_m) in enumerate(curves.items()):
        ms = sorted(by_m)
        for s, k in enumerate(ks):
            ys = [by_m[m]["ranked"].get(f"pass@{k}") for m in ms]
            points = [(m, y) for m, y in zip(ms, ys) if y is not None]
            if points:
                ax.plot(*zip(*points), styles[s % len(styles)], color=colors[c % len(colors)],
                        label=f"{policy} ranked pass@{k}")
            unranked = by_m[ms[0]]["unranked"].get(f"pass@{k}") if ms else None
            if unranked is not None:
                ax.axhline(unranked, color=colors[c % len(colors)], linestyle=":", alpha=0.6 + 0.2 * s)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("m (candidates ranked by R~)")
    ax.set_ylabel("pass@k (dotted: unranked)")
    ax.set_title("Ranked pass@k against m", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic_with(path, lambda temporary: fig.savefig(temporary, dpi=100))
    return Path(path)


def _fmt(x, percent=True):
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if percent else f"{x:.2f}"


def pass_table(report, ks):
    policies = report.get("policies", [p for p in ("ckpt", "theta") if p in report])
    settings = report.get("settings", {})
    lines = ["| model | protocol | " + " | ".join(f"pass@{k}" for k in ks) + " | n | m | temperature |",
             "|---|---|" + "---|" * len(ks) + "---|---|---|"]
    filt = settings.get("filter")
    for policy in policies:
        name = POLICY_NAMES.get(policy, policy)
        if "greedy" in report[policy]:
            lines.append(f"| {name} | greedy | {_fmt(report[policy]['greedy'].get('pass@1'))} |"
                         + " – |" * (len(ks) - 1) + " 1 | 1 | 0 |")
        for protocol in PROTOCOLS:
            if protocol not in report[policy]:
                continue
            n, m, t = settings.get("n"), settings.get("m"), settings.get("temperature")
            if protocol == "unranked":
                m = "–"
            if filt and protocol in ("filtered", "oracle"):
                n, m, t = filt["n"], filt["m"], filt["temperature"]
            cells = " | ".join(_fmt(report[policy][protocol].get(f"pass@{k}")) for k in ks)
            lines.append(f"| {name} | {protocol}{' by θ R~' if protocol in ('ranked', 'filtered') else ''} | "
                         f"{cells} | {n} | {m} | {t} |")
            for ranker, table in report[policy].get("ranked_by", {}).items():
                if protocol in table:
                    cells = " | ".join(_fmt(table[protocol].get(f"pass@{k}")) for k in ks)
                    lines.append(f"| {name} | {protocol} by {RANKER_NAMES[ranker]} | {cells} | {n} | {m} | {t} |")
    return lines


def difficulty_tables(report, ks):
    lines = []
    for policy in report.get("policies", []):
        by = report[policy].get("by_difficulty")
        if not by:
            continue
        lines += ["", f"**{policy}, by difficulty** (pass@k, %)", "",
                  "| difficulty | problems | " + " | ".join(f"{p} @{k}" for p in PROTOCOLS for k in ks) + " |",
                  "|---|---|" + "---|" * (len(PROTOCOLS) * len(ks))]
        for difficulty, table in by.items():
            cells = " | ".join(_fmt(table.get(p, {}).get(f"pass@{k}")) for p in PROTOCOLS for k in ks)
            lines.append(f"| {difficulty} | {table.get('problems')} | {cells} |")
    return lines


def outcome_table(report):
    returns = report.get("return_by_outcome", {})
    lines = ["| programs | " + " | ".join(OUTCOME_LABELS[o] for o in OUTCOMES) + " | ordered as the paper? |",
             "|---|" + "---|" * len(OUTCOMES) + "---|"]
    for group, stats in returns.items():
        cells = " | ".join(f"{_fmt(stats[o]['mean'], False)} (n={stats[o]['count']})" for o in OUTCOMES)
        lines.append(f"| {group} | {cells} | {ordering_verdict(stats)} |")
    return lines


def ordering_verdict(stats):
    """Whether mean R~ is ordered passed > failed > runtime error > compile error, over the outcomes that
    some program had (and which had none)."""
    seen = [(o, stats[o]["mean"]) for o in OUTCOMES if stats[o]["mean"] is not None]
    if len(seen) < 2:
        return "too few outcomes seen"
    broken = [f"{OUTCOME_LABELS[a]} ≤ {OUTCOME_LABELS[b]}" for (a, x), (b, y) in zip(seen, seen[1:]) if not x > y]
    verdict = "yes" if not broken else "no: " + ", ".join(broken)
    missing = [OUTCOME_LABELS[o] for o in OUTCOMES if stats[o]["mean"] is None]
    return verdict + (f" (only of {', '.join(OUTCOME_LABELS[o] for o, _ in seen)}: no {', '.join(missing)} programs)"
                      if missing else "")


def training_summary(run_dir):
    metrics = read_metrics(run_dir)
    walls = {r["stage"]: r["wall_seconds"] for r in read_log(Path(run_dir) / METRICS_FILE) if "wall_seconds" in r}
    lines = ["| stage | steps | last loss | last td_loss | last adv_loss | last ce_loss | wall s |",
             "|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        rows = metrics.get(stage, [])
        last = next((r for r in reversed(rows) if "loss" in r), rows[-1] if rows else {})
        cell = lambda name: f"{last[name]:.4g}" if isinstance(last.get(name), (int, float)) else "–"
        if rows or stage in walls:
            lines.append(f"| {stage} | {last.get('step', '–')} | {cell('loss')} | {cell('td_loss')} | "
                         f"{cell('adv_loss')} | {cell('ce_loss')} | {walls.get(stage, float('nan')):.0f} |")
    return lines


def run_description(run_dir, config):
    """What the run is: its data and split, theta_ckpt, and the stages as they ran."""
    metrics = read_metrics(run_dir)
    ran = [r["stage"] for r in read_log(Path(run_dir) / METRICS_FILE) if "wall_seconds" in r]
    model, loss, data = config.model, config.loss, config.data
    done = []
    for stage in STAGES:
        if stage not in ran:
            continue
        last = max((r["step"] for r in metrics.get(stage, []) if "loss" in r), default=None)
        done.append({"sft": f"sft ({last} steps)", "phi": f"phi ({last} steps)", "theta": f"theta ({last} steps)",
                     "control": f"control ({last} steps, L_ce alone on the logits)",
                     "sample": f"sample ({config.sample.samples_per_problem} programs per training problem)"
                     }.get(stage, stage))
    ckpt = (f"`{model.checkpoint}` (given)" if model.checkpoint
            else f"trained here from scratch (sft, {config.sft.steps} steps)")
    return [f"Problems: {split_description(data)}. θ_ckpt: {ckpt}. Stages run: {', '.join(done) or 'none'}. "
            f"Operator {loss.operator}, γ={loss.gamma}, α={loss.alpha}, β_adv={loss.beta_adv}, "
            f"β_ce={loss.beta_ce}; programs up to {data.max_program_tokens} tokens (generated: "
            f"{config.sample.max_new_tokens}), prompts up to {data.max_prompt_tokens}.", ""]


def length_table(run_dir, report):
    """Prompts cut to max_prompt_tokens and programs cut or stopped at the cap, per stage."""
    metrics = read_log(Path(run_dir) / METRICS_FILE)
    lines = ["| stage | prompts cut | programs cut at the cap |", "|---|---|---|"]
    for stage in ("sft", "sample", "phi", "theta"):
        rows = [r for r in metrics if r.get("stage") == stage]
        prompts = next((r["prompts_cut"] for r in rows if "prompts_cut" in r), None)
        if stage == "sample":
            last = next((r for r in reversed(rows) if "programs_capped" in r), None)
            programs = f"{last['programs_capped']} of {last['programs']} generated" if last else None
        else:
            batches = [r for r in rows if "programs_cut" in r]
            programs = (f"{sum(r['programs_cut'] for r in batches)} in {len(batches)} logged batches"
                        if batches else None)
        if prompts is not None or programs is not None:
            lines.append(f"| {stage} | {'–' if prompts is None else prompts} | {programs or '–'} |")
    if report is not None:
        settings = report.get("settings", {})
        capped = settings.get("programs_capped", {})
        cells = "; ".join(f"{policy}: {c['capped']} of {c['programs']} generated" for policy, c in capped.items())
        lines.append(f"| eval | {settings.get('prompts_cut', '–')} | {cells or '–'} |")
    return lines if len(lines) > 2 else []


def write_report(run_dir, ablations=None):
    """RUN_DIR/report.md and its figures (see the module docstring); returns the report's path."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    report = None
    if (run_dir / EVAL_FILE).exists():
        try:
            report = json.loads((run_dir / EVAL_FILE).read_text())
        except ValueError as error:
            raise ValueError(f"{run_dir / EVAL_FILE}: not valid JSON ({error}); rerun the eval stage") from None
    records = [r for r in read_log(run_dir / EVAL_SAMPLES_FILE) if "return" in r]
    ks = tuple(config.eval.ks)
    curves = write_curves(run_dir, ablations)
    lines = [f"# B-Coder run report: `{run_dir}`", "", *run_description(run_dir, config)]
    if report is None:
        lines += ["No eval.json: run the eval stage (`python -m bcoder.train --out RUN_DIR --resume --stage eval`)."]
    else:
        settings = report.get("settings", {})
        lines += ["## pass@k (%) on the held-out problems", "",
                  f"Each model samples n={settings.get('n')} programs per problem (temperature "
                  f"{settings.get('temperature')}, top-p {settings.get('top_p')}); every program is scored by "
                  f"R~ under θ's Q-model (also θ_ckpt's samples) and run against all its problem's tests "
                  f"(passed: every one; "
                  f"{ANSWER_POLICY_TEXT[settings.get('answers', 'apps')]}). "
                  "unranked: the unbiased estimator from n; ranked: top k of m by R~; filtered: the same after "
                  "dropping programs that fail the example tests (none left = unsolved); oracle: filtered by all the "
                  "tests (pass@m, the upper bound). With m < n, the exact mean over the pool's m-subsets. "
                  "The controls: θ, CE only, is trained as θ is (same start, steps and batches) but only L_ce moves "
                  "its policy; the same pools ranked by the free baselines, φ's R~ (no θ-stage) and θ_ckpt's mean "
                  "token log-probability. Every model samples with the same random numbers per problem chunk. A "
                  "gain of θ counts only where it beats these by more than the noise over seeds "
                  "(experiments/theta_study.py).",
                  "", *pass_table(report, ks), *difficulty_tables(report, ks), "",
                  "## Mean R~ per true outcome (all tests)", "", *outcome_table(report), ""]
    if records:
        plot_return_density(records, run_dir / "returns.png")
        curves = ranked_by_m(records, ks)
        plot_ranked_vs_m(curves, run_dir / "ranked_vs_m.png", ks)
        rows = ["| model | m | " + " | ".join(f"ranked pass@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
        for policy, by_m in curves.items():
            for m, table in sorted(by_m.items()):
                rows.append(f"| {policy} | {m} | " + " | ".join(_fmt(table['ranked'].get(f'pass@{k}')) for k in ks)
                            + " |")
        lines += ["## Figures", "", "Density of R~ per outcome (paper Figure 3):", "", "![R~ by outcome](returns.png)",
                  "", "Ranked pass@k against m (paper Figure 5; dotted: unranked):", "",
                  "![ranked vs m](ranked_vs_m.png)", "", *rows, ""]
    if curves:
        lines += ["Training curves (paper Figure 1: greedy pass@1 on a fixed subset of the training problems, during "
                  "theta, and of theta_ckpt during phi, dashed"
                  + (", with " + ", ".join(ablations) if ablations else "") + "):",
                  "", "![training curves](curves.png)", ""]
    lengths = length_table(run_dir, report)
    lines += ["## Training", "", *training_summary(run_dir), "",
              *(["Lengths: prompts cut (their question) to fit, programs cut at the cap (training) or stopped "
                 "there without ending (generated):", "", *lengths, ""] if lengths else [])]
    path = run_dir / REPORT_FILE
    write_atomic(path, "\n".join(lines))
    return path


def after_stage(run_dir, stage):
    """bcoder.train's hook: curves.png after sft/phi/theta, the report after eval. A figure that
    cannot be drawn warns; it never fails a run whose models are already saved."""
    try:
        if stage in ("sft", "phi", "theta"):
            write_curves(run_dir)
        elif stage == "eval":
            print(f"report: {write_report(run_dir)}", file=sys.stderr)
    except Exception as error:  # noqa: BLE001 - plotting must not lose a trained run
        print(f"bcoder.report: warning: no figures after {stage}: {type(error).__name__}: {error}", file=sys.stderr)


def main(argv=None):
    parser = ArgumentParser(prog="bcoder.report", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run directory")
    parser.add_argument("--ablation", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="another run's training curves to overlay (Figure 1); repeatable")
    args = parser.parse_args(argv)
    ablations = {}
    for item in args.ablation:
        name, _, directory = item.rpartition("=")
        ablations[name or Path(directory).name] = Path(directory)
    missing = [str(d) for d in [Path(args.run), *ablations.values()] if not (d / CONFIG_FILE).is_file()]
    if missing:
        exit_with("bcoder.report", f"not a run directory (no {CONFIG_FILE}): {', '.join(missing)}")
    try:
        print(write_report(args.run, ablations))
    except EXPECTED_ERRORS as error:
        exit_with("bcoder.report", error)


if __name__ == "__main__":
    main()
