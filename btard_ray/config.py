"""The job configuration: a typed, validated schema loaded from YAML.

A config is a YAML mapping validated into :class:`JobConfig`. Every CLI command that takes a
config also takes ``--set dotted.key=value`` overrides, applied to the raw mapping before
validation so that an override is checked exactly like a key in the file. Any problem (a
missing file, bad YAML, an unknown key, a wrong type) raises :class:`ConfigError` whose
message is one line naming the key or the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line that names the culprit."""


class _Strict(BaseModel):
    # extra="forbid" turns a typo in a key into an error instead of a silently ignored key.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the training data comes from and how a peer's public batch is drawn.

    ``name``: ``digits`` (scikit-learn's bundled 8x8 handwritten digits), ``idx`` (an
    MNIST-format directory such as MNIST or Fashion-MNIST, gzipped or not), ``cifar10`` (the
    python-pickle CIFAR-10 directory) or ``text`` (masked-LM over a local text file).
    """

    name: Literal["digits", "idx", "cifar10", "text"] = "digits"
    path: Path | None = None
    batch_size: int = Field(32, gt=0)
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="digits only")
    augment: bool = Field(False, description="cifar10: random crop and flip from the public seed")
    seq_len: int = Field(64, gt=1, description="text only")
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="text only")


class ModelConfig(_Strict):
    """Which network every peer trains (all peers hold identical replicas)."""

    name: Literal["mnist_cnn", "resnet18", "albert_mlm"] = "mnist_cnn"
    # ALBERT (albert_mlm) sizes; ignored by the other models.
    embedding_size: int = Field(64, gt=0)
    hidden_size: int = Field(128, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(256, gt=0)


class OptimizerConfig(_Strict):
    """The optimizer every peer applies to the aggregated gradient.

    ``sgd`` uses (Nesterov) momentum and decoupled-from-nothing L2 weight decay as in
    ``torch.optim.SGD``; ``adam`` and ``lamb`` are for the ALBERT model. ``schedule`` scales
    the learning rate per step: ``cosine`` is lr·½(1+cos(π·t/T)) after a linear warm-up.
    """

    name: Literal["sgd", "adam", "lamb"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)


class AggregatorConfig(_Strict):
    """How each part of the gradient is aggregated by its aggregator peer.

    ``tau``, ``eps`` and ``max_iters`` are CenteredClip's (and ``eps``/``max_iters`` the
    geometric median's); ``trim_ratio`` is the fraction cut from each side by the trimmed mean.
    """

    name: Literal["centered_clip", "mean", "coordinate_median", "trimmed_mean", "geometric_median"] = (
        "centered_clip"
    )
    tau: float = Field(5.0, gt=0.0)
    eps: float = Field(1e-6, gt=0.0)
    max_iters: int = Field(500, gt=0)
    trim_ratio: float = Field(0.2, ge=0.0, lt=0.5)

    def params(self) -> dict[str, Any]:
        """Keyword arguments for :func:`btard_ray.aggregation.make_aggregator`."""
        if self.name == "centered_clip":
            return {"tau": self.tau, "eps": self.eps, "max_iters": self.max_iters}
        if self.name == "geometric_median":
            return {"eps": self.eps, "max_iters": self.max_iters}
        if self.name == "trimmed_mean":
            return {"trim_ratio": self.trim_ratio}
        return {}


class ResourcesConfig(_Strict):
    """Ray resources of one peer actor. Fractional CPUs let many peers share a small machine."""

    cpus_per_peer: float = Field(0.25, ge=0.0)
    gpus_per_peer: float = Field(0.0, ge=0.0)
    torch_threads: int = Field(1, gt=0, description="torch.set_num_threads in every peer")


class RayConfig(_Strict):
    """How the job reaches Ray. ``address: null`` starts a local instance for the job."""

    address: str | None = None
    num_cpus: int | None = Field(None, gt=0, description="local instance only")
    object_store_memory_mb: int = Field(512, gt=77, description="local instance only")


class ProtocolConfig(_Strict):
    """The BTARD defence (design §4). ``checks: false`` runs the bare butterfly all-reduce.

    With checks on, every message is signed, parts are committed before the scatter, the
    shared seed comes from commit-reveal, every aggregate is checked by a random projection,
    ``validators`` peers per step re-compute a random peer's gradient, up to
    ``suspect_audits`` peers whose parts CenteredClip clipped (distance > τ) are re-computed
    too, and accusations go to the tribunal, whose verdicts are written to the ledger.
    """

    checks: bool = True
    validators: int = Field(1, ge=0, description="m: validators drawn per step")
    suspect_audits: int = Field(
        2, ge=0, description="clipped peers (distance > tau in some part) re-computed per step, most clipped first")
    peer_signature_checks: bool = Field(
        False, description="peers re-verify every relayed signature (the relay always verifies)")
    validation_rtol: float = Field(1e-4, gt=0.0, description="relative tolerance of a re-computed gradient")
    distance_rtol: float = Field(1e-5, gt=0.0, description="peer vs aggregator distance agreement")


class AdmissionConfig(_Strict):
    """Admission of new peers while a job runs (design §5; ``btard join``).

    A joiner solves an argon2id puzzle whose expected cost is ``alpha`` times the measured
    cost of one gradient, then serves ``probation_steps`` steps in which it computes and
    commits gradients that are validated at every step and never aggregated. At most
    ``max_joins_per_step`` newcomers start probation per step, and only while the peers on
    probation are at most ``max_probation_share`` of the active peers.
    """

    enabled: bool = Field(True, description="accept `btard join` (needs protocol.checks)")
    alpha: float = Field(20.0, gt=0.0, description="puzzle cost in gradients")
    probation_steps: int = Field(10, ge=1)
    max_joins_per_step: int = Field(1, ge=1)
    max_probation_share: float = Field(0.5, gt=0.0, le=1.0, description="cap of peers on probation / active")
    max_joined_share: float = Field(
        0.45, ge=0.0, lt=0.5,
        description="promoted joiners at most this share of the active peers (the owner's peers keep a majority)")
    expiry_steps: int = Field(50, ge=1, description="steps a puzzle challenge stays valid")
    challenges_per_step: int = Field(32, ge=1, description="puzzles handed out per step (all joiners together)")
    memlimit_mb: int = Field(8, ge=1, description="argon2id memory per puzzle evaluation")
    opslimit: int = Field(1, ge=1, description="argon2id passes per puzzle evaluation")


class TimeoutsConfig(_Strict):
    """How long the driver waits for peers before it drops them (not a ban: crashes happen)."""

    phase_seconds: float = Field(
        120.0, gt=0.0, description="a peer silent this long in one round of a step is dropped")


class LedgerConfig(_Strict):
    """Where verdicts go. ``url: null`` is ``sqlite:///<run dir>/ledger.db``."""

    url: str | None = None


