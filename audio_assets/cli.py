"""`audio-pipeline`: the operator's command line."""

from __future__ import annotations

import argparse
import sys

from resources.environments import LOCAL_POSTGRES_PORT, LOCAL_S3_PORT


def _migrate(args: argparse.Namespace) -> int:
    from resources.environments import current_environment, resources_for

    results_db = resources_for(current_environment())["results_db"]
    applied = results_db.migrate()
    print(f"applied migrations: {', '.join(applied) if applied else 'none (schema is current)'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from audio_assets.demo import run_demo

    return run_demo(
        state_dir=args.state_dir,
        ui=args.ui,
        timeout_s=args.timeout,
        s3_port=args.s3_port,
        postgres_port=args.postgres_port,
        stop_services=args.stop_services,
    )


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
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
