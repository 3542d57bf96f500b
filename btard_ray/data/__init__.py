"""Training data: loaders for every supported data set and the public-batch rule.

``load_dataset(cfg)`` returns the :class:`Dataset` named by a :class:`DataConfig`; every
peer then draws its batches with :func:`public_batch` and seeds dropout with
:func:`dropout_seed`, so that validators can rebuild any peer's step from public seeds.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Hashable

from btard_ray.config import DataConfig
from btard_ray.data.dataset import DataError, Dataset, ImageDataset
from btard_ray.data.sampling import batch_seed_sequence, dropout_seed, public_batch, public_indices

__all__ = [
    "DataError",
    "Dataset",
    "ImageDataset",
    "batch_seed_sequence",
    "clear_dataset_cache",
    "dropout_seed",
    "load_dataset",
    "public_batch",
    "public_indices",
]

# One loaded copy per process and distinct data: Ray may run several peers (or a peer and
# its validator duties) in one worker process, and loading CIFAR-10 takes seconds.
_CACHE: dict[Hashable, Dataset] = {}
_LOCK = threading.Lock()


def _cache_key(cfg: DataConfig) -> Hashable:
    # Only the fields that change the loaded data; batch_size, for one, does not.
    path = None if cfg.path is None else str(Path(cfg.path).expanduser().resolve())
    if cfg.name == "digits":
        return ("digits", cfg.test_fraction)
    if cfg.name == "idx":
        return ("idx", path)
    if cfg.name == "cifar10":
        return ("cifar10", path, cfg.augment)
    if cfg.name == "text":
        return ("text", path, cfg.seq_len, cfg.mask_prob)
    raise ValueError(f"unknown data set {cfg.name!r}")


def _load(cfg: DataConfig) -> Dataset:
    # Imports are local so that a peer training on digits never imports the others' code.
    if cfg.name == "digits":
        from btard_ray.data.digits import load_digits_dataset

        return load_digits_dataset(cfg.test_fraction)
    if cfg.name in ("idx", "cifar10") and cfg.path is None:
        raise DataError(f"data.path is required for data.name={cfg.name!r}")
    if cfg.name == "idx":
        from btard_ray.data.idx import load_idx_dataset

        return load_idx_dataset(cfg.path)  # type: ignore[arg-type]
    if cfg.name == "cifar10":
        from btard_ray.data.cifar import load_cifar10_dataset

        return load_cifar10_dataset(cfg.path, augment=cfg.augment)  # type: ignore[arg-type]
    from btard_ray.data.text import load_text_dataset

    return load_text_dataset(cfg.path, seq_len=cfg.seq_len, mask_prob=cfg.mask_prob)


def load_dataset(cfg: DataConfig) -> Dataset:
    """The data set described by ``cfg``, loaded once per process and then shared.

    The returned object is immutable and shared between callers with an equal config
    (same name, resolved path and data-changing parameters). Raises DataError when the
    files are missing or malformed.
    """
    key = _cache_key(cfg)
    with _LOCK:
        # Loading under the lock: two threads asking for the same data load it once.
        dataset = _CACHE.get(key)
        if dataset is None:
            dataset = _CACHE[key] = _load(cfg)
        return dataset


def clear_dataset_cache() -> None:
    """Forget every loaded data set (tests; or to free memory after a job)."""
    with _LOCK:
        _CACHE.clear()
