"""``btard join``, ``btard leave``, ``btard status`` and ``btard finish``: taking part in a
running job by name.

Errors print one line and exit 2 (no such job, the job admits nobody, a refused puzzle
solution, a leave request not signed by the peer's key or the job's key).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console()

JOB_OPT = typer.Option(..., "--job", "-j", help="The job's name (`btard run` and `btard submit` print it).")
ADDRESS_OPT = typer.Option(
    None, "--address", "-a",
    help="Ray address of the job's cluster (HOST:PORT, as `btard run` prints it). Default: $RAY_ADDRESS, else "
         "the cluster `ray start` / `btard cluster start` made on this machine.", show_default=False)
POLL_SECONDS = 1.0


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _controller(job: str, address: Optional[str]):
    from admission.client import JoinError, connect_cluster, find_controller

    try:
        connect_cluster(address, job)
        return find_controller(job)
    except JoinError as exc:
        _fail(str(exc))


def _status_of(controller: Any, job: str, doing: str) -> dict[str, Any]:
    """The controller's status; one line and exit 2 if the job ended meanwhile."""
    import ray

    try:
        return ray.get(controller.status.remote())
    except ray.exceptions.RayError:
        _fail(f"job {job!r} ended while {doing}")
        raise  # (unreachable: _fail exits)