class AttackConfig(_Strict):
    """Byzantine peers for experiments and tests: ``count`` peers chosen from the seed run
    attack ``name`` at steps ``start_step``, ``start_step + every``, ... (before ``stop_step``).
    """

    name: str | None = None
    count: int = Field(1, ge=0)
    start_step: int = Field(0, ge=0)
    every: int = Field(1, gt=0)
    stop_step: int | None = Field(None, ge=0)
    params: dict[str, float] = Field(default_factory=dict)

    def active_at(self, step: int) -> bool:
        """Whether the attackers misbehave at (0-based) ``step``."""
        if step < self.start_step or (self.stop_step is not None and step >= self.stop_step):
            return False
        return (step - self.start_step) % self.every == 0


class JobConfig(_Strict):
    """One training job. See ``configs/quickstart.yaml`` for a commented example."""

    name: str | None = None
    seed: int = 0
    peers: int = Field(6, gt=0, description="number of initial peers")
    steps: int = Field(150, gt=0)
    eval_every: int = Field(10, gt=0)
    weight_check_every: int = Field(10, gt=0, description="steps between weight-hash checks")
    checkpoint_every: int = Field(
        50, ge=0, description="steps between checkpoints for `btard resume` (0: only the final one)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    aggregator: AggregatorConfig = AggregatorConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    ledger: LedgerConfig = LedgerConfig()
    attack: AttackConfig = AttackConfig()
    admission: AdmissionConfig = AdmissionConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()

    @model_validator(mode="after")
    def _data_needs_path(self) -> "JobConfig":
        if self.data.name in ("idx", "cifar10") and self.data.path is None:
            raise ValueError(f"data.path is required for data.name={self.data.name!r}")
        if self.attack.name is not None:
            from attacks.registry import UnknownAttack, attack_class  # light: no Ray

            try:
                attack_class(self.attack.name)
            except UnknownAttack as exc:
                raise ValueError(f"attack.name: {exc}") from None
        if self.protocol.checks and self.aggregator.name != "centered_clip":
            raise ValueError(
                "aggregator.name: protocol.checks needs centered_clip (the aggregate check verifies "
                "CenteredClip); set protocol.checks=false for another aggregator"
            )
        if self.attack.name is not None and self.attack.count * 2 >= self.peers:
            raise ValueError(
                f"attack.count: {self.attack.count} attackers among {self.peers} peers: honest peers must be a strict majority"
            )
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``dotted.key=value`` into its key path and a YAML-typed value (``1`` is an int)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``dotted.key=value`` override applied in order."""
    result: dict[str, Any] = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise ConfigError(f"--set {text!r}: {dotted} is not a mapping")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "value_error":  # our own validators: the message names the key already
        msg = str(err.get("ctx", {}).get("error", msg))
        if not loc:
            return msg
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    more = len(exc.errors()) - 1
    return f"{loc}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validate_config(raw: Mapping[str, Any]) -> JobConfig:
    """Validate a raw mapping into a :class:`JobConfig`, or raise a one-line ConfigError."""
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> JobConfig:
    """Load ``path`` (YAML; ``None`` means all defaults), apply overrides, validate.

    When the config has no ``name``, the file's stem becomes the job name.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{where} not valid YAML") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, not {type(loaded).__name__}")
        raw = loaded
    raw = apply_overrides(raw, overrides)
    cfg = validate_config(raw)
    if cfg.name is None and path is not None:
        cfg.name = Path(path).stem
    return cfg


def dump_config(cfg: JobConfig) -> str:
    """The resolved config as YAML, loadable again with :func:`load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
