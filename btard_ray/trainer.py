"""The job driver: starts the peers, runs the steps, evaluates, writes the run directory.

The driver (the coordinator of design §2) only schedules and relays; it never aggregates
gradients. Every ``weight_check_every`` steps all peers report the hash of their weights;
honest replicas must agree bit for bit, and a disagreement stops the run with an error
naming the peers.

Every ``checkpoint_every`` steps (and at the end) the driver writes a checkpoint into the
run directory (:mod:`btard_ray.checkpoint`: plain ``torch.save`` files written atomically,
not Ray Train's ``Checkpoint``, which is made for Ray Train's own workers; the module says
why): the weights all active peers agree on, optimizer and schedule state, the membership
with its public keys and bans, the shared seed and the ledger's chain head. :func:`resume`
continues a job from its latest checkpoint after the driver died: new peer actors (with
new keys, recorded in the ledger as a ``job_resumed`` event) load the state, the tribunal
reopens the same ledger with the same job key, and the steps go on where the checkpoint
left them. Batches and dropout are functions of (job seed, peer id, step), so a resumed
job with the same membership computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray
from ray.actor import ActorHandle
from rich.console import Console

from attacks.registry import choose_attackers
from btard_ray.butterfly import run_step
from btard_ray.checkpoint import Checkpoint, ResumeError, StepRecord
from btard_ray.config import ConfigError, JobConfig, load_config, validate_config
from btard_ray.elastic import ElasticJob
from btard_ray.failures import PeerFailure, diverged
from btard_ray.heap import long_lived_frozen
from btard_ray.membership import DROPPED, Membership
from btard_ray.identity import Identity
from btard_ray.peer import Peer
from btard_ray.progress import TrainingProgress
from btard_ray.run_dir import RunDir
from btard_ray.runtime import connect, disconnect


class WeightDivergenceError(RuntimeError):
    """Peers that should hold identical weights do not."""


@dataclass
class _Window:
    """Losses and timings accumulated between two evaluations."""

    losses: list[float]
    outcomes: list[Any]

    @classmethod
    def empty(cls) -> "_Window":
        return cls([], [])


def spawn_peers(cfg: JobConfig, peer_ids: list[int], attackers: frozenset[int] = frozenset()
                ) -> dict[int, ActorHandle]:
    """Start one Peer actor per id with the configured resources; wait until all are built."""
    options: dict[str, Any] = {"num_cpus": cfg.resources.cpus_per_peer}
    if cfg.resources.gpus_per_peer > 0:
        options["num_gpus"] = cfg.resources.gpus_per_peer
    config = cfg.model_dump(mode="json")
    peers = {pid: Peer.options(**options).remote(config, pid, pid in attackers) for pid in peer_ids}
    ray.get([p.info.remote() for p in peers.values()])
    return peers


JOB_KEY = "job_key"
NOT_RESUMED = "not resumed"


def _resumed_peers(ckpt: Checkpoint) -> list[int]:
    """The checkpoint's active peers that a resumed job starts again: the job's own ones."""
    joined = {int(p) for p, r in ckpt.membership.items() if r.get("joined_step") is not None}
    return [p for p in ckpt.members if p not in joined]


def _membership(cfg: JobConfig, ckpt: Checkpoint | None, keys: dict[int, str], infos: dict[int, dict[str, Any]],
                attackers: list[int]) -> Membership:
    """The job's peers at its first step: the initial ones, or the checkpoint's records.

    A resumed job's active peers are new actors with new keys. Peers that joined while the
    job ran (on probation or promoted) are not resumed: their actors belonged to their
    joiners' processes, and the driver cannot take a joiner's seat with a key of its own. They
    are recorded as dropped and may join again.
    """
    membership = Membership(cfg.admission.probation_steps)
    if ckpt is not None and ckpt.membership:
        membership = Membership.from_snapshot(cfg.admission.probation_steps, ckpt.membership)
        for peer, record in membership.records.items():
            if record.joined_step is not None and peer not in keys:
                membership.end(peer, DROPPED, ckpt.step, NOT_RESUMED)
    for peer, key in keys.items():
        record = membership.records.get(peer) or membership.add(peer, key, attacker=peer in attackers)
        record.public_key, record.node = key, infos[peer]["node_id"]
    return membership


def _ledger_url(cfg: JobConfig, run_dir: RunDir) -> str:
    from btard_ray.ledger import resolve_ledger_url

    return cfg.ledger.url or resolve_ledger_url(str(run_dir.path))


def _start_tribunal(cfg: JobConfig, run_dir: RunDir, key_seed: bytes | None = None) -> ActorHandle:
    """The job's tribunal on the driver's node (the ledger file lives in the run directory).

    The job key signs the ledger's chain head; it is kept in ``job_key`` (owner-only). A new
    job makes a fresh key; a resumed one passes the seed of the key it already has.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from btard_ray.tribunal import Tribunal

    if key_seed is None:
        key_seed = secrets.token_bytes(32)
        Identity.from_seed(key_seed).save(run_dir.path / JOB_KEY, overwrite=True)
    url = _ledger_url(cfg, run_dir)
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Tribunal.options(scheduling_strategy=here).remote(cfg.name, url, key_seed)