def join(
    job: str = JOB_OPT,
    address: Optional[str] = ADDRESS_OPT,
    key: Optional[Path] = typer.Option(
        None, "--key", "-k", help="Ed25519 key file (made with mode 0600 if missing). Default: ~/.btard/keys/JOB.key; "
                                  "with --count K also JOB-1.key ... JOB-(K-1).key.", show_default=False),
    attack: Optional[str] = typer.Option(
        None, "--attack", help="Misbehave with this attack from the library (experiments: a Byzantine joiner).",
        show_default=False),
    count: int = typer.Option(1, "--count", "-c", min=1, help="Identities to join from this process, one after "
                                                               "the other (the Sybil benchmark)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stay until the job ends (this process owns the "
                                                             "peers: when it exits, they are dropped)."),
) -> None:
    """Join a running job as a new, untrusted peer.

    Solves the job's admission puzzle (argon2id, about admission.alpha gradients of work)
    for each identity, starts a peer actor on this machine, and waits while it serves its
    probation (validated at every step, never aggregated) and then trains as an active
    peer. Ctrl-C asks the job to let the peers leave at the next step boundary.

    Example:  btard join --job quickstart --address 127.0.0.1:6379
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from admission.book import AdmissionError
    from admission.client import JoinError, join as join_job, key_paths, launch_peer, load_or_create
    from btard_ray.identity import IdentityError

    import ray

    controller = _controller(job, address)
    try:
        info = ray.get(controller.job_info.remote())
    except ray.exceptions.RayError:
        _fail(f"job {job!r} ended while joining it")
    if not info["accepting"]:
        _fail(info["refusal"])
    costs = info["costs"]
    out.print(f"job [cyan]{job}[/] at step {info['step']}: a puzzle costs about "
              f"{costs['expected_evaluations']:.0f} argon2id evaluations ({costs['alpha']:g} gradients)",
              highlight=False)
    joined = []
    paths = key_paths(job, key, count)

    def identity_at(i: int) -> Any:
        try:
            return load_or_create(paths[i])
        except IdentityError as exc:
            _fail(str(exc))

    identity, actor = identity_at(0), None
    for i, path in enumerate(paths):
        upcoming = None
        if i + 1 < len(paths):
            # The next identity's actor builds (in its own Ray worker) while this one solves
            # its puzzle: with --count K the puzzles, not the actors' start-up, set the pace.
            upcoming = identity_at(i + 1)
            try:
                upcoming_actor = launch_peer(info["config"], upcoming, attack)
            except ValueError as exc:  # a bad --attack name (the config check)
                _fail(str(exc))
        with Progress(TextColumn("solving puzzle"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=out, transient=True) as progress:
            task = progress.add_task("puzzle", total=max(1, round(costs["expected_evaluations"])))
            try:
                one = join_job(controller, identity, attack,
                               on_evaluation=lambda k: progress.update(task, completed=k), info=info, actor=actor)
            except (AdmissionError, JoinError, ValueError) as exc:  # (ValueError: a bad --attack name)
                if not joined:
                    _fail(str(exc))
                # The identities already admitted stay (this process owns their peers).
                err.print(f"[bold red]error:[/] {exc}; keeping the {len(joined)} identities admitted so far",
                          highlight=False, soft_wrap=True)
                if upcoming is not None:
                    ray.kill(upcoming_actor)
                break
        joined.append(one)
        out.print(f"admitted as peer [bold]{one.peer}[/] (key {one.public_key[:16]}…, {path}) after "
                  f"{one.solution.evaluations} evaluations in {one.solution.seconds:.1f} s; probation starts at the "
                  "next step boundary", highlight=False)
        if upcoming is not None:
            identity, actor = upcoming, upcoming_actor
    if wait:
        _follow(controller, job, [j.peer for j in joined], {j.peer: p for j, p in zip(joined, paths)})


def _follow(controller: Any, job: str, peers: list[int], keys: dict[int, Path]) -> None:
    """Print each peer's state changes until all have ended or the job is over; Ctrl-C: leave."""
    import ray

    from admission.client import leave as leave_job
    from btard_ray.identity import Identity

    seen: dict[int, str] = {}
    try:
        while True:
            try:
                status = ray.get(controller.status.remote())
            except ray.exceptions.RayError:
                out.print("the job has ended")
                return
            records = status.get("peers", {})
            for peer in peers:
                record = records.get(str(peer))
                state = record["state"] if record else "queued"
                if seen.get(peer) != state:
                    seen[peer] = state
                    why = f" ({record['reason']})" if record and record.get("reason") else ""
                    out.print(f"step {status.get('step')}: peer {peer} is {state}{why}", highlight=False)
            if status.get("state") in ("finished", "failed"):
                out.print(f"the job has {status['state']}")
                return
            if all(seen.get(p) in ("banned", "left", "dropped") for p in peers):
                return
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        for peer in peers:
            if seen.get(peer) in ("active", "probation", "queued"):
                try:
                    leave_job(controller, job, peer, Identity.load(keys[peer]))
                    out.print(f"peer {peer} leaves at the next step boundary")
                except Exception as exc:  # noqa: BLE001 - the process exits anyway: say why it could not
                    err.print(f"peer {peer}: could not ask to leave: {exc}")
        # Give the driver one step boundary to let them go before this process (their owner) exits.
        time.sleep(3 * POLL_SECONDS)


def leave(
    peer: int = typer.Argument(..., help="The peer id to remove (see `btard status`)."),
    job: str = JOB_OPT,
    address: Optional[str] = ADDRESS_OPT,
    key: Optional[Path] = typer.Option(
        None, "--key", "-k", help="The peer's own key file (default ~/.btard/keys/JOB.key), or the job's key "
                                  "(RUN_DIR/job_key) to remove any peer as the job's owner.", show_default=False),
) -> None:
    """Make a peer leave a running job at the next step boundary (recorded as `left`).

    The request is signed: by the peer's own key (a joiner leaving) or by the job's key
    (its owner removing a peer).

    Example:  btard leave 6 --job quickstart --key ~/.btard/keys/quickstart.key
    """
    from admission.client import default_key_path, leave as leave_job, unwrap
    from btard_ray.identity import Identity, IdentityError

    controller = _controller(job, address)
    try:
        identity = Identity.load(key or default_key_path(job))
        left = leave_job(controller, job, peer, identity)
    except IdentityError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - LeaveError from the controller: one line
        _fail(str(unwrap(exc)))
    out.print(f"peer {left} leaves job {job} at the next step boundary")


