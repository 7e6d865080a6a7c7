"""The operator commands of the console that `audio-pipeline` wires in (operations/cli.py
only parses arguments and hands over the pipeline's results database): review-user's
actions, review-thresholds, review-audit and review-export. Each returns the exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable

from review import accounts, calibration, export, recall_audit


def review_user(results_db, action: str, username: str, role: str | None, read_password: Callable[[], str]) -> int:
    try:
        if action == "disable":
            accounts.disable_user(results_db, username)
            print(f"disabled {username}; their sessions have ended")
        elif action == "enable":
            accounts.enable_user(results_db, username)
            print(f"enabled {username}: they can sign in with their password (earlier sessions stay ended)")
        elif action == "set-role":
            accounts.set_role(results_db, username, role or "ra")
            print(f"{username} is now {role or 'ra'}")
        elif action == "add":
            accounts.add_user(results_db, username, read_password(), role or "ra")
            print(f"added {username} ({role or 'ra'})")
        else:
            still_disabled = accounts.set_password(results_db, username, read_password())
            print(
                f"new password for {username}; their sessions have ended"
                + ("; the account stays disabled (`review-user enable` to enable it)" if still_disabled else "")
            )
    except (accounts.AccountError, ValueError) as exc:
        print(f"audio-pipeline review-user: {exc}", file=sys.stderr)
        return 1
    return 0


def review_thresholds(
    results_db,
    policy: str | None,
    model: str | None,
    apply: str | None,
    target: float | None,
    reflag: Callable[[str, str, float, str], dict],
) -> int:
    """Without --apply: per policy and model, the threshold in force and the lowest one that
    reaches the target precision. With --apply T|recommended: re-flag the stored scores through
    `reflag(policy, model, threshold, basis)`, the pipeline's own write of a flag."""
    try:
        goal = calibration.target_precision(target)
        if apply is None:
            _print_summary(calibration.summary(results_db, goal), goal)
            return 0
        if not policy or not model:
            print("audio-pipeline review-thresholds: --apply needs --policy and --model", file=sys.stderr)
            return 2
        counts = calibration.apply_threshold(
            results_db, policy, model, apply if apply == "recommended" else _float(apply), goal, reflag
        )
    except (calibration.ThresholdError, ValueError) as exc:
        print(f"audio-pipeline review-thresholds: {exc}", file=sys.stderr)
        return 1
    print(
        f"{policy} / {model}: threshold {counts['threshold']} ({counts['basis']}); {counts['scores']} stored scores "
        f"re-flagged without a model call: {counts['flagged']} flagged, {counts['newly_flagged']} newly, "
        f"{counts['no_longer_flagged']} no longer"
    )
    return 0


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--apply takes a threshold between 0 and 1 or 'recommended', not {value!r}") from None


def _print_summary(rows: list[dict], target: float) -> None:
    if not rows:
        print("no RA decisions yet: nothing to calibrate")
        return
    print(f"{'policy':<22} {'model':<28} {'in force':>8}  lowest reaching precision {target}")
    for row in rows:
        pick = row["recommended"]
        found = (
            f"{pick['threshold']}  precision {pick['precision']} [{pick['precision_low']}, {pick['precision_high']}]"
            f" over {pick['decisions']} decisions"
            if pick
            else "none yet"
        )
        in_force = "" if row["in_effect"] is None else f"{row['in_effect']:.2f}"
        print(f"{row['policy']:<22} {row['model']:<28} {in_force:>8}  {found}")


def review_audit(results_db, percent: float | None) -> int:
    try:
        if percent is not None:
            recall_audit.set_audit_share(results_db, percent)
    except ValueError as exc:
        print(f"audio-pipeline review-audit: {exc}", file=sys.stderr)
        return 1
    print(f"recall audit share: {recall_audit.audit_share(results_db):g} % of classified, not flagged items")
    return 0


def review_export(results_db, output: str, file_format: str | None, with_ra_names: bool) -> int:
    try:
        count = export.export_decisions(results_db, output, file_format=file_format, with_ra_names=with_ra_names)
    except ValueError as exc:
        print(f"audio-pipeline review-export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} decisions to {output}" + ("" if with_ra_names else " (RAs as pseudonyms)"))
    return 0