def check_weights(outcome: Any) -> str:
    """The common weight hash of a checked step; raises WeightDivergenceError otherwise."""
    assert outcome.weight_hashes is not None
    by_hash: dict[str, list[int]] = {}
    for pid, digest in outcome.weight_hashes.items():
        by_hash.setdefault(digest, []).append(pid)
    if len(by_hash) > 1:
        groups = "; ".join(f"{h[:12]}: peers {ids}" for h, ids in by_hash.items())
        raise WeightDivergenceError(f"step {outcome.step + 1}: peers' weights differ ({groups})")
    return next(iter(by_hash))


# -- checkpoints and resume ---------------------------------------------------------------

#: Config keys that make a job what it is: a resumed job must have the checkpoint's. The
#: others (steps, eval_every, weight_check_every, checkpoint_every, resources, ray) may change.
JOB_DEFINING_KEYS = ("name", "seed", "peers", "data", "model", "optimizer", "aggregator", "protocol", "ledger",
                     "attack")


def _save_checkpoint(cfg: JobConfig, run_dir: RunDir, peers: dict[int, ActorHandle], membership: Membership, step: int,
                     *, final: bool, keys: dict[int, str], banned: list[dict[str, Any]], attackers: list[int],
                     seed: bytes | None, ledger: dict[str, Any] | None, outcomes: list[Any], window: int,
                     last_eval: dict[str, float], wall_seconds: float, resumes: list[int]) -> Checkpoint:
    """Check that every active peer holds the same weights, then write them with the job's state."""
    members = membership.active()
    hashes = dict(zip(members, ray.get([peers[p].weight_hash.remote() for p in members])))
    weight_hash = check_weights(SimpleNamespace(step=step - 1, weight_hashes=hashes))
    state = ray.get(peers[members[0]].state.remote())
    ckpt = Checkpoint(
        step=step, model=state["model"], optimizer=state["optimizer"], scheduler=state["scheduler"],
        weight_hash=weight_hash, members=list(members), keys={p: keys[p] for p in members},
        banned=[dict(b) for b in banned], attackers=list(attackers), seed=seed, ledger=ledger,
        records=[asdict(StepRecord.of(o)) for o in outcomes], window=window, last_eval=dict(last_eval),
        wall_seconds=wall_seconds, resumes=list(resumes), config=cfg.model_dump(mode="json"),
        membership=membership.snapshot(),
    )
    run_dir.save_checkpoint(ckpt, final=final)
    return ckpt


