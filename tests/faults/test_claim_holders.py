"""Who may take an archive's claim from a run: `dagster asset materialize` outside the run
queue, while the sensor's run of the archive is alive but renews nothing (it waits for a GPU
slot longer than the claim's TTL), and from another Dagster instance (another DAGSTER_HOME),
to which the sensor's run is unknown.

Under `dagster-daemon` with the repository's dagster.yaml (testing/daemon_harness.py), the claim's
TTL shortened to a few seconds (ARCHIVE_CLAIM_TTL_S) so that "longer than the TTL" takes
seconds. A run Dagster knows holds its claim until Dagster reports it finished; a run it does
not know holds it while its steps renew it. Either way the materialize waits, and both runs
succeed one after the other; before, the materialize took the claim and the sensor's run
failed with "claim taken over".
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from fault_report import assert_objects_agree, files, record_outcome

from media.ffmpeg_binary import resolve_ffmpeg
from testing.archive_factory import build_tar, make_speech_mp3, make_tone_mp3
from testing.daemon_harness import BIN, DaemonHarness, PipelineEnvironment, running_daemon
from testing.pipeline_support import rows

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

HOLDING = "holding the claim on "
UNKNOWN_HOLDER = "which this Dagster instance does not know"


def upload(object_store, workdir: Path, name: str, tones: int = 0) -> str:
    parts = workdir / name
    members = [
        ("insult.mp3", make_speech_mp3(parts / "insult.mp3", "you are a stupid idiot and everyone hates you")),
        ("weather.mp3", make_speech_mp3(parts / "weather.mp3", "the weather is lovely today")),
    ] + [(f"tone{i}.mp3", make_tone_mp3(parts / f"tone{i}.mp3", seconds=1, freq=400 + 50 * i)) for i in range(tones)]
    return object_store.upload_file(
        build_tar(workdir / f"{name}.tar.gz", members, gzip=True), f"archives/{name}.tar.gz"
    ).key


def materialize(harness: DaemonHarness, partition: str, log: Path, **env) -> subprocess.Popen:
    """`dagster asset materialize` of the partition's CPU half, outside the run queue."""
    command = [str(BIN / "dagster"), "asset", "materialize", "--select", "raw_archive", "--partition", partition]
    return subprocess.Popen(
        [*command, "-m", "definitions"],
        cwd=harness.workdir,
        env={**harness.env, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def claim_row(results_db, key: str) -> dict:
    return rows(results_db, "SELECT claimed_by_run, claim_epoch FROM archives WHERE archive_source = %s", (key,))[0]


def held_since(harness: DaemonHarness, run_id: str) -> float:
    return min(e.timestamp for e in harness.instance.all_logs(run_id) if HOLDING in (e.user_message or ""))


def ended_at(harness: DaemonHarness, run_id: str) -> float:
    record = harness.instance.get_run_record_by_id(run_id)
    return record.end_time


def test_a_materialize_waits_for_a_run_that_waits_for_a_gpu_slot_past_the_claim_ttl(
    tmp_path, object_store, results_db, postgres_server, models_dir
):
    ttl_s = 4
    key = upload(object_store, tmp_path, "gpu_wait")
    pipeline = PipelineEnvironment.serving(
        object_store, results_db.dsn, tmp_path / "scratch", models_dir, ARCHIVE_CLAIM_TTL_S=str(ttl_s)
    )
    with DaemonHarness(tmp_path / "control", postgres_server, pipeline) as harness:
        concurrency = [str(BIN / "dagster"), "instance", "concurrency", "set", "gpu"]
        subprocess.run([*concurrency, "0"], env=harness.env, check=True, capture_output=True)  # no GPU free
        with running_daemon(harness):
            run = harness.first_run("gpu_wait")
            for step in ("opus_files", "parquet_metadata"):
                harness.wait_until(
                    lambda step=step: any(
                        e.step_key == step
                        for e in harness.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
                    ),
                    300,
                    f"{step} to succeed",
                )
            time.sleep(2 * ttl_s)  # transcripts waits for a GPU slot; nothing renews the claim
            assert harness.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            log = tmp_path / "materialize.log"
            bypass = materialize(harness, "gpu_wait", log)
            time.sleep(3 * ttl_s)
            claim_during = claim_row(results_db, key)
            subprocess.run([*concurrency, "1"], env=harness.env, check=True, capture_output=True)  # a GPU frees up
            run = harness.wait_until(
                lambda: (r := harness.instance.get_run_by_id(run.run_id)).is_finished and r, 600, "the run to end"
            )
            assert bypass.wait(timeout=600) == 0, log.read_text()[-4000:]
            cli_run = next(r for r in harness.runs(tags={"dagster/partition": "gpu_wait"}) if r.run_id != run.run_id)
            took_over_after_s = held_since(harness, cli_run.run_id) - ended_at(harness, run.run_id)

    found = files(results_db, key)
    print(f"claim while the run waited: {claim_during}; the materialize held it {took_over_after_s:.1f} s after")
    assert run.status == dg.DagsterRunStatus.SUCCESS, harness.log_messages(run.run_id)[-15:]
    assert claim_during["claimed_by_run"] == run.run_id  # not taken from a live run
    assert took_over_after_s >= 0
    assert {r["status"] for r in found.values()} == {"classified"} and len(found) == 2
    objects = assert_objects_agree(results_db, object_store, key)
    record_outcome(
        f"`dagster asset materialize` while the archive's run waits for a GPU slot longer than the claim's TTL "
        f"(ARCHIVE_CLAIM_TTL_S {ttl_s} s; `gpu` pool set to 0, then 1)",
        f"the run kept its claim while it waited ({3 * ttl_s} s after the materialize started, Dagster still "
        f"reporting it STARTED), then succeeded; the materialize waited and took the claim "
        f"{took_over_after_s:.1f} s after the run ended, and succeeded; 2 files classified: files lost 0, "
        f"duplicate rows 0, orphan objects 0 ({objects} objects), rows whose object disagrees 0",
    )


def test_a_materialize_on_another_instance_waits_while_the_run_renews_its_claim(
    tmp_path, object_store, results_db, postgres_server, models_dir
):
    ttl_s = 8
    key = upload(object_store, tmp_path, "other_instance", tones=6)
    slow = tmp_path / "slow-ffmpeg"  # the run's conversions take a while: it is at work, renewing
    slow.write_text(f'#!/bin/bash\nsleep 2\nexec "{resolve_ffmpeg()}" "$@"\n')
    slow.chmod(0o755)
    pipeline = PipelineEnvironment.serving(
        object_store,
        results_db.dsn,
        tmp_path / "scratch",
        models_dir,
        ARCHIVE_CLAIM_TTL_S=str(ttl_s),
        FFMPEG_BINARY=str(slow),
    )
    other_home = tmp_path / "other_dagster_home"  # a laptop's instance: no dagster.yaml, SQLite
    other_home.mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(other_home)) as other:
        other.add_dynamic_partitions("archives", ["other_instance"])
    with DaemonHarness(tmp_path / "control", postgres_server, pipeline) as harness, running_daemon(harness):
        run = harness.first_run("other_instance")
        harness.wait_until(lambda: harness.step_started(run.run_id, "opus_files"), 300, "opus_files to start")
        log = tmp_path / "materialize.log"
        bypass = materialize(harness, "other_instance", log, DAGSTER_HOME=str(other_home))
        run = harness.wait_until(
            lambda: (r := harness.instance.get_run_by_id(run.run_id)).is_finished and r, 600, "the run to end"
        )
        assert bypass.wait(timeout=600) == 0, log.read_text()[-4000:]
        run_ended = ended_at(harness, run.run_id)
    output = log.read_text()
    with dg.DagsterInstance.local_temp(tempdir=str(other_home)) as other:
        (cli_run,) = other.get_runs()
        held_at = min(e.timestamp for e in other.all_logs(cli_run.run_id) if HOLDING in (e.user_message or ""))

    found = files(results_db, key)
    assert run.status == dg.DagsterRunStatus.SUCCESS, harness.log_messages(run.run_id)[-15:]
    assert UNKNOWN_HOLDER in output, output[-4000:]
    assert held_at >= run_ended, (held_at, run_ended)
    assert claim_row(results_db, key)["claimed_by_run"] == cli_run.run_id
    assert {r["status"] for r in found.values()} == {"classified"} and len(found) == 8
    objects = assert_objects_agree(results_db, object_store, key)
    record_outcome(
        "`dagster asset materialize` under another DAGSTER_HOME (an instance that does not know the sensor's "
        f"run) while that run converts (ARCHIVE_CLAIM_TTL_S {ttl_s} s)",
        f"the materialize warned that the claim is held by a run its instance does not know and waited while "
        f"the run's steps renewed it; the run succeeded; the materialize took the claim "
        f"{held_at - run_ended:.1f} s after the run ended (no renewal for the TTL) and succeeded; 8 files "
        f"classified: files lost 0, duplicate rows 0, orphan objects 0 ({objects} objects), rows whose object "
        "disagrees 0",
    )
