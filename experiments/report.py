"""The results page of ``matforge bench science``, written from ``OUT/results.csv`` and the run files.

Reads only what the stages left in ``OUT``: ``plan.json`` (settings), ``corpus.json`` (the corpus
manifest's description), ``sessions.json`` (each command run and its wall time),
``pretrain/<label>.json`` (pre-training wall time and last metrics), ``leakage.json`` (when a
leakage check ran) and ``results.csv`` (:mod:`matforge.experiments.results`). Writes the markdown
page and its learning-curve PNGs (:func:`matforge.finetune.bench_plots.learning_curve`) into
``<page stem>/`` beside the page (``docs/results.md`` -> ``docs/results/``). Every number and every
sentence of "what reproduces" is computed here (:mod:`matforge.experiments.tables`,
:mod:`matforge.experiments.conclusions`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from matforge.experiments.conclusions import (EXP1_CLAIMS, best_strategy_lines, exp2_claims, judge,
                                              ranking_lines)
from matforge.experiments.tables import (CellKey, Stat, cell, fmt_number, fmt_stat, settings_of,
                                         summarize)

STRATEGY_TITLES = {"full": "full fine-tuning", "freeze:1": "emb. + 1 block frozen",
                   "freeze:2": "emb. + 2 blocks frozen", "freeze:3": "emb. + 3 blocks frozen"}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _seconds(s: float | None) -> str:
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _models(stats: dict[CellKey, Stat], experiment: str, order: Sequence[str]) -> list[str]:
    present = {k[3] for k in stats if k[0] == experiment}
    return [m for m in order if m in present] + sorted(present - set(order))


def exp1_section(stats: dict[CellKey, Stat], objectives: Sequence[str], units: dict[str, str],
                 figures: dict[str, str], denoise_equilibrium_only: bool | None = None) -> list[str]:
    """Experiment 1's tables: per task, rows = scratch + objectives, columns = training sizes."""
    lines = ["## Experiment 1: pre-training objectives (Jia et al.)", "",
             "Test MAE, mean ± std over seeds (each seed: mean over folds), full fine-tuning; (%) = change "
             "against scratch at the same training size (negative = lower error). Best per column in bold.", ""]
    if denoise_equilibrium_only is not None and any(o.startswith("denoise") for o in objectives):
        lines += ["Denoising noised " + ("the relaxed corpus frames only." if denoise_equilibrium_only else
                  "every corpus frame, each taken as its own reference (`denoise.equilibrium_only=false`): the "
                  "comparison needs one corpus for every objective, and this corpus of off-equilibrium frames "
                  "has almost no relaxed one, so its denoising targets are not displacements from a minimum "
                  "as in the papers' equilibrium-structure denoising."), ""]
    settings = settings_of(stats, "exp1")
    models = _models(stats, "exp1", ["scratch", *objectives])
    for task in dict.fromkeys(s[1] for s in settings):
        sizes = [s for s in settings if s[1] == task]
        lines += [f"### {task} ({units.get(task, '')})", "",
                  "| pre-training | " + " | ".join(f"n = {s[2]}" for s in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for model in models:
            cells = []
            for setting in sizes:
                stat = cell(stats, setting, model)
                scratch = cell(stats, setting, "scratch")
                text = fmt_stat(stat, None if model == "scratch" or scratch is None else scratch.mean)
                column = [s.mean for m in models if (s := cell(stats, setting, m)) is not None]
                if stat is not None and column and stat.mean == min(column):
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
        if task in figures:
            lines += [f"![{task} learning curve]({figures[task]})", ""]
    return lines


def exp2_section(stats: dict[CellKey, Stat], units: dict[str, str], strategies: Sequence[str]) -> list[str]:
    """Experiment 2's freeze grid: per task and size, rows = backbones, columns = strategies."""
    lines = ["## Experiment 2: what to transfer, and from which targets (Deng, Park & Sy)", "",
             "Test MAE, mean ± std over seeds (each seed: mean over folds); (%) = change against the scratch "
             "baseline of the same architecture (full fine-tuning). Best per table in bold.", ""]
    models = _models(stats, "exp2", ["combined", "attention", "scratch", "scratch-attention"])
    for setting in settings_of(stats, "exp2"):
        lines += [f"### {setting[1]}, n = {setting[2]} ({units.get(setting[1], '')})", "",
                  "| backbone | " + " | ".join(STRATEGY_TITLES.get(s, s) for s in strategies) + " |",
                  "|---|" + "---|" * len(strategies)]
        found = [s.mean for (e, t, z, m, st), s in stats.items() if (e, t, z) == setting and s.mean is not None]
        best = min(found) if found else None
        for model in models:
            scratch_name = "scratch-attention" if model in ("attention", "scratch-attention") else "scratch"
            scratch = cell(stats, setting, scratch_name)
            cells = []
            for strategy in strategies:
                stat = cell(stats, setting, model, strategy)
                text = fmt_stat(stat, None if model.startswith("scratch") or scratch is None else scratch.mean)
                cells.append(f"**{text}**" if stat is not None and stat.mean == best else text)
            if any(c != "—" for c in cells):
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def attention_section(stats: dict[CellKey, Stat], timings: dict[str, dict]) -> list[str]:
    """Attention-CGCNN against CGCNN: parameters, pre-training and fine-tuning time, MAE."""
    settings = settings_of(stats, "exp2")
    rows = []
    for model, label in (("combined", "exp2-combined"), ("attention", "exp2-attention")):
        stats_full = [cell(stats, s, model) for s in settings]
        any_full = next((s for s in stats_full if s is not None), None)
        timing = timings.get(label, {})
        per_step = timing["wall_s"] / timing["steps"] if timing.get("steps") and timing.get("wall_s") else None
        epochs = sum(s.epochs for s in stats_full if s is not None)
        fit = sum(s.fit_wall_s for s in stats_full if s is not None)
        maes = [fmt_stat(s) for s in stats_full]
        rows.append(f"| {model} ({timing.get('arch', '')}) | "
                    f"{fmt_number(any_full.total_parameters) if any_full and any_full.total_parameters else '—'} | "
                    f"{fmt_number(per_step, 3)} s | {fmt_number(fit / epochs if epochs else None, 3)} s | "
                    + " | ".join(maes) + " |")
    return ["## Attention-CGCNN against CGCNN", "",
            "Both pre-trained with the combined objective on the same data and steps. Parameters: the whole "
            "fine-tuned model (backbone + new head); pre-training time per step includes Ray start-up and "
            "validation; fine-tuning time per epoch: fine-tuning wall time over epochs run, full strategy.", "",
            "| model | parameters | pre-training s/step | fine-tuning s/epoch | "
            + " | ".join(f"MAE {s[1]} n={s[2]}" for s in settings) + " |",
            "|---|---|---|---|" + "---|" * len(settings), *rows, ""]


def conclusions_section(stats: dict[CellKey, Stat], singles: Sequence[str]) -> list[str]:
    lines = ["## What reproduces and what does not", "",
             "Generated from the tables: a claim holds in a setting when the gap exceeds the seeds' spread "
             "(sqrt of the summed variances), is reversed when the opposite gap does, and is within noise "
             "otherwise.", ""]
    for claim in (*EXP1_CLAIMS, *exp2_claims(tuple(singles))):
        lines.append(f"- {judge(claim, stats).sentence()}")
    lines += ["", "Ranking of the pre-training objectives (experiment 1, full fine-tuning, lowest MAE first):", ""]
    lines += ranking_lines(stats, "exp1") or ["- no results yet"]
    lines += ["", "Best transfer depth per backbone (experiment 2):", ""]
    lines += best_strategy_lines(stats, "exp2", ["combined", "attention", *[f"single-{p}" for p in singles]]) \
        or ["- no results yet"]
    return lines + [""]


def budget_section(plan: dict, timings: dict[str, dict], rows: Sequence[dict], sessions: list[dict],
                   commands: dict[str, str]) -> list[str]:
    ok = sum(1 for r in rows if r.get("status") == "ok")
    ft_wall = sum(float(r.get("wall_s") or 0.0) for r in rows)
    lines = ["## Budget and commands", "", "Sessions that ran stages (a session stopped from outside records nothing; "
             "the per-run wall times below count every pre-training):", ""]
    for s in (s for s in sessions if s.get("ran")):
        lines.append(f"- `{s.get('command')}` ({s.get('date', '')}, {s.get('machine', '')}): "
                     f"{_seconds(s.get('wall_s'))}, stages run: {s.get('ran', 0)}")
    lines += ["", f"Pre-training: {plan['pretrain']['steps']} steps per exp1 run, "
              f"{plan['exp2_pretrain']['steps']} per exp2 run, {plan['pretrain']['num_workers']} Ray Train workers; "
              f"fine-tuning: {ok} cells finished ({len(rows) - ok} failed), {_seconds(ft_wall)} of cell wall time; "
              f"{plan['finetune']['epochs']} epochs at most, patience {plan['finetune']['patience']}.", "",
              "| run | objective | steps | wall time | last validation | command |", "|---|---|---|---|---|---|"]
    for label, t in sorted(timings.items()):
        metrics = {k: v for k, v in (t.get("metrics") or {}).items() if k.startswith("val/") and isinstance(v, float)}
        shown = ", ".join(f"{k[4:]} {fmt_number(v, 3)}" for k, v in list(metrics.items())[:3]) or "—"
        lines.append(f"| {label} | {t.get('objective')} | {t.get('steps')} | {_seconds(t.get('wall_s'))} | "
                     f"{shown} | `{commands.get(label, '')}` |")
    return lines + [""]


def _provenance_lines(corpus: dict) -> tuple[str, list[str]]:
    """From the corpus' manifest (when it is still where the run found it): the labelling model as a
    suffix of the labels line, and one line per command that made the corpus (generation, then each
    copy, with what a copy dropped)."""
    from matforge.datasets.combine import history, model_labels
    from matforge.datasets.errors import DatasetError
    from matforge.datasets.manifest import Manifest

    try:
        manifest = Manifest.read(corpus["path"]) if corpus.get("path") else None
    except (DatasetError, OSError):
        manifest = None
    if manifest is None:
        return "", [f"- made by `{corpus.get('command') or '?'}` ({corpus.get('created') or '?'})"]
    labelled_by = "".join(f"; computed by {m.get('model', '?')} {m.get('weights_version', '')} "
                          f"({m.get('kind', 'a model')}, {m.get('licence', 'licence not given')})"
                          for m in model_labels(manifest.sources))
    made_by = [f"- {'made by' if k == 0 else 'then'} `{step['command'] or '?'}`"
               + (f": {step['records_dropped']} records dropped ({step['filter']})" if step["records_dropped"] else "")
               for k, step in enumerate(history(manifest))]
    return labelled_by, made_by


def corpus_section(corpus: dict | None, leakage: dict | None) -> list[str]:
    lines = ["## Corpus", ""]
    if not corpus:
        corpus = {}
        lines += ["Not resolved yet.", ""]
    labels = ", ".join(sorted(corpus.get("labels") or {})) or "—"
    labelled_by, made_by = _provenance_lines(corpus) if corpus else ("", [])
    lines += [] if not corpus else [f"- `{corpus.get('path')}`: {corpus.get('records')} structures, {corpus.get('atoms')} atoms, "
              f"{len(corpus.get('elements') or [])} elements ({', '.join(corpus.get('elements') or [])})",
              f"- labels: {labels}{labelled_by}",
              *made_by,
              f"- splits: {', '.join(corpus.get('splits') or []) or 'none (all records train, no validation)'}; "
              f"manifest sha256 {corpus.get('manifest_sha256', '')[:16]}…", ""]
    if leakage and leakage.get("overlap") is not None:
        lines += [f"Leakage check (corpus records against the downstream tasks' structures; "
                  f"{leakage.get('method', '')}): **{leakage['overlap']}** corpus records match a downstream "
                  "structure.", ""]
        if leakage.get("tasks"):
            lines += ["| task | structures | formulas shared with the corpus | corpus records matched | "
                      "its structures matched |", "|---|---:|---:|---:|---:|"]
            lines += [f"| {t['task']} | {t['downstream_structures']} | {t['shared_formulas']} | "
                      f"{t['corpus_records_matched']} | {t['downstream_matched']} |" for t in leakage["tasks"]]
            lines += [""]
        for missing in leakage.get("unavailable") or []:
            lines += [f"- not checked: {missing['task']} ({missing['reason']})"]
        lines += [""] if leakage.get("unavailable") else []
    else:
        lines += ["Leakage check: not run (no corpus yet).", ""]
    return lines


def write_figures(rows: Sequence[dict], figures_dir: Path, experiment: str, units: dict[str, str]) -> dict[str, Path]:
    """Learning curves (MAE against training size, full fine-tuning) of tasks with several sizes."""
    from matforge.finetune.bench_plots import learning_curve

    mine = [{**r, "backbone": r["model"]} for r in rows if r["experiment"] == experiment and r["strategy"] == "full"]
    tasks = [t for t in dict.fromkeys(r["task"] for r in mine)
             if len({str(r.get("size")) for r in mine if r["task"] == t}) > 1]
    models = list(dict.fromkeys(r["model"] for r in mine))
    bench = {"tasks": {t: {"kind": "regression", "units": units.get(t, "")} for t in tasks},
             "backbones": [{"label": m, "backbone": "none" if m.startswith("scratch") else m,
                            "arch": m if m.startswith("scratch") else None} for m in models],
             "strategies": ["full"]}
    written = {}
    for task in tasks:
        path = learning_curve(figures_dir / experiment, task, mine, bench)
        if path is not None:
            written[task] = path
    return written


def grids_progress(out: Path, plan: dict) -> tuple[int, int]:
    """(fine-tuning grids complete, grids planned): one grid per experiment × task × seed."""
    from matforge.experiments.finetuning import COMPLETE

    planned = 0
    for experiment in ("exp1", "exp2"):
        settings = plan.get(experiment) or {}
        if experiment == "exp2" and not settings.get("enabled", True):
            continue
        planned += len(settings.get("tasks") or []) * len(settings.get("seeds") or [])
    done = len(list((out / "finetune").glob(f"*/*/seed*/{COMPLETE}")))
    return done, planned


def results_markdown(out: Path, rows: Sequence[dict], figures: dict[str, str]) -> str:
    """The whole page (see the module docstring)."""
    record = _read_json(out / "plan.json") or {}
    plan = record.get("plan", {})
    timings = {p.stem: json.loads(p.read_text()) for p in sorted((out / "pretrain").glob("*.json"))}
    commands = _read_json(out / "commands.json") or {}
    sessions = _read_json(out / "sessions.json") or []
    stats = summarize(rows)
    units = {r["task"]: r.get("units") or "" for r in rows}
    lines = ["# Results: the seeds' experiments on this machine", "",
             "Written by `matforge bench science` from `results.csv`; do not edit by hand. "
             f"Preset `{plan.get('preset', '?')}`.", ""]
    done, planned = grids_progress(out, plan)
    if done < planned:
        lines += [f"**Incomplete: {done} of {planned} fine-tuning grids (task × seed) have finished.** The tables "
                  "and judgements below cover only the cells done so far; a setting with fewer seeds than "
                  "planned has a smaller (or no) spread. Re-run the same command to continue.", ""]
    lines += conclusions_section(stats, plan.get("exp2", {}).get("singles", []))
    lines += exp1_section(stats, plan.get("exp1", {}).get("objectives", []), units, figures,
                          plan.get("exp1", {}).get("denoise_equilibrium_only"))
    lines += exp2_section(stats, units, plan.get("exp2", {}).get("strategies", ["full"]))
    if settings_of(stats, "exp2"):
        lines += attention_section(stats, timings)
    lines += corpus_section(_read_json(out / "corpus.json"), _read_json(out / "leakage.json"))
    if plan:
        lines += budget_section(plan, timings, rows, sessions, commands)
    return "\n".join(lines).rstrip() + "\n"


def write_results_page(out: Path, page: Path) -> Path:
    """Gather ``OUT/results.csv``, draw the figures beside ``page`` and write ``page``."""
    from matforge.experiments.results import gather, write_science_csv
    from matforge.finetune.bench_results import write_text_atomic

    rows = gather(out)
    write_science_csv(out / "results.csv", rows)
    figures_dir = page.parent / page.stem
    units = {r["task"]: r.get("units") or "" for r in rows}
    paths = write_figures(rows, figures_dir, "exp1", units)
    figures = {task: os.path.relpath(path, page.parent) for task, path in paths.items()}
    write_text_atomic(page, results_markdown(out, rows, figures))
    return page
