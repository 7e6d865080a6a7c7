"""The code's shape: folders that are the layers and only import downward, no import cycles,
SQL only in sql/ and the data layer. Read from the source with `ast` (every import, also inside functions and
TYPE_CHECKING blocks), so a violation fails here before anything runs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = [
    "media", "models", "audio_assets", "resources", "sensors", "sql", "policies", "review", "operations",
    "embedded_services", "workers", "testing",
]  # fmt: skip
MODULES = ["archive_identity", "s3_client", "definitions"]
SCRIPT_DIRS = ["tests", "bench"]  # their modules import each other by file name (sys.path)

# Each top-level folder (or module) is one layer, lowest first: it may import its own layer and
# the layers below it, never above.
LAYERS = [
    # pure: no Dagster; the identity, the S3 client, SQL, policies, tar/ffmpeg/metadata rows,
    # Whisper and CoPE, and the service launchers the tests, demo and benches start
    ("pure", ["archive_identity", "s3_client", "sql", "policies", "media", "models", "embedded_services"]),
    ("resources", ["resources"]),  # ConfigurableResources and the data layer
    ("assets", ["audio_assets"]),  # assets, checks, ops and the archive job
    ("sensors", ["sensors"]),  # sensors and schedules: they request runs of jobs
    ("workers", ["workers"]),  # the Celery runtime the workers start (beside deploy/)
    ("definitions", ["definitions"]),
    ("commands", ["operations"]),  # the audio-pipeline command: nothing imports it
    ("testing", ["testing"]),  # what tests/ and bench/ share: archive builders, the daemon harness
]
# The review console stands beside the pipeline and shares only its pure layer.
CONSOLE = "review"
# Pure code and the console must run without these (the console starts without Dagster).
HEAVY_FOR_PURE = ("dagster", "dagster_celery", "dagster_aws", "dagster_postgres")
HEAVY_FOR_CONSOLE = HEAVY_FOR_PURE + ("torch", "whisperx", "transformers", "peft", "pandas")


def _module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    if relative.parts[0] in SCRIPT_DIRS:
        return relative.name  # imported as `archive_factory`, `bench_conversion`, `review_support`
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    paths = [REPO / f"{m}.py" for m in MODULES]
    for folder in PACKAGES + SCRIPT_DIRS:
        paths += sorted((REPO / folder).rglob("*.py"))
    found: dict[str, Path] = {}
    for path in paths:
        if path.name == "conftest.py":
            continue  # pytest imports these by path, never by name
        name = _module_name(path)
        assert name not in found, f"{path} and {found[name]} are both importable as {name!r}"
        found[name] = path
    return found


def _imported_names(path: Path) -> Iterator[str]:
    """Every module name an import statement in `path` mentions, `from a import b` as `a.b`
    (resolved below to the module `a.b` if there is one, else to `a`). The packages Python
    imports on the way (`a` for `import a.b`) are not edges: a package's __init__ that
    re-exports its modules would otherwise be in a circle with each of them."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


