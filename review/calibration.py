"""Flag thresholds calibrated from RA decisions: the lead's calibration page (a table and a
server-rendered SVG plot of precision and recall per threshold), and the operator's side,
applying a per-policy threshold.

The estimates come from the view ra_calibration (sql/views/review_console.sql). Applying a
threshold re-flags the scores already stored, through the pipeline's own write of a flag
(resources/results_db/classifications.py, sql/queries/classifications.sql): no model
runs, and the threshold is recorded on every classification row, which is also what the
pipeline's "already scored" check compares, so its next run scores nothing again either.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby

from starlette.requests import Request
from starlette.responses import Response

from review.auth import signed_in
from sql.named_queries import queries

Q = queries("review_calibration")
TABLE_STEP = 5  # the table shows every 0.05; the plot and the search use every 0.01


class ThresholdError(RuntimeError):
    pass


# --- the page ---------------------------------------------------------------------------------


@dataclass
class Plot:
    """Pixel geometry of one precision/recall plot; the template only writes numbers."""

    width: int = 560
    height: int = 260
    left: int = 44
    right: int = 12
    top: int = 12
    bottom: int = 34
    precision: str = ""
    recall: str = ""
    band: str = ""
    target_y: float | None = None
    in_effect_x: float | None = None
    recommended_x: float | None = None
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)

    def x(self, threshold: float) -> float:
        return round(self.left + threshold * (self.width - self.left - self.right), 1)

    def y(self, value: float) -> float:
        return round(self.top + (1 - value) * (self.height - self.top - self.bottom), 1)


def build_plot(rows: list[dict], target: float, in_effect: float | None, recommended: float | None) -> Plot:
    plot = Plot()

    def line(column: str) -> str:
        return " ".join(
            f"{plot.x(float(r['threshold']))},{plot.y(float(r[column]))}" for r in rows if r[column] is not None
        )

    plot.precision, plot.recall = line("precision"), line("recall")
    banded = [r for r in rows if r["precision_low"] is not None]
    upper = [f"{plot.x(float(r['threshold']))},{plot.y(float(r['precision_high']))}" for r in banded]
    lower = [f"{plot.x(float(r['threshold']))},{plot.y(float(r['precision_low']))}" for r in reversed(banded)]
    plot.band = " ".join(upper + lower)
    plot.target_y = plot.y(target)
    plot.in_effect_x = plot.x(in_effect) if in_effect is not None else None
    plot.recommended_x = plot.x(recommended) if recommended is not None else None
    plot.x_ticks = [(plot.x(t / 10), f"{t / 10:.1f}") for t in range(0, 11, 2)]
    plot.y_ticks = [(plot.y(v / 10), f"{v / 10:.1f}") for v in range(0, 11, 2)]
    return plot


def calibration_groups(rows: list[dict], recommended: list[dict], target: float) -> list[dict]:
    """One group per policy and model: its recommendation, plot and table rows."""
    chosen = {(r["policy"], r["classifier_model"]): r for r in recommended}
    groups = []
    for (policy, model), group in groupby(rows, key=lambda r: (r["policy"], r["classifier_model"])):
        grouped = list(group)
        in_effect = grouped[0]["threshold_in_effect"]
        pick = chosen.get((policy, model))
        marks = {float(pick["threshold"])} if pick else set()
        if in_effect is not None:
            marks.add(round(float(in_effect), 2))
        table = [
            r for r in grouped if round(float(r["threshold"]) * 100) % TABLE_STEP == 0 or float(r["threshold"]) in marks
        ]
        # Quoted for a shell: policy and model names end up in an operator's terminal.
        apply_command = (
            (
                f"audio-pipeline review-thresholds --policy {shlex.quote(policy)} --model {shlex.quote(model)}"
                f" --apply {pick['threshold']}"
            )
            if pick
            else None
        )
        groups.append(
            {
                "policy": policy,
                "model": model,
                "in_effect": in_effect,
                "recommended": pick,
                "apply_command": apply_command,
                "plot": build_plot(grouped, target, in_effect, float(pick["threshold"]) if pick else None),
                "table": table,
                "marks": marks,
            }
        )
    return groups


@signed_in(lead=True)
def calibration_page(request: Request) -> Response:
    console = request.app.state.console
    target = console.settings.target_precision
    groups = calibration_groups(console.store.calibration(), console.store.recommended_thresholds(target), target)
    return console.render(request, "calibration.html", {"groups": groups, "target": target})


# --- the operator's side (run as the pipeline's owner role) ----------------------------------


def target_precision(value: float | None = None) -> float:
    target = value if value is not None else float(os.environ.get("REVIEW_TARGET_PRECISION", "0.9"))
    if not 0 < target < 1:
        raise ThresholdError("the target precision must be between 0 and 1")
    return target


def summary(results_db, target: float) -> list[dict]:
    """Per policy and model: the threshold in force and the recommended one for `target`."""

    def read(cur) -> list[dict]:
        cur.execute(Q.calibration)
        pairs = {(r["policy"], r["classifier_model"]): r["threshold_in_effect"] for r in cur.fetchall()}
        cur.execute(Q.recommended_thresholds, {"target": target})
        chosen = {(r["policy"], r["classifier_model"]): dict(r) for r in cur.fetchall()}
        return [
            {"policy": p, "model": m, "in_effect": t, "recommended": chosen.get((p, m))}
            for (p, m), t in sorted(pairs.items())
        ]

    return results_db.transaction(read, what="read the calibration")


def apply_threshold(
    results_db, policy: str, model: str, threshold: float | str, target: float, reflag: Callable[..., dict]
) -> dict:
    """Flag every stored score of (policy, model) at `threshold` (a number, or "recommended":
    the lowest that reaches `target` precision) through `reflag`, the pipeline's write
    (resources/results_db/classifications.apply_threshold); returns the counts. No model call."""
    basis = "set by hand"
    if threshold == "recommended":
        pick = next(
            (
                r["recommended"]
                for r in summary(results_db, target)
                if (r["policy"], r["model"]) == (policy, model) and r["recommended"]
            ),
            None,
        )
        if pick is None:
            raise ThresholdError(f"no threshold reaches precision {target} for {policy} / {model} yet")
        threshold = float(pick["threshold"])
        basis = (
            f"lowest to reach precision {target}: {pick['precision']} "
            f"[{pick['precision_low']}, {pick['precision_high']}] over {pick['decisions']} decisions"
        )
    threshold = float(threshold)
    if not 0 <= threshold <= 1:
        raise ThresholdError("a threshold is between 0 and 1")

    counts = reflag(policy, model, threshold, basis)
    if counts["scores"] == 0:
        raise ThresholdError(f"no stored scores for policy {policy!r} and model {model!r}")
    return {"threshold": threshold, "basis": basis, **counts}


def current_thresholds(results_db) -> list[dict]:
    def read(cur) -> list[dict]:
        cur.execute(Q.current_thresholds)
        return [dict(r) for r in cur.fetchall()]

    return results_db.transaction(read, what="read the policy thresholds")
