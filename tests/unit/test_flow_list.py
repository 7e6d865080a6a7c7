"""The README's "How one archive flows" names every file a reader opens on the data path: every
file it names exists, and every project module the sensor, the five archive assets and the
queue page import is named, with the SQL file each pipeline data module among them runs and
what the queue page shows (its query file, the views under it, its template)."""

from __future__ import annotations

import re

from test_layout import REPO, import_graph, project_files

ENTRIES = [
    "sensors.archive_sensor",
    "audio_assets.raw_archive",
    "audio_assets.opus_files",
    "audio_assets.parquet_metadata",
    "audio_assets.transcripts",
    "audio_assets.classifications",
    "review.pages",
]
QUERIES = re.compile(r'queries\("(\w+)"\)')
QUEUE_PAGE = [
    "sql/queries/review_items.sql",
    "sql/views/review_console.sql",
    "sql/views/classified_items.sql",
    "review/templates/queue.html",
]


def flow_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("## How one archive flows", 1)[1].split("\n## ", 1)[0]


def named_paths() -> set[str]:
    tokens = re.findall(r"`([^`\s{}]+)`", flow_section())  # `audio_assets/{step}.py` is a pattern, not a file
    return {token for token in tokens if re.search(r"\.(py|sql|html)$", token)}


def test_every_file_the_flow_list_names_exists():
    missing = sorted(path for path in named_paths() if not (REPO / path).is_file())
    assert missing == []
    assert len(named_paths()) > 20  # the section was found and read


def test_every_module_on_the_path_is_named_with_its_sql():
    files = project_files()
    on_the_path = set(ENTRIES) | {target for entry in ENTRIES for target in import_graph()[entry]}
    wanted = {files[module].relative_to(REPO).as_posix() for module in on_the_path} | set(QUEUE_PAGE)
    for module in on_the_path:
        if module.startswith("resources."):
            wanted |= {f"sql/queries/{c}.sql" for c in QUERIES.findall(files[module].read_text(encoding="utf-8"))}
    assert sorted(wanted - named_paths()) == []
