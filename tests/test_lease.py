"""The output lease through real stores: a temp folder (flock) and moto's S3 server (conditional writes)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from promptgrid.errors import InvalidInput, OutputInUse, OutputLeaseLost
from promptgrid.output.lease import OutputLease, check_writable, lease_name, overlaps
from promptgrid.output.sinks import open_sink


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_output")


def test_moto_honours_s3_conditional_writes(s3_env, s3_client):
    # The S3 lease relies on these: if the test server ignored them, the lease tests would prove nothing.
    s3_client.put_object(Bucket=s3_env, Key="k", Body=b"1", IfNoneMatch="*")
    with pytest.raises(s3_client.exceptions.ClientError, match="PreconditionFailed"):
        s3_client.put_object(Bucket=s3_env, Key="k", Body=b"2", IfNoneMatch="*")
    etag = s3_client.head_object(Bucket=s3_env, Key="k")["ETag"]
    s3_client.put_object(Bucket=s3_env, Key="k", Body=b"3", IfMatch=etag)
    with pytest.raises(s3_client.exceptions.ClientError, match="PreconditionFailed"):
        s3_client.put_object(Bucket=s3_env, Key="k", Body=b"4", IfMatch=etag)


def test_a_second_run_is_refused_naming_the_holder_and_since_when(output):
    clock = Clock()
    first = OutputLease(open_sink(output), lease_name(), "run-a", clock=clock)
    first.take()
    clock.advance(42)
    second = OutputLease(open_sink(output), lease_name(), "run-b", clock=clock)
    with pytest.raises(OutputInUse) as refused:
        second.take()
    message = str(refused.value)
    assert "run run-a" in message and f"pid {os.getpid()}" in message
    assert "since 2026-11-30 12:00:00 UTC (42 s ago)" in message and "--wait" in message
    first.release()
    second.take()  # free once released
    second.release()


def test_of_many_simultaneous_takers_exactly_one_wins(output):
    sink_root = open_sink(output).root
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def contender(n: int) -> None:
        lease = OutputLease(open_sink(output), lease_name(), f"run-{n}")
        barrier.wait()
        results.append(lease.try_take() is None)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False] * 7 + [True], sink_root


def test_an_expired_lease_is_taken_over_and_its_holder_learns_it_lost_it(output):
    clock = Clock()
    stalled = OutputLease(open_sink(output), lease_name(), "stalled", ttl_s=60, clock=clock)
    stalled.take()
    clock.advance(59)
    assert OutputLease(open_sink(output), lease_name(), "early", clock=clock).try_take() is not None
    # The holder looks alive (this very process) but has not renewed for a whole lifetime.
    clock.advance(2)
    newcomer = OutputLease(open_sink(output), lease_name(), "newcomer", clock=clock)
    assert newcomer.try_take() is None
    assert stalled.renew() is False
    stalled.lost.set()  # what its renewing thread does on a False renewal
    with pytest.raises(OutputLeaseLost, match="sends nothing more"):
        stalled.check()
    assert newcomer.renew() is True
    newcomer.release()


def test_renewal_keeps_a_live_run_s_lease_past_its_lifetime(output):
    holder = OutputLease(open_sink(output), lease_name(), "live", ttl_s=0.6)
    holder.take()
    holder.start_renewing()
    try:
        time.sleep(1.5)  # two and a half lifetimes: only renewal keeps it (a bounded wait, not a timing)
        with pytest.raises(OutputInUse):
            OutputLease(open_sink(output), lease_name(), "other", ttl_s=0.6).take()
        assert not holder.lost.is_set()
    finally:
        holder.release()


def test_the_holder_s_own_renewals_never_lose_it_however_they_interleave(output):
    # The run renews (rename) while its renewing thread does: neither may take the other's write for a
    # takeover. Eight renewers at once, each many times, stand for the worst interleaving.
    holder = OutputLease(open_sink(output), lease_name(), "cli-run")
    holder.take()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def renewer() -> None:
        barrier.wait()
        results.extend(holder.renew() for _ in range(5))

    threads = [threading.Thread(target=renewer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert results == [True] * 40
        holder.rename("flow-run")
        with pytest.raises(OutputInUse, match="run flow-run"):
            OutputLease(open_sink(output), lease_name(), "other").take()
    finally:
        holder.release()


def test_a_write_the_store_took_but_answered_as_lost_keeps_the_lease(output):
    # An S3 PUT retried after its first try landed answers 412 although the record is ours: still held.
    holder = OutputLease(open_sink(output), lease_name(), "live")
    holder.take()
    holder._version = "stale"  # what such a PUT leaves behind: our record under a version we never saw
    try:
        assert holder.renew() is True
        assert holder.renew() is True
    finally:
        holder.release()
    assert holder.store.read(lease_name()) is None  # released with the version it learned


def test_shards_of_one_split_coexist_but_overlapping_leases_do_not(output):
    assert not overlaps("shard-0-of-2", "shard-1-of-2")
    assert overlaps("shard-0-of-1", "shard-1-of-2") and overlaps("shard-0-of-2", "shard-1-of-3")
    zero = OutputLease(open_sink(output), lease_name(0, 2), "s0")
    one = OutputLease(open_sink(output), lease_name(1, 2), "s1")
    zero.take()
    one.take()
    whole = OutputLease(open_sink(output), lease_name(0, 1), "backfill")
    with pytest.raises(OutputInUse, match="run s[01]"):
        whole.take()
    # The refused run left nothing behind: once the shards are done it takes the output.
    zero.release()
    one.release()
    whole.take()
    with pytest.raises(OutputInUse, match="run backfill"):
        OutputLease(open_sink(output), lease_name(1, 3), "late").take()
    whole.release()


def test_wait_starts_once_the_holder_releases(tmp_path):
    holder = OutputLease(open_sink(str(tmp_path)), lease_name(), "first", ttl_s=0.8)
    holder.take()
    told: list[str] = []
    timer = threading.Timer(0.5, holder.release)
    timer.start()
    waiter = OutputLease(open_sink(str(tmp_path)), lease_name(), "second", ttl_s=0.8)
    waiter.take(wait=True, on_wait=told.append)
    timer.join()
    assert len(told) == 1 and "in use by run first" in told[0]
    waiter.release()


@pytest.mark.integration  # a process killed with SIGKILL
def test_a_lease_whose_process_was_killed_on_this_machine_is_taken_at_once(tmp_path):
    script = (
        "import sys, time\n"
        "from promptgrid.output.lease import OutputLease\n"
        "from promptgrid.output.sinks import open_sink\n"
        "OutputLease(open_sink(sys.argv[1]), 'shard-0-of-1', 'doomed', ttl_s=3600).take()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUse, match="run doomed"):
            OutputLease(open_sink(str(tmp_path)), lease_name(), "rerun").take()
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    # An hour of lifetime left, but its process is gone: no need to wait it out.
    rerun = OutputLease(open_sink(str(tmp_path)), lease_name(), "rerun")
    rerun.take()
    rerun.release()


def test_unusable_outputs_are_refused_with_a_sentence(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(InvalidInput, match="is a file, not a folder"):
        check_writable(open_sink(str(a_file)))
    with pytest.raises(InvalidInput, match="cannot write there"):
        check_writable(open_sink("/proc/promptgrid-out"))
    with pytest.raises(InvalidInput, match="cannot write there"):
        OutputLease(open_sink("/proc/promptgrid-out"), lease_name(), "r").take()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InvalidInput, match="cannot write there"):
            check_writable(open_sink(str(folder)))
    finally:
        folder.chmod(0o700)


def test_a_missing_bucket_is_refused_with_a_sentence(s3_env):
    with pytest.raises(InvalidInput, match="cannot reach it"):
        check_writable(open_sink(f"s3://{s3_env}-missing/prefix"))


def test_an_export_does_not_start_while_a_run_writes_the_output(tmp_path):
    from typer.testing import CliRunner

    from promptgrid.cli import app

    holder = OutputLease(open_sink(str(tmp_path / "out")), lease_name(0, 2), "nightly")
    holder.take()
    try:
        result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--to", str(tmp_path / "ds")])
    finally:
        holder.release()
    # `promptgrid` turns this InvalidInput into exit 2 with its sentence (the Typer app alone raises it).
    assert isinstance(result.exception, OutputInUse)
    assert "being written by run nightly" in str(result.exception) and "--wait" in str(result.exception)
    assert not (tmp_path / "ds").exists()
