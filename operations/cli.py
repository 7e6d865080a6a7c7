"""`audio-pipeline`: the operator's command line."""

from __future__ import annotations

import argparse
import functools
import sys

from embedded_services.ports import LOCAL_POSTGRES_PORT, LOCAL_S3_PORT


def _migrate(args: argparse.Namespace) -> int:
    from operations import configured_resource

    applied = configured_resource("results_db").migrate()
    print(f"applied migrations: {', '.join(applied) if applied else 'none (schema is current)'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from operations.demo import run_demo

    return run_demo(
        state_dir=args.state_dir,
        ui=args.ui,
        timeout_s=args.timeout,
        s3_port=args.s3_port,
        postgres_port=args.postgres_port,
        stop_services=args.stop_services,
        review=args.review,
    )


def _doctor(args: argparse.Namespace) -> int:
    from operations.doctor import DoctorSettings, run_doctor

    return run_doctor(
        DoctorSettings(
            timeout_s=args.timeout, scratch_warn_gb=args.scratch_warn_gb, scratch_fail_gb=args.scratch_fail_gb
        )
    )


def _status(args: argparse.Namespace) -> int:
    from operations import configured_resource
    from operations.status import run_status

    terminal = sys.stdout.isatty() and not args.plain
    return run_status(configured_resource("results_db"), args.archive, args.limit, terminal)


def _requeue(args: argparse.Namespace) -> int:
    from operations import configured_resource
    from operations.requeue import run_requeue

    return run_requeue(
        configured_resource("results_db"),
        configured_resource("object_store"),
        archive=None if args.all else args.archive,
        wait=args.wait,
        timeout_s=args.timeout,
        workspace_file=args.workspace,
    )


def _review(args: argparse.Namespace) -> int:
    import os

    from review.server import load_env_file, serve
    from review.settings import ReviewSettings, SettingsError
    from review.store import UnsafeDatabaseRole

    env_file = args.env_file
    if env_file is None and os.environ.get("AUDIO_PIPELINE_ENV", "local") == "local":
        # After `audio-pipeline demo`, the console's settings are in its state folder.
        env_file = ".local/review-console.env" if os.path.exists(".local/review-console.env") else None
    if env_file:
        load_env_file(env_file, os.environ)
    try:
        settings = ReviewSettings.from_environment()
        print(f"review console on http://{args.host}:{args.port} (Ctrl-C to stop)")
        serve(settings, host=args.host, port=args.port)
    except (SettingsError, UnsafeDatabaseRole) as exc:
        print(f"audio-pipeline review: {exc}", file=sys.stderr)
        return 2
    return 0


def _review_user(args: argparse.Namespace) -> int:
    import getpass

    from operations import configured_resource
    from review.commands import review_user

    def read_password() -> str:
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
        if not args.password_stdin and getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ")
        return password

    return review_user(configured_resource("results_db"), args.action, args.username, args.role, read_password)


def _review_db_login(args: argparse.Namespace) -> int:
    import secrets

    from psycopg2.extensions import make_dsn, parse_dsn

    from operations import configured_resource
    from review.accounts import AccountError, ensure_console_login

    results_db = configured_resource("results_db")
    password = secrets.token_urlsafe(24)
    try:
        ensure_console_login(results_db, args.role, password)
    except AccountError as exc:
        print(f"audio-pipeline review-db-login: {exc}", file=sys.stderr)
        return 1
    params = parse_dsn(results_db.connection_string())
    dsn = make_dsn(
        **{k: params[k] for k in ("host", "port", "dbname") if k in params}, user=args.role, password=password
    )
    # Printed once, for the operator to put in the console's environment file (mode 0600).
    print(f"REVIEW_DATABASE_DSN={dsn}")
    return 0


def _review_thresholds(args: argparse.Namespace) -> int:
    from operations import configured_resource
    from resources.results_db.classifications import apply_threshold
    from review.commands import review_thresholds

    # The console reads the calibration; applying a threshold is the pipeline's write.
    results_db = configured_resource("results_db")
    reflag = functools.partial(apply_threshold, results_db)
    return review_thresholds(results_db, args.policy, args.model, args.apply, args.target, reflag)


def _review_audit(args: argparse.Namespace) -> int:
    from operations import configured_resource
    from review.commands import review_audit

    return review_audit(configured_resource("results_db"), args.percent)


def _review_export(args: argparse.Namespace) -> int:
    from operations import configured_resource
    from review.commands import review_export

    return review_export(configured_resource("results_db"), args.output, args.format, args.with_ra_names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="apply sql/ migrations and refresh the views")
    migrate.set_defaults(handler=_migrate)

    demo = commands.add_parser(
        "demo", help="start embedded S3 + PostgreSQL, upload the sample archives, let the sensor run them"
    )
    demo.add_argument("--state-dir", default=".local", help="where the embedded services keep data")
    demo.add_argument("--ui", action="store_true", help="leave `dagster dev` running on 127.0.0.1:3000")
    demo.add_argument("--timeout", type=int, default=900, help="seconds to wait for the runs")
    demo.add_argument("--s3-port", type=int, default=LOCAL_S3_PORT, help="SeaweedFS S3 port")
    demo.add_argument("--postgres-port", type=int, default=LOCAL_POSTGRES_PORT, help="PostgreSQL port")
    demo.add_argument("--stop-services", action="store_true", help="stop SeaweedFS and PostgreSQL at the end")
    demo.add_argument(
        "--review", action="store_true", help="then keep the RAs' review console running on 127.0.0.1:8040"
    )
    demo.set_defaults(handler=_demo)

    _add_operator_commands(commands)
    _add_review_commands(commands)
    return parser


def _add_review_commands(commands) -> None:
    from review.server import DEFAULT_HOST, DEFAULT_PORT

    review = commands.add_parser("review", help="run the RAs' review console (web app)")
    review.add_argument("--host", default=DEFAULT_HOST, help="listen address (keep loopback; put TLS in front)")
    review.add_argument("--port", type=int, default=DEFAULT_PORT)
    review.add_argument(
        "--env-file", help="KEY=VALUE file with REVIEW_* settings (default after the demo: .local/review-console.env)"
    )
    review.set_defaults(handler=_review)

    user = commands.add_parser("review-user", help="add an RA account, set its password, disable, enable, set its role")
    user.add_argument("action", choices=["add", "set-password", "disable", "enable", "set-role"])
    user.add_argument("username")
    user.add_argument(
        "--role", choices=["ra", "lead"], help="add/set-role: ra (default) or lead (sees everyone's figures)"
    )
    user.add_argument("--password-stdin", action="store_true", help="read the password from stdin (no prompt)")
    user.set_defaults(handler=_review_user)

    thresholds = commands.add_parser(
        "review-thresholds", help="calibrated flag thresholds per policy; --apply re-flags stored scores"
    )
    thresholds.add_argument("--policy")
    thresholds.add_argument("--model", help="classifier model, as the rows record it")
    thresholds.add_argument(
        "--apply", metavar="THRESHOLD|recommended", help="flag this policy and model's stored scores at it"
    )
    thresholds.add_argument("--target", type=float, help="target precision (default REVIEW_TARGET_PRECISION or 0.9)")
    thresholds.set_defaults(handler=_review_thresholds)

    audit = commands.add_parser(
        "review-audit", help="show or set the recall audit share (unflagged items RAs code too)"
    )
    audit.add_argument("--percent", type=float, help="share of classified, not flagged items, 0-100 (default 2)")
    audit.set_defaults(handler=_review_audit)

    export = commands.add_parser("review-export", help="RA decisions as Parquet or CSV, RAs pseudonymised")
    export.add_argument("--output", required=True, help="file to write (.parquet or .csv)")
    export.add_argument("--format", choices=["parquet", "csv"], help="default: from the file name")
    export.add_argument("--with-ra-names", action="store_true", help="add RAs' user names (pseudonyms only otherwise)")
    export.set_defaults(handler=_review_export)

    login = commands.add_parser("review-db-login", help="create the console's database login (member of ra_app)")
    login.add_argument("role", nargs="?", default="review_console")
    login.set_defaults(handler=_review_db_login)


def _add_operator_commands(commands) -> None:
    doctor = commands.add_parser("doctor", help="check S3, PostgreSQL, ffmpeg, models, GPU, scratch and the broker")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds before a service counts as down")
    doctor.add_argument("--scratch-warn-gb", type=float, default=5.0, help="warn below this much free scratch")
    doctor.add_argument("--scratch-fail-gb", type=float, default=1.0, help="fail below this much free scratch")
    doctor.set_defaults(handler=_doctor)

    status = commands.add_parser("status", help="per-archive progress from audio_files")
    status.add_argument("--archive", metavar="KEY_OR_PARTITION", help="one archive: partition key or S3 key")
    status.add_argument("--limit", type=int, default=50, help="most recently changed archives to show")
    status.add_argument("--plain", action="store_true", help="a table even in a terminal")
    status.set_defaults(handler=_status)

    requeue = commands.add_parser("requeue", help="re-run the failed files of an archive as a new Dagster run")
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--archive", metavar="KEY_OR_PARTITION", help="the archive: partition key or S3 key")
    which.add_argument("--all", action="store_true", help="every archive with failed files")
    requeue.add_argument(
        "--no-wait", dest="wait", action="store_false", help="return once the runs are queued for the daemon"
    )
    requeue.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the runs")
    requeue.add_argument(
        "--workspace",
        metavar="WORKSPACE_YAML",
        help="load the code from this workspace file (default: the module, under the location name the daemon uses)",
    )
    requeue.set_defaults(handler=_requeue)


def main(argv: list[str] | None = None) -> int:
    from operations import ResourceConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ResourceConfigError as exc:  # configuration, not a bug: no traceback
        print(f"audio-pipeline {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
