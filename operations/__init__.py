"""The `audio-pipeline` command (cli.py) and what its subcommands do: demo, doctor, status,
requeue, migrate, and the review console's start and accounts. They run outside Dagster's
code location; nothing in the pipeline imports them.

The commands use the same resources as the runs (one environment switch,
resources/environments.py), configured the way Dagster configures them at launch. Only the
subcommand that runs imports what it needs: `audio-pipeline review` starts the console
without importing Dagster or torch.
"""

from __future__ import annotations

import re
from typing import Any

_UNSET_VARIABLE = re.compile(r'environment variable "([^"]+)" which is not set')


class ResourceConfigError(RuntimeError):
    """A resource of the current environment cannot be configured (e.g. a variable is unset)."""


def configured_resource(name: str) -> Any:
    """The resource `name` of the current environment, ready to use outside a run.

    Production resources hold `dg.EnvVar`s that Dagster resolves only when it builds a run's
    resources; read directly, a field would be the variable's *name*. Resolving them here
    also makes a missing variable fail, named, before anything connects anywhere.
    """
    import dagster as dg

    from resources.environments import current_environment, resources_for

    environment = current_environment()
    try:
        return resources_for(environment)[name].process_config_and_initialize()
    except dg.DagsterInvalidConfigError as exc:
        unset = sorted(set(_UNSET_VARIABLE.findall(" ".join(exc.error_messages))))
        reason = f"unset environment variable(s) {', '.join(unset)}" if unset else str(exc).splitlines()[0]
        raise ResourceConfigError(f"{name} ({environment}): {reason}") from exc
