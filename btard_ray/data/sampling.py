"""The public-batch rule: what peer i computes at step t is a pure function of public values.

Peer ``peer_id``'s batch at step ``step`` depends only on (job seed, peer id, step) and the
data set, never on the peer's own randomness, so that any validator or judge can rebuild
it, augmentation, masking and dropout included, and re-compute the gradient exactly.

From those three numbers one :class:`numpy.random.SeedSequence` is built
(:func:`batch_seed_sequence`). Its own stream picks the example indices, ``batch_size`` of
them without replacement (examples repeat across steps and peers, never within a batch);
its child 0 seeds the rng handed to ``Dataset.train_batch`` (CIFAR crops and flips, MLM
masks); its child 1 gives the 63-bit seed of torch's generator for the forward pass
(:func:`dropout_seed`). Children are derived by index, so drawing one never shifts another.

The streams are those of numpy's SeedSequence, PCG64 and ``Generator.choice``: bit-identical
for the same numpy version, which is why every peer of a job must run the same versions.
"""

from __future__ import annotations

import numpy as np

from btard_ray.data.dataset import Batch, Dataset, check_batch_size

# Tags the entropy so these streams differ from anything else derived from the job seed.
_DOMAIN = 0x42544152  # b"BTAR"
_BATCH_CHILD = 0
_DROPOUT_CHILD = 1
_MAX_ID = 2**32  # peer ids and steps are fixed-width 32-bit words of the entropy


def batch_seed_sequence(seed: int, peer_id: int, step: int) -> np.random.SeedSequence:
    """The SeedSequence of peer ``peer_id`` at step ``step`` of the job seeded ``seed``.

    ``seed`` may be any int (negative ones are mapped one-to-one onto non-negative ones);
    ``peer_id`` and ``step`` must lie in ``[0, 2**32)``, else ValueError.
    """
    for what, value in (("peer_id", peer_id), ("step", step)):
        if int(value) != value or not 0 <= value < _MAX_ID:
            raise ValueError(f"{what} must be an integer in [0, 2**32), got {value!r}")
    if int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    # Zig-zag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...; SeedSequence takes non-negative ints only.
    # The seed goes last: it alone has variable width, so distinct triples cannot collide.
    encoded = 2 * seed if seed >= 0 else -2 * seed - 1
    return np.random.SeedSequence([_DOMAIN, int(peer_id), int(step), encoded])


def public_indices(num_train: int, seed: int, peer_id: int, step: int, batch_size: int) -> np.ndarray:
    """The training-example indices (int64, distinct) of peer ``peer_id``'s batch at ``step``.

    ValueError when ``batch_size`` exceeds ``num_train`` (a batch never repeats an example).
    """
    batch_size = check_batch_size(batch_size)
    if batch_size > num_train:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_train} training examples")
    rng = np.random.default_rng(batch_seed_sequence(seed, peer_id, step))
    return rng.choice(num_train, size=batch_size, replace=False).astype(np.int64)


def public_batch(dataset: Dataset, seed: int, peer_id: int, step: int, batch_size: int) -> Batch:
    """Peer ``peer_id``'s training batch at step ``step``: a pure function of its arguments.

    ``dataset.train_batch(public_indices(...), rng)`` with ``rng`` seeded by child 0 of
    :func:`batch_seed_sequence`; any validator that calls this with the same arguments gets
    bit-identical tensors.
    """
    indices = public_indices(dataset.num_train, seed, peer_id, step, batch_size)
    sequence = batch_seed_sequence(seed, peer_id, step)
    rng = np.random.default_rng(_child(sequence, _BATCH_CHILD))
    return dataset.train_batch(indices, rng)


def dropout_seed(seed: int, peer_id: int, step: int) -> int:
    """A seed in ``[0, 2**63)`` for ``torch.manual_seed`` before peer ``peer_id``'s forward
    pass at ``step`` (dropout masks), from child 1 of :func:`batch_seed_sequence`.

    63 bits so that it also fits a signed int64 wherever a seed is stored as one.
    """
    state = _child(batch_seed_sequence(seed, peer_id, step), _DROPOUT_CHILD).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _child(sequence: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    # Exactly what sequence.spawn() yields as its index-th child, but without spawn()'s
    # hidden counter, so the result does not depend on what was drawn before.
    return np.random.SeedSequence(
        entropy=sequence.entropy,
        spawn_key=(*sequence.spawn_key, index),
        pool_size=sequence.pool_size,
    )