def finish(
    job: str = JOB_OPT,
    address: Optional[str] = ADDRESS_OPT,
    key: Optional[Path] = typer.Option(
        None, "--key", "-k", help="The job's key (RUN_DIR/job_key). Default: job_key in the run directory the job "
                                  "reports, when this machine can read it.", show_default=False),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job has finished."),
) -> None:
    """End a running job early and cleanly, as its owner: the current step is its last.

    Unlike `btard jobs stop` (which kills a submitted job), the job finishes the step it is
    in, evaluates, checks that all peers' weights agree, writes the final checkpoint and
    summary.json, and records `job_finished` in the ledger with this signed request as
    evidence. `btard resume RUN_DIR` can later train it on to its configured steps.

    Example:  btard finish --job quickstart
    """
    import ray

    from admission.client import finish as finish_job, unwrap
    from btard_ray.identity import Identity, IdentityError

    controller = _controller(job, address)
    st = _status_of(controller, job, "asking it to finish")
    if st.get("state") in ("finished", "failed"):
        _fail(f"job {job!r} has already {st['state']}")
    path = key or (Path(st["run_dir"]) / "job_key" if st.get("run_dir") else None)
    if path is None:
        _fail(f"job {job!r} reports no run directory: pass --key RUN_DIR/job_key")
    try:
        at = finish_job(controller, job, Identity.load(path), int(st.get("step", 0)))
    except IdentityError as exc:
        _fail(f"{exc} (the job's key is RUN_DIR/job_key on the machine that runs the job; pass it with --key)")
    except Exception as exc:  # noqa: BLE001 - LeaveError from the controller: one line
        _fail(str(unwrap(exc)))
    out.print(f"job {job} finishes after the step it is in (asked at step {at})", highlight=False)
    if not wait:
        return
    state, step = "ended", st.get("step")
    while True:
        try:
            st = ray.get(controller.status.remote())
        except ray.exceptions.RayError:
            break  # the controller is stopped once the job has written its summary
        step = st.get("step")
        if st.get("state") in ("finished", "failed"):
            state = st["state"]
            break
        time.sleep(POLL_SECONDS / 4)
    out.print(f"job {job} has {state} (last seen at step {step})", highlight=False)
    if state == "failed":
        raise typer.Exit(1)


def status(
    job: str = JOB_OPT,
    address: Optional[str] = ADDRESS_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
) -> None:
    """Show a running job: step, recent accuracy, and every peer (active, probation, banned, left, dropped).

    Example:  btard status --job quickstart
    """
    import json

    st = _status_of(_controller(job, address), job, "asking for its status")
    if as_json:
        typer.echo(json.dumps(st, default=str))
        return
    accuracy = st.get("last_eval", {}).get("test_accuracy")
    out.print(f"job [cyan]{job}[/] {st.get('state', '?')}: step {st.get('step')}/{st.get('steps')}, test accuracy "
              + (f"{100 * accuracy:.2f}%" if accuracy is not None else "not measured yet")
              + f", {st.get('queued', 0)} admitted and waiting, {st.get('rejected_solutions', 0)} solutions rejected",
              highlight=False)
    history = st.get("history", [])
    if history:
        out.print("recent accuracy: " + ", ".join(f"step {h['step']}: {100 * h['test_accuracy']:.1f}%"
                                                  for h in history[-5:]), highlight=False)
    table = Table("peer", "state", "joined", "promoted", "ended", "reason", "parts aggregated", "key")
    for pid, r in sorted(st.get("peers", {}).items(), key=lambda kv: int(kv[0])):
        table.add_row(pid, r["state"], _step(r["joined_step"]), _step(r["promoted_step"]), _step(r["ended_step"]),
                      r.get("reason") or "", str(r.get("aggregated_parts", 0)), r["public_key"][:16] + "…")
    out.print(table)


def _step(value: Any) -> str:
    return "" if value is None else str(value)
