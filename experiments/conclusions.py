"""The "what reproduces and what does not" section: sentences decided by comparing the numbers.

A :class:`Claim` of a seed paper says that model ``better`` has a lower test MAE than the best
(lowest) of the models ``worse``. In each setting (task × training size) where all of them have
results it is judged from the table cells (:mod:`matforge.experiments.tables`):

* *holds* when ``MAE_worse − MAE_better`` exceeds the noise ``sqrt(std_better² + std_worse²)``
  (the seeds' spread; 0 with one seed),
* *fails* when ``MAE_better − MAE_worse`` exceeds the noise,
* *within noise* otherwise.

The verdict over settings: "reproduces" when it holds in more settings than it fails and in at
least half of them, "does not reproduce" when it fails at least as often as it holds, else
"partly reproduces"; no setting with results: "not measured". ``strategy="best"`` compares each
model's best strategy (the freeze grid). No sentence is written by hand: flip the numbers and the
words flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from matforge.experiments.tables import CellKey, Setting, Stat, cell, fmt_number, settings_of


@dataclass(frozen=True)
class Claim:
    experiment: str
    text: str
    source: str
    better: str
    worse: tuple[str, ...]
    strategy: str = "full"


EXP1_CLAIMS = (
    Claim("exp1", "energy + forces + stress pre-training (derivatives) beats training from scratch", "Jia et al.",
          "efs", ("scratch",)),
    Claim("exp1", "energy + forces + stress pre-training beats both denoising objectives", "Jia et al.",
          "efs", ("denoise_derivative", "denoise_head")),
    Claim("exp1", "energy + forces + stress is the best pre-training objective", "Jia et al.",
          "efs", ("energy", "energy_forces", "denoise_derivative", "denoise_head")),
    Claim("exp1", "adding forces and stress to the energy improves transfer", "Jia et al.", "efs", ("energy",)),
    Claim("exp1", "denoising by derivative beats denoising with a prediction head", "Jia et al.",
          "denoise_derivative", ("denoise_head",)),
)


def exp2_claims(singles: tuple[str, ...]) -> tuple[Claim, ...]:
    """Seed 0's claims for the single-property models of the plan."""
    return (
        Claim("exp2", "multi-property (combined) pre-training transfers better than every single-property model",
              "Deng, Park & Sy", "combined", tuple(f"single-{p}" for p in singles), "best"),
        Claim("exp2", "combined pre-training of CGCNN beats training from scratch", "Deng, Park & Sy",
              "combined", ("scratch",), "best"),
        Claim("exp2", "attention-CGCNN transfers at least as well as CGCNN (lower MAE, both combined-pre-trained)",
              "Deng, Park & Sy", "attention", ("combined",), "best"),
    )


@dataclass
class Judgement:
    claim: Claim
    holds: list[str]
    fails: list[str]
    within_noise: list[str]

    @property
    def settings(self) -> int:
        return len(self.holds) + len(self.fails) + len(self.within_noise)

    @property
    def verdict(self) -> str:
        h, f, n = len(self.holds), len(self.fails), self.settings
        if n == 0:
            return "not measured"
        if h > f and 2 * h >= n:
            return "reproduces"
        if f >= h:
            return "does not reproduce"
        return "partly reproduces"

    def sentence(self) -> str:
        if self.settings == 0:
            return f"**Not measured**: {self.claim.text} ({self.claim.source}): no setting has all its models."
        parts = [f"holds in {len(self.holds)} of {self.settings} settings"]
        if self.within_noise:
            parts.append(f"is within the seeds' spread in {len(self.within_noise)}")
        if self.fails:
            parts.append(f"is reversed in {len(self.fails)} ({', '.join(self.fails)})")
        return (f"**{self.verdict[0].upper() + self.verdict[1:]}**: {self.claim.text} ({self.claim.source}): "
                + "; ".join(parts) + ".")


def _best(stats: dict[CellKey, Stat], setting: Setting, model: str, strategy: str) -> Stat | None:
    if strategy != "best":
        return cell(stats, setting, model, strategy)
    found = [s for (e, t, z, m, _), s in stats.items() if (e, t, z) == setting and m == model and s.mean is not None]
    return min(found, key=lambda s: s.mean) if found else None


def setting_name(setting: Setting) -> str:
    return f"{setting[1]} n={setting[2]}"


def judge(claim: Claim, stats: dict[CellKey, Stat]) -> Judgement:
    """Judge ``claim`` in every setting of its experiment (see the module docstring)."""
    result = Judgement(claim, [], [], [])
    for setting in settings_of(stats, claim.experiment):
        better = _best(stats, setting, claim.better, claim.strategy)
        others = [_best(stats, setting, m, claim.strategy if m != "scratch" else "full") for m in claim.worse]
        if better is None or not others or any(o is None for o in others):
            continue
        worse = min(others, key=lambda s: s.mean)  # type: ignore[union-attr]
        noise = math.hypot(better.std or 0.0, worse.std or 0.0)  # type: ignore[union-attr]
        gap = worse.mean - better.mean  # type: ignore[operator]
        name = setting_name(setting)
        (result.holds if gap > noise else result.fails if -gap > noise else result.within_noise).append(name)
    return result


def ranking_lines(stats: dict[CellKey, Stat], experiment: str, strategy: str = "full") -> list[str]:
    """One line per setting: the models ordered by MAE (lowest first)."""
    lines = []
    for setting in settings_of(stats, experiment):
        found = sorted(((s.mean, m) for (e, t, z, m, st), s in stats.items()
                        if (e, t, z) == setting and st == strategy and s.mean is not None))
        if found:
            lines.append(f"- {setting_name(setting)}: " + " < ".join(f"{m} ({fmt_number(v)})" for v, m in found)
                         + f"; first: **{found[0][1]}**")
    return lines


def best_strategy_lines(stats: dict[CellKey, Stat], experiment: str, models: list[str]) -> list[str]:
    """For each model, the strategy with the lowest MAE in each setting."""
    lines = []
    for model in models:
        picks = []
        for setting in settings_of(stats, experiment):
            found = [(s.mean, st) for (e, t, z, m, st), s in stats.items()
                     if (e, t, z) == setting and m == model and s.mean is not None]
            if found:
                picks.append(f"{setting_name(setting)}: {min(found)[1]}")
        if picks:
            lines.append(f"- {model}: " + "; ".join(picks))
    return lines