def _ledger_head(cfg: JobConfig, run_dir: RunDir) -> dict[str, Any]:
    """The ledger's chain head now (read from the database; the tribunal is idle between steps)."""
    from btard_ray.ledger import Ledger

    with Ledger(_ledger_url(cfg, run_dir), create=False) as ledger:
        head = ledger.head()
    if head is None:
        raise RuntimeError("the ledger has no chain head (no job_started event)")
    return {"seq": head.seq, "hash": head.hash, "job_public_key": head.public_key}


def _job_key_seed(path: Path) -> bytes:
    """The seed of the job key in ``path``, loaded with :meth:`Identity.load`'s checks."""
    from btard_ray.identity import IdentityError

    try:
        identity = Identity.load(path)
    except IdentityError as exc:
        raise ResumeError(str(exc)) from None
    seed = bytes.fromhex(json.loads(path.read_text())["seed"])  # the format Identity.load just checked
    assert Identity.from_seed(seed).public_hex == identity.public_hex
    return seed


def _load_peers(peers: dict[int, ActorHandle], members: list[int], ckpt: Checkpoint) -> None:
    """Every new peer takes the checkpoint's state and must then hold the checkpoint's weights."""
    state = ray.put({"model": ckpt.model, "optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler})
    hashes = dict(zip(members, ray.get([peers[p].load_state.remote(state) for p in members])))
    wrong = sorted(p for p, h in hashes.items() if h != ckpt.weight_hash)
    if wrong:
        raise WeightDivergenceError(f"step {ckpt.step}: peers {wrong} do not hold the checkpoint's weights "
                                    f"({ckpt.weight_hash[:12]}) after loading it")


def _resume_tribunal(cfg: JobConfig, run_dir: RunDir, ckpt: Checkpoint, keys: dict[int, str]) -> ActorHandle:
    """The tribunal on the job's own ledger and key, and the ``job_resumed`` event.

    The event names the step, the chain head the checkpoint saw (events after it belong to
    steps the crashed driver ran past the checkpoint, which the resumed job runs again),
    and the membership: the same peer ids, each with the public key of its new actor next
    to the one it had (private keys never leave an actor, so a new actor has a new key).
    """
    from btard_ray.ledger import Ledger

    assert ckpt.ledger is not None
    key_seed = _job_key_seed(run_dir.path / JOB_KEY)
    with Ledger(_ledger_url(cfg, run_dir), create=False) as ledger:
        head = ledger.head()
    assert head is not None
    tribunal = _start_tribunal(cfg, run_dir, key_seed)
    ray.get(tribunal.record.remote(ckpt.step, "job_resumed", None, None, {
        "from_step": ckpt.step,
        "steps": cfg.steps,
        "checkpoint_head": {"seq": ckpt.ledger["seq"], "hash": ckpt.ledger["hash"]},
        "events_after_checkpoint": head.seq - ckpt.ledger["seq"],
        "members": {str(p): keys[p] for p in sorted(keys)},
        "previous_keys": {str(p): ckpt.keys[p] for p in sorted(ckpt.keys)},
        "banned": [str(b["peer"]) for b in ckpt.banned],
        "weight_hash": ckpt.weight_hash,
    }))
    return tribunal


def load_for_resume(run_dir: RunDir, steps: int | None = None) -> tuple[JobConfig, Checkpoint]:
    """The config (``config.yaml``, with a new ``steps`` when given) and the latest checkpoint.

    Raises :class:`ResumeError` (one line) when the run cannot be resumed: no such directory
    or config, no checkpoint, already finished, a checkpoint at or past ``steps``, a config
    that is not the checkpoint's job, or (with the defence on) a job key or ledger that does
    not match the checkpoint or does not verify.
    """
    from btard_ray.ledger import Ledger, LedgerError
    from btard_ray.run_dir import CONFIG, SUMMARY

    path = run_dir.path
    if not path.is_dir():
        raise ResumeError(f"{path}: no such run directory")
    if not (path / CONFIG).is_file():
        raise ResumeError(f"{path}: no {CONFIG} (is it a btard run directory?)")
    try:
        cfg = load_config(path / CONFIG)
        if steps is not None:
            cfg = validate_config({**cfg.model_dump(mode="json"), "steps": steps})
    except ConfigError as exc:
        raise ResumeError(f"{path / CONFIG}: {exc}") from None
    if (path / SUMMARY).is_file():
        done = int(run_dir.read_summary().get("steps", 0))
        if done >= cfg.steps:
            raise ResumeError(f"{path}: already finished at step {done}"
                              + ("" if steps is not None else " (pass --steps N to train it further)"))
    ckpt = run_dir.latest_checkpoint()
    if ckpt is None:
        raise ResumeError(f"{path}: no checkpoint to resume from (one is written every checkpoint_every="
                          f"{cfg.checkpoint_every} steps; did the run stop before the first?)")
    if ckpt.step >= cfg.steps:
        raise ResumeError(f"{path}: the latest checkpoint is at step {ckpt.step}, and the job has "
                          f"{cfg.steps} steps: nothing to resume (pass --steps N with N > {ckpt.step})")
    now = cfg.model_dump(mode="json")
    changed = [k for k in JOB_DEFINING_KEYS if now.get(k) != ckpt.config.get(k)]
    if changed:
        raise ResumeError(f"{path / CONFIG}: {', '.join(changed)} differ from the config of the checkpoint at "
                          f"step {ckpt.step}: a resumed job must be the same job")
    if cfg.protocol.checks:
        if ckpt.ledger is None or ckpt.seed is None:
            raise ResumeError(f"{path}: the checkpoint at step {ckpt.step} has no ledger head or shared seed")
        public = Identity.from_seed(_job_key_seed(path / JOB_KEY)).public_hex
        if public != ckpt.ledger["job_public_key"]:
            raise ResumeError(f"{path / JOB_KEY}: job key {public[:16]}… is not the key of the checkpoint's ledger "
                              f"({str(ckpt.ledger['job_public_key'])[:16]}…)")
        try:
            with Ledger(_ledger_url(cfg, run_dir), create=False) as ledger:
                report = ledger.verify(public)
                if not report.ok:
                    raise ResumeError(f"{ledger.display_url}: the ledger does not verify: {report.problem}")
                seq = ckpt.ledger["seq"]
                event = ledger.event_at(seq)
                if event is None or event.hash != ckpt.ledger["hash"]:
                    raise ResumeError(f"{ledger.display_url}: the checkpoint's chain head (seq {seq}) is not in "
                                      "this ledger")
        except LedgerError as exc:
            raise ResumeError(str(exc)) from None
    return cfg, ckpt


def resume(run_dir: RunDir, steps: int | None = None, show_progress: bool = True,
           console: Console | None = None, loaded: tuple[JobConfig, Checkpoint] | None = None) -> dict[str, Any]:
    """Continue the job in ``run_dir`` from its latest checkpoint (``btard resume``); the summary.

    Checks everything first (:func:`load_for_resume`; ``loaded``: its result, when the
    caller already has it). Then ``config.yaml`` takes the new ``steps``, the metrics lines
    of steps after the checkpoint (the crashed driver's, run again now) are dropped, and
    :func:`train` continues from the checkpoint.
    """
    with run_dir.driver_lock():  # before anything is written: the job's driver may still be alive
        cfg, ckpt = loaded or load_for_resume(run_dir, steps)
        run_dir.write_config(cfg)
        run_dir.truncate_metrics(ckpt.step)
        return train(cfg, run_dir, show_progress, console, resume_from=ckpt)


def train(cfg: JobConfig, run_dir: RunDir, show_progress: bool = True, console: Console | None = None,
          resume_from: Checkpoint | None = None) -> dict[str, Any]:
    """Run the job described by ``cfg`` and fill ``run_dir``; returns the summary.

    Step ``t`` (0-based) is the update computed from the peers' batches for step t; metrics
    and the summary count completed updates (``step = t + 1``). ``resume_from``: continue
    the job in ``run_dir`` from this checkpoint instead of starting it (use :func:`resume`,
    which checks the checkpoint, the config and the ledger first). The driver holds the run
    directory's lock while it runs (:class:`~btard_ray.run_dir.RunDirBusy` if another has it).
    """
    with run_dir.driver_lock():
        return _train(cfg, run_dir, show_progress, console, resume_from)


def _train(cfg: JobConfig, run_dir: RunDir, show_progress: bool, console: Console | None,
           resume_from: Checkpoint | None) -> dict[str, Any]:
    assert cfg.name is not None
    ckpt = resume_from
    if ckpt is None:
        run_dir.create(cfg)
    started = connect(cfg.ray, cfg.name)
    peers: dict[int, ActorHandle] = {}
    # wall time counts the training of every part of a resumed job
    t_start = time.perf_counter() - (ckpt.wall_seconds if ckpt else 0.0)
    tribunal: ActorHandle | None = None
    job: ElasticJob | None = None
    finished = False
    try:
        if ckpt is None:
            attackers = choose_attackers(cfg.seed, list(range(cfg.peers)), cfg.attack.count) if cfg.attack.name else []
        else:
            attackers = list(ckpt.attackers)
        peers = spawn_peers(cfg, list(range(cfg.peers)) if ckpt is None else _resumed_peers(ckpt),
                            frozenset(attackers))
        members = sorted(peers)
        infos = dict(zip(members, ray.get([peers[p].info.remote() for p in members])))
        num_params = infos[members[0]]["num_params"]
        keys = {p: infos[p]["public_key"] for p in members}
        banned: list[dict[str, Any]] = [] if ckpt is None else [dict(b) for b in ckpt.banned]
        first = 0 if ckpt is None else ckpt.step
        if ckpt is not None:
            _load_peers(peers, members, ckpt)
        seed: bytes | None = None
        if cfg.protocol.checks:
            from btard_ray.protocol.randomness import initial_seed
            from btard_ray.secure_step import run_secure_step

            ray.get([peers[p].set_keys.remote(keys) for p in members])
            if ckpt is None:
                tribunal = _start_tribunal(cfg, run_dir)
                ray.get(tribunal.record.remote(0, "job_started", None, None, {
                    "members": {str(p): keys[p] for p in members}, "config": cfg.model_dump(mode="json")}))
                seed = initial_seed(cfg.name, cfg.seed)
            else:
                tribunal = _resume_tribunal(cfg, run_dir, ckpt, keys)
                seed = ckpt.seed
        membership = _membership(cfg, ckpt, keys, infos, attackers)
        window, all_outcomes = _Window.empty(), []
        pending = None  # the next step's commitments, when issued with the previous step
        last_eval: dict[str, float] = {}
        weight_hash = ""
        resumes: list[int] = []
        if ckpt is not None:
            all_outcomes = list(ckpt.step_records())
            carried = all_outcomes[len(all_outcomes) - ckpt.window:]
            window = _Window([r.mean_loss for r in carried], list(carried))
            last_eval, weight_hash, resumes = dict(ckpt.last_eval), ckpt.weight_hash, [*ckpt.resumes, ckpt.step]

        def checkpoint(step: int, final: bool = False) -> Checkpoint:
            return _save_checkpoint(cfg, run_dir, peers, membership, step, final=final, keys=keys, banned=banned,
                                    attackers=attackers, seed=seed if tribunal is not None else None,
                                    ledger=_ledger_head(cfg, run_dir) if tribunal is not None else None,
                                    outcomes=all_outcomes, window=len(window.losses), last_eval=last_eval,
                                    wall_seconds=time.perf_counter() - t_start, resumes=resumes)

        job = ElasticJob(cfg, run_dir, peers, membership, keys, banned, tribunal, console if show_progress else None)
        if ckpt is not None:
            job.resumed(ckpt.step)
        job.start_controller(first, seed)
        if console is not None and cfg.protocol.checks and cfg.admission.enabled:
            address = ray.get_runtime_context().gcs_address
            console.print(f"job [cyan]{cfg.name}[/] is joinable; from another terminal on this machine or cluster:\n"
                          f"  btard join --job {cfg.name} --address {address}", highlight=False, soft_wrap=True)
        with TrainingProgress(cfg.steps, cfg.name, enabled=show_progress, console=console,
                              completed=first) as progress, long_lived_frozen():
            end = cfg.steps  # the job's last step + 1: cfg.steps, or earlier when the owner asks (btard finish)
            t = first
            collapse: dict[str, Any] | None = None  # {step, reason} once the weights diverged
            while t < end:
                if job.boundary(t, seed, last_eval):
                    pending = None  # the membership changed: the prefetched commitments are void
                if job.finish_request is not None and end > t + 1:
                    end = t + 1  # this step is the last: evaluated, weight-checked, then the final checkpoint
                    progress.set_total(end)
                last = t + 1 == end
                checked = (t + 1) % cfg.weight_check_every == 0 or last
                members = membership.active()
                while True:  # a peer that crashes or goes silent mid-step: drop it, run the step again
                    try:
                        if tribunal is not None:
                            outcome = run_secure_step(cfg, peers, members, keys, t, seed, tribunal, checked,
                                                      committed=pending, prefetch=not last,
                                                      probation=membership.on_probation())
                        else:
                            outcome = run_step(peers, members, t, checked, cfg.timeouts.phase_seconds)
                        break
                    except PeerFailure as failure:
                        pending = None
                        if diverged(failure, members):
                            collapse = {"step": t, "reason": "every peer's gradient is non-finite: the weights "
                                                             "diverged"}
                            break
                        job.drop(failure.failed, t, failure.phase)
                        members = membership.active()
                if collapse is not None:
                    # Nothing left to train: evaluate the diverged model and end the job with
                    # its results (the same files as a finished job, `diverged` in the summary).
                    end = t
                    last_eval = ray.get(peers[members[0]].evaluate.remote())
                    job.history.append({"step": t, **last_eval})
                    run_dir.append_metrics({"step": t, **last_eval, "active_peers": len(members),
                                            "wall_seconds": time.perf_counter() - t_start, "diverged": True})
                    if console is not None:
                        console.print(f"[red]step {t}: {collapse['reason']}[/]")
                    break
                if tribunal is not None:
                    pending = outcome.next_commits
                    seed = outcome.next_seed
                    for ban in outcome.bans:
                        banned.append({"peer": ban["peer"], "step": t, "reason": ban["reason"]})
                if checked:
                    weight_hash = check_weights(outcome)
                window.losses.append(outcome.mean_loss)
                window.outcomes.append(outcome)
                all_outcomes.append(outcome)
                accuracy = None
                if (t + 1) % cfg.eval_every == 0 or last:
                    last_eval = ray.get(peers[outcome.members[0]].evaluate.remote())
                    accuracy = last_eval["test_accuracy"]
                    job.history.append({"step": t + 1, **last_eval})
                    run_dir.append_metrics(
                        {
                            "step": t + 1,
                            "train_loss": sum(window.losses) / len(window.losses),
                            **last_eval,
                            "active_peers": len(outcome.members),
                            "lr": outcome.lr,
                            "wall_seconds": time.perf_counter() - t_start,
                            "step_seconds": sum(o.wall_s for o in window.outcomes) / len(window.outcomes),
                        }
                    )
                    window = _Window.empty()
                progress.advance(outcome.mean_loss, len(outcome.members), accuracy)
                # Bans, drops and probation results take effect at the step boundary: the
                # peers that go leave the membership (the partition is recomputed from the new
                # n) and their actors are stopped.
                job.step_done(t, outcome)
                # A checkpoint after the step's bans: the state at the start of step t + 1.
                if cfg.checkpoint_every and (t + 1) % cfg.checkpoint_every == 0 and not last:
                    checkpoint(t + 1)
                t += 1

        final = checkpoint(end, final=True)
        weight_hash = final.weight_hash
        summary = _summary(cfg, all_outcomes, last_eval, membership.active(), num_params, weight_hash,
                           time.perf_counter() - t_start)
        summary["attackers"] = sorted({*attackers, *(p for p, r in membership.records.items() if r.attacker)})
        summary["banned"] = banned
        summary["resumed_from"] = resumes  # steps this job was resumed from (btard resume)
        summary["diverged"] = collapse  # {step, reason} when the weights went non-finite, else None
        summary.update(job.summary())
        # `btard finish`: the step the owner's request arrived at (the job ended one step later);
        # a request that came with the job's last step anyway changed nothing
        early_end = job.finish_request is not None and end < cfg.steps and collapse is None
        summary["finished_early"] = ({"asked_at_step": job.finish_request["asked_at_step"], "steps": end}
                                     if early_end else None)
        if tribunal is not None:
            early = {"finished_early": True, "evidence": job.finish_request["evidence"]} if early_end else {}
            ray.get(tribunal.record.remote(end, "job_finished", None, None, {
                "final_test_accuracy": summary["final_test_accuracy"], "weight_hash": weight_hash,
                "banned": [str(b["peer"]) for b in banned], **early}))
            summary["job_public_key"] = ray.get(tribunal.public_key.remote())
            summary["accusations"] = sum(o.accusations for o in all_outcomes)
            # Steps in which a forged gradient was found: nobody applied them.
            summary["skipped_steps"] = [o.step for o in all_outcomes if o.skipped]
            summary["protocol_bytes_per_step"] = sum(o.protocol_bytes for o in all_outcomes) / max(len(all_outcomes), 1)
        run_dir.write_summary(summary)
        finished = True
        return summary
    finally:
        if job is not None:  # `btard join` and `btard status` see how the job ended
            job.close("finished" if finished else "failed")
        for actor in peers.values():
            ray.kill(actor)
        if tribunal is not None:
            ray.kill(tribunal)
        disconnect(started)


def _summary(
    cfg: JobConfig,
    outcomes: list[Any],
    last_eval: dict[str, float],
    members: list[int],
    num_params: int,
    weight_hash: str,
    wall: float,
) -> dict[str, Any]:
    n = len(members)
    # The first steps include actor warm-up (imports, first allocation): leave them out of
    # the per-step means when there are enough steps.
    steady = outcomes[min(len(outcomes) // 10, 5):] or outcomes
    count = len(steady) or 1  # a job that diverged in its first step has no steps to average
    return {
        "job": cfg.name,
        "final_test_accuracy": last_eval.get("test_accuracy", math.nan),
        "final_test_loss": last_eval.get("test_loss", math.nan),
        "steps": len(outcomes),
        "wall_seconds": wall,
        "peers": cfg.peers,
        "active_peers": n,
        "defence": cfg.protocol.checks,
        "aggregator": cfg.aggregator.name,
        "num_params": num_params,
        "weights_agree": True,
        "weight_hash": weight_hash,
        "mean_step_seconds": sum(o.wall_s for o in steady) / count,
        "phase_seconds": {ph: sum(o.phase_s.get(ph, 0.0) for o in steady) / count
                          for ph in dict.fromkeys(ph for o in steady for ph in o.phase_s)},
        "bytes_per_peer_step": sum(o.bytes_per_peer for o in steady) / count,
        "butterfly_min_bytes_per_peer_step": 2 * (n - 1) / n * num_params * 4,
    }
