"""`btard cluster`, `btard submit` and `btard jobs` against a real Ray head and its Jobs API.

The module starts its own head with `btard cluster start` on free ports and in its own Ray
temp dir, so that nothing else on the machine joins it (a bare `ray.init()` looks for the
cluster `ray start` recorded in the *default* temp dir), and stops it with
`btard cluster stop --temp-dir`, which stops that head's processes and nothing else: the
test session's own Ray instance (tests/conftest.py) and anybody's `btard run` keep running.
Jobs are real `btard run`s of the quickstart, shrunk to a few steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from lines import Lines
from typer.testing import CliRunner

from btard_ray.cli import app

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
# A few steps of 3 peers on the digits: the point is the plumbing, not the accuracy.
SMALL = ["--set", "steps=6", "--set", "peers=3", "--set", "eval_every=6", "--set", "resources.cpus_per_peer=0.25"]
NEW_COMMANDS = [
    ["cluster"], ["cluster", "start"], ["cluster", "stop"], ["cluster", "status"], ["submit"],
    ["jobs"], ["jobs", "list"], ["jobs", "status"], ["jobs", "logs"], ["jobs", "stop"],
    ["join"], ["leave"], ["status"], ["finish"],
]
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BTARD_DASHBOARD")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _btard(*args: str, cwd: Path = REPO, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh process, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "btard_ray.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=timeout, env=_env(**env),
    )


def _one_error_line(result, fragment: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]


def _wait_for(client, name: str, statuses: set[str], timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(name))
        if status in statuses or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real Ray head started with `btard cluster start`: dashboard URL, GCS address, dirs."""
    # Short: Ray's socket paths live under it and must stay below the 107-byte limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="btard-ct-", dir="/tmp"))
    port, dashboard_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{dashboard_port}"
    started = _btard(
        "cluster", "start", "--port", str(port), "--dashboard-port", str(dashboard_port), "--num-cpus", "2",
        "--object-store-memory", "256", "--temp-dir", str(temp_dir),
        # Ray's fixed default ports, which another Ray instance on this machine may hold:
        "--", f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        timeout=240,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        record = json.loads((temp_dir / "btard_head.json").read_text())
        yield SimpleNamespace(
            url=url, gcs=record["gcs_address"], temp_dir=temp_dir, output=started.stdout,
            runs=tmp_path_factory.mktemp("submitter"),
        )
    finally:
        if (temp_dir / "btard_head.json").is_file():
            stopped = _btard("cluster", "stop", "--temp-dir", str(temp_dir), timeout=120)
            if stopped.returncode != 0:  # last resort: the head's whole process group
                record = json.loads((temp_dir / "btard_head.json").read_text())
                os.killpg(record["pgid"], signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.url)


# -- no cluster needed --------------------------------------------------------------------------


@pytest.mark.parametrize("command", NEW_COMMANDS, ids=" ".join)
def test_every_new_command_has_help_with_an_example(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


def test_top_level_help_lists_the_new_commands():
    result = runner.invoke(app, ["--help"])
    for command in ("cluster", "submit", "jobs"):
        assert command in result.output


def test_no_cluster_at_the_address_is_one_line_exit_2():
    nobody = f"http://127.0.0.1:{_free_port()}"
    for args in (["cluster", "status"], ["jobs", "list"], ["jobs", "status", "x"]):
        _one_error_line(_btard(*args, "--address", nobody), f"no Ray cluster at {nobody}")
    _one_error_line(_btard("jobs", "list", BTARD_DASHBOARD=nobody), f"no Ray cluster at {nobody}")


def test_bad_config_is_refused_before_anything_is_submitted():
    result = _btard("submit", QUICKSTART, "--set", "optimizer.lrr=1", "--address", "http://127.0.0.1:1")
    _one_error_line(result, "optimizer.lrr: unknown key")


def test_stop_with_nothing_recorded_is_one_line_exit_2(tmp_path):
    _one_error_line(_btard("cluster", "stop", "--temp-dir", str(tmp_path)), "btard cluster stop --all")


# -- against the module's cluster ---------------------------------------------------------------


@pytest.mark.integration
def test_start_says_how_to_join_and_where_to_submit(cluster):
    assert f"ray start --address {cluster.gcs}" in cluster.output
    assert "RAY_AUTH_MODE=token" in cluster.output
    assert "auth_token" in cluster.output  # the token file must be copied to a joining machine
    assert f"--address {cluster.url}" in cluster.output


@pytest.mark.integration
def test_the_jobs_api_requires_the_token(cluster):
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{cluster.url}/api/jobs/", timeout=30)
    assert missing.value.code == 401
    _one_error_line(_btard("jobs", "list", "--address", cluster.url, RAY_AUTH_TOKEN="not-the-token"),
                    "rejected this machine's Ray token")


@pytest.mark.integration
def test_cluster_status_lists_the_node(cluster):
    result = runner.invoke(app, ["cluster", "status", "--address", cluster.url])
    assert result.exit_code == 0, result.output
    assert "1 node alive" in result.output
    head_ip = cluster.gcs.rsplit(":", 1)[0]
    assert head_ip in result.output and "head" in result.output and "ALIVE" in result.output


@pytest.mark.integration
def test_submit_follow_and_status_with_the_defence_off_and_on(cluster, client):
    """Two jobs at once; `runs/<name>` under the submitter's directory; followed to the end."""
    jobs = {"plain": ["--set", "protocol.checks=false"], "defended": []}
    for name, extra in jobs.items():
        result = _btard("submit", QUICKSTART, "--name", name, *SMALL, *extra, cwd=cluster.runs,
                        BTARD_DASHBOARD=cluster.url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"btard jobs logs {name} --follow" in result.stdout

    for name in jobs:
        followed = _btard("jobs", "logs", name, "--follow", "--address", cluster.url)
        assert followed.returncode == 0, followed.stdout + followed.stderr
        assert "done: test accuracy" in followed.stdout
        assert f"job {name}: SUCCEEDED" in followed.stderr

        status = runner.invoke(app, ["jobs", "status", name, "--address", cluster.url])
        assert status.exit_code == 0, status.output
        assert status.output.startswith(f"{name}: SUCCEEDED")
        run_dir = cluster.runs / "runs" / name
        assert str(run_dir) in status.output
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["steps"] == 6 and summary["peers"] == 3
        assert "name: " + name in (run_dir / "config.yaml").read_text()  # `btard run --name`

    assert not (cluster.runs / "runs" / "plain" / "ledger.db").exists()  # no defence, no tribunal
    ledger = cluster.runs / "runs" / "defended" / "ledger.db"
    assert ledger.is_file()
    verified = runner.invoke(app, ["ledger", "verify", "--db", str(ledger.parent)])
    assert verified.exit_code == 0, verified.output

    listed = runner.invoke(app, ["jobs", "list", "--address", cluster.url])
    assert listed.exit_code == 0
    assert "plain" in listed.output and "defended" in listed.output

    again = _btard("submit", QUICKSTART, "--name", "plain", "--out", str(cluster.runs / "elsewhere"),
                   "--address", cluster.url)
    _one_error_line(again, "already has a job named 'plain'")
    taken_dir = _btard("submit", QUICKSTART, "--name", "plain", cwd=cluster.runs, BTARD_DASHBOARD=cluster.url)
    _one_error_line(taken_dir, "already exists")


@pytest.mark.integration
def test_stop_a_long_job(cluster, client):
    result = _btard("submit", QUICKSTART, "--name", "long", *SMALL, "--set", "steps=100000",
                    "--set", "protocol.checks=false", "--out", str(cluster.runs / "long"), "--address", cluster.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _wait_for(client, "long", {"RUNNING", "FAILED", "SUCCEEDED"}) == "RUNNING"
    deadline = time.monotonic() + 120  # stop it while it trains, not while it starts
    while "btard run job long" not in client.get_job_logs("long") and time.monotonic() < deadline:
        time.sleep(0.5)

    stopped = _btard("jobs", "stop", "long", "--address", cluster.url)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped job long (STOPPED)" in stopped.stdout
    assert str(client.get_job_status("long")) == "STOPPED"
    status = runner.invoke(app, ["jobs", "status", "long", "--address", cluster.url])
    assert status.output.startswith("long: STOPPED")

    again = runner.invoke(app, ["jobs", "stop", "long", "--address", cluster.url])
    assert again.exit_code == 0
    assert "already finished (STOPPED)" in again.output


@pytest.mark.integration
@pytest.mark.parametrize(
    "command", [["jobs", "status"], ["jobs", "logs"], ["jobs", "logs", "--follow"], ["jobs", "stop"]], ids=" ".join
)
def test_unknown_job_name_is_one_line_exit_2(cluster, command):
    result = runner.invoke(app, [*command[:2], "no-such-job", *command[2:], "--address", cluster.url])
    assert result.exit_code == 2
    assert "no job named 'no-such-job'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.integration
def test_join_a_submitted_job_from_a_second_process(cluster, client, tmp_path):
    """`btard join` in its own process finds the submitted job by name, solves the puzzle,
    serves its probation and is promoted; the job's summary and ledger show it."""
    name = "joined"
    # The job runs until `btard finish` ends it: a join takes seconds, more on a busy machine,
    # so no fixed number of steps is sure to outlast it.
    result = _btard("submit", QUICKSTART, "--name", name, "--set", "peers=3", "--set", "steps=5000",
                    "--set", "eval_every=5000", "--set", "checkpoint_every=0", "--set", "admission.alpha=1",
                    "--set", "admission.probation_steps=3", "--out", str(cluster.runs / name), "--address", cluster.url)
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 180
    while "is joinable" not in client.get_job_logs(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "is joinable" in client.get_job_logs(name), client.get_job_logs(name)

    key = tmp_path / "joiner.key"
    joiner = subprocess.Popen([sys.executable, "-m", "btard_ray.cli", "join", "--job", name, "--address", cluster.gcs,
                               "--key", str(key)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=REPO, env=_env(PYTHONUNBUFFERED="1"))
    try:
        lines = Lines(joiner)
        lines.wait_for("admitted as peer 3", 300)
        lines.wait_for("peer 3 is active", 180)  # promoted after probation, while the job runs
        finished = _btard("finish", "--job", name, "--address", cluster.gcs, timeout=300)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert lines.rest(120) and joiner.returncode == 0, lines.text()
    finally:
        if joiner.poll() is None:
            joiner.kill()
    assert key.stat().st_mode & 0o777 == 0o600

    assert _wait_for(client, name, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"
    summary = json.loads((cluster.runs / name / "summary.json").read_text())
    record = summary["membership"]["3"]
    assert record["state"] == "active" and record["aggregated_parts"] > 0
    assert summary["active_peers"] == 4 and summary["banned"] == []
    shown = runner.invoke(app, ["ledger", "show", "3", "--db", str(cluster.runs / name), "--json"])
    assert shown.exit_code == 0, shown.output
    assert [e["kind"] for e in json.loads(shown.output)] == ["admitted", "probation_passed", "promoted"]


@pytest.mark.integration
def test_cluster_stop_stops_this_head_only(cluster):
    """Last: stops the module's head (the fixture's teardown then has nothing left to do)."""
    stopped = _btard("cluster", "stop", "--temp-dir", str(cluster.temp_dir), timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"stopped the Ray head at {cluster.gcs}" in stopped.stdout
    leftovers = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(cluster.temp_dir) in cmdline:
            leftovers.append(cmdline.replace("\0", " ")[:120])
    assert leftovers == []
    _one_error_line(_btard("cluster", "status", "--address", cluster.url), "no Ray cluster at")