@cache
def import_graph() -> dict[str, set[str]]:
    """{project module: project modules it imports}."""
    modules = project_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imported_names(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def third_party_imports(name: str) -> set[str]:
    return {imported.split(".")[0] for imported in _imported_names(project_files()[name])}


def layer_of(module: str) -> int | None:
    """The layer of the top-level folder (or module) `module` lives in."""
    top = module.split(".")[0]
    return next((index for index, (_, folders) in enumerate(LAYERS) if top in folders), None)


def test_there_is_no_import_cycle_anywhere():
    graph = import_graph()
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def test_layers_only_import_downward():
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in import_graph().items()
        if layer_of(module) is not None
        for target in sorted(targets)
        if layer_of(target) is not None and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_resource_imports_an_asset_module():
    offenders = [
        (module, target)
        for module, targets in import_graph().items()
        if module.startswith("resources.")
        for target in targets
        if target.startswith("audio_assets")
    ]
    assert offenders == []


def test_pure_code_and_the_console_import_no_dagster():
    offenders = []
    for module in project_files():
        layer = layer_of(module)
        if layer == 0:
            offenders += [(module, name) for name in third_party_imports(module) & set(HEAVY_FOR_PURE)]
        if module == CONSOLE or module.startswith(CONSOLE + "."):
            offenders += [(module, name) for name in third_party_imports(module) & set(HEAVY_FOR_CONSOLE)]
            offenders += [
                (module, target)
                for target in import_graph()[module]
                if not target.startswith(CONSOLE) and layer_of(target) != 0
            ]
    assert offenders == []


def test_code_uses_public_dagster_apis_only():
    """No `dagster._...` import outside the tests and their support (testing/ stops a sensor
    from outside the daemon, which only Dagster's internals can): that is what lets
    pyproject.toml accept any 1.13 patch release instead of one exact version."""
    private = [
        (name, imported)
        for name, path in project_files().items()
        if path.relative_to(REPO).parts[0] not in ("tests", "testing")
        for imported in _imported_names(path)
        if imported.split(".")[0].startswith("dagster") and any(p.startswith("_") for p in imported.split(".")[1:])
    ]
    assert private == []


def test_nothing_imports_tests_bench_or_commands():
    """Entry points and test code sit on top: the pipeline never depends on them, and only
    tests/ and bench/ use the test support."""
    scripts = {name for name, path in project_files().items() if path.relative_to(REPO).parts[0] in SCRIPT_DIRS}
    offenders = [
        (module, target)
        for module, targets in import_graph().items()
        if module not in scripts and not module.startswith(("operations", "testing"))
        for target in targets
        if target in scripts or target.startswith(("operations", "testing"))
    ]
    assert offenders == []


def test_the_graph_sees_the_known_edges():
    """The checks above mean something only if the graph is read right."""
    graph = import_graph()
    assert "archive_identity" in graph["resources.results_db.archives"]
    assert "resources.results_db.database" in graph["resources.results_db.opus_files"]
    assert "audio_assets.archive_job" in graph["sensors.archive_sensor"]
    assert "testing.pipeline_support" in graph["bench_transcription"]
    assert "review.store" in graph["review.app"]
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}, {"d"}] or {
        frozenset(c) for c in _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    } == {frozenset({"a", "b", "c"}), frozenset({"d"})}


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


ARCHIVE_ASSETS = ["raw_archive", "opus_files", "parquet_metadata", "transcripts", "classifications"]


def test_archive_asset_bodies_read_in_one_screen():
    """What every step shares lives in resources/archive_run.py; a body is what the step does
    to the data: at most 30 lines after its docstring. Each asset's module bears its name."""
    lengths = {}
    for name in ARCHIVE_ASSETS:
        tree = ast.parse((REPO / "audio_assets" / f"{name}.py").read_text(encoding="utf-8"))
        [function] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
        first = function.body[1] if isinstance(function.body[0], ast.Expr) else function.body[0]
        lengths[name] = function.end_lineno - first.lineno + 1
    assert {name: n for name, n in lengths.items() if n > 30} == {}, lengths


# --- SQL lives in sql/ and the data layer ---------------------------------------------------

# Statements as they would appear in a Python string: a verb, then what it acts on.
SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|VIEW|INDEX))", re.I
)
# Allowed: the data-access package, the migrate runner, the embedded server launcher (CREATE
# DATABASE for tests and the demo).
ALLOWED = {"resources/results_db", "sql", "embedded_services"}


def python_files(*packages: str):
    for package in packages:
        yield from (REPO / package).rglob("*.py")


def sql_strings(path: Path) -> list[str]:
    """String literals in code that read as SQL (docstrings and comments are prose, not code)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        f"{path.name}:{node.lineno}: {node.value.strip()[:80]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in prose
        and SQL.search(node.value)
    ]


def test_no_asset_sensor_check_command_console_or_bench_builds_sql():
    offenders = []
    for path in python_files(*PACKAGES, "bench"):
        relative = path.relative_to(REPO).as_posix()
        if not any(relative.startswith(prefix) for prefix in ALLOWED):
            offenders += sql_strings(path)
    assert offenders == []


def test_data_access_modules_run_only_named_queries():
    """No SQL text inside the data-access modules either: they name queries from sql/queries."""
    offenders = [hit for path in python_files("resources/results_db") for hit in sql_strings(path)]
    assert offenders == []


def test_the_sql_check_sees_sql_in_code_and_not_in_prose(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""SELECT on the RA views."""\nQ = "SELECT id FROM t"\n# DELETE FROM t\n')
    assert sql_strings(sample) == ["sample.py:2: SELECT id FROM t"]


def test_the_database_runs_named_queries_only():
    import pytest

    from resources.results_db import ResultsDatabase
    from sql.named_queries import queries

    assert not hasattr(ResultsDatabase, "query") and not hasattr(ResultsDatabase, "fetch_all")
    database = ResultsDatabase(dsn="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(TypeError, match="named queries"):
        database.rows("SELECT 1")
    assert isinstance(queries("archives").key_of_partition, str)  # a NamedQuery is still text for the driver
