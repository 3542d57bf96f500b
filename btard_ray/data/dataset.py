"""The data set interface every peer trains on, and the in-memory image data set behind it.

A :class:`Dataset` is immutable once loaded and every batch it builds is a pure function of
its arguments: ``train_batch(indices, rng)`` draws any randomness (augmentation, masking)
from ``rng`` only, and ``test_batches`` has none. That is what lets a validator rebuild a
peer's batch bit for bit from public seeds (see :mod:`btard_ray.data.sampling`).

:class:`ImageDataset` is the classification implementation shared by the digits, IDX and
CIFAR-10 loaders. It keeps the raw ``uint8`` pixels (four times smaller than float32, which
matters when every Ray actor on a machine holds its own copy) and normalises each batch on
the fly with per-channel statistics of the training split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterator, Literal

import numpy as np
import torch

Task = Literal["classification", "mlm"]
Batch = dict[str, torch.Tensor]

#: ``augment(raw_images, rng) -> raw_images``: a batch of raw (B, C, H, W) uint8 images in,
#: a new array of the same shape out, all randomness drawn from ``rng``.
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class DataError(ValueError):
    """Data that cannot be used: a missing, truncated or malformed file. The message names it."""


class Dataset(ABC):
    """A training and a test split with a deterministic batch builder.

    Attributes:
        name: the data set's name (``digits``, ``idx``, ``cifar10``, ``text``).
        task: ``"classification"`` (batches ``{"x", "y"}``) or ``"mlm"`` (batches
            ``{"input_ids", "attention_mask", "labels"}`` in HuggingFace form).
        num_train: number of training examples; valid indices are ``0..num_train-1``.
        num_test: number of test examples.
        input_shape: shape of one example: ``(C, H, W)`` for images, ``(seq_len,)`` for text.
        num_classes: number of classes, or the vocabulary size for ``mlm``.
    """

    def __init__(
        self,
        name: str,
        task: Task,
        num_train: int,
        num_test: int,
        input_shape: tuple[int, ...],
        num_classes: int,
    ) -> None:
        self.name = name
        self.task: Task = task
        self.num_train = int(num_train)
        self.num_test = int(num_test)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)

    @abstractmethod
    def train_batch(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        """The training examples at ``indices`` (in that order) as one batch.

        Deterministic given ``indices`` and the state of ``rng``; any randomness (CIFAR
        augmentation, MLM masking) is drawn from ``rng`` and from nothing else.
        Raises ValueError on indices that are not a 1-D integer array within range.
        """

    @abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The whole test split in a fixed order, ``batch_size`` examples at a time (the
        last batch may be smaller). No randomness: two passes yield identical tensors."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, task={self.task!r}, "
            f"num_train={self.num_train}, num_test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def check_indices(indices: np.ndarray, size: int) -> np.ndarray:
    """``indices`` as a 1-D int64 array, or ValueError if it is not one within ``[0, size)``."""
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"indices must lie in [0, {size}), got [{arr.min()}, {arr.max()}]")
    return arr


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int, or ValueError if it is not positive."""
    if int(batch_size) != batch_size or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def channel_stats(raw: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of ``raw * scale``.

    ``raw`` is (N, C, H, W) uint8. The statistics come from a histogram of the 256 possible
    values, which is exact, needs no float copy of the data, and cannot depend on summation
    order, so every peer computes the same float32 constants. A constant channel gets std 1
    so that normalising never divides by zero.
    """
    if raw.dtype != np.uint8 or raw.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) uint8 images, got {raw.dtype} {raw.shape}")
    values = np.arange(256, dtype=np.float64) * scale
    means, stds = [], []
    for c in range(raw.shape[1]):
        counts = np.bincount(raw[:, c].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(np.sqrt(var) if var > 0 else 1.0)
    return np.asarray(means, np.float32), np.asarray(stds, np.float32)


class ImageDataset(Dataset):
    """Classification over raw uint8 images, normalised per channel with train statistics.

    A batch's ``x`` is ``(raw * scale - mean[c]) / std[c]`` in float32 (C, H, W), where
    ``scale`` maps raw values to [0, 1] (1/255 for 8-bit pixels, 1/16 for the digits) and
    mean/std are the training split's per-channel statistics of the scaled values. The
    optional ``augment`` acts on raw pixels before normalisation, as torchvision's usual
    ``RandomCrop -> ToTensor -> Normalize`` pipeline does, so padding is black.
    """

    def __init__(
        self,
        name: str,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        scale: float,
        num_classes: int,
        augment: Augment | None = None,
    ) -> None:
        for what, images, labels in (
            ("train", train_images, train_labels),
            ("test", test_images, test_labels),
        ):
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"{what} images must be (N, C, H, W) uint8, got {images.dtype} {images.shape}")
            if labels.shape != (images.shape[0],):
                raise ValueError(f"{what}: {images.shape[0]} images but labels of shape {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"{what} labels must lie in [0, {num_classes})")
        if train_images.shape[1:] != test_images.shape[1:]:
            raise ValueError(f"train images {train_images.shape[1:]} != test images {test_images.shape[1:]}")
        super().__init__(
            name=name,
            task="classification",
            num_train=train_images.shape[0],
            num_test=test_images.shape[0],
            input_shape=train_images.shape[1:],
            num_classes=num_classes,
        )
        self.scale = np.float32(scale)
        self.mean, self.std = channel_stats(train_images, scale)
        self.augment = augment
        # Read-only arrays: a Dataset is shared by every caller in the process (the loader
        # caches it), so an accidental in-place edit would silently change other peers' data.
        self._train_x = read_only(train_images)
        self._train_y = read_only(train_labels.astype(np.int64))
        self._test_x = read_only(test_images)
        self._test_y = read_only(test_labels.astype(np.int64))

    def normalise(self, raw: np.ndarray) -> torch.Tensor:
        """Raw (B, C, H, W) uint8 pixels as the normalised float32 tensor the model sees."""
        shape = (1, -1, 1, 1)
        x = (raw.astype(np.float32) * self.scale - self.mean.reshape(shape)) / self.std.reshape(shape)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def train_batch(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        idx = check_indices(indices, self.num_train)
        raw = self._train_x[idx]
        if self.augment is not None:
            raw = self.augment(raw, rng)
        return {"x": self.normalise(raw), "y": torch.from_numpy(self._train_y[idx].copy())}

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        batch_size = check_batch_size(batch_size)
        for start in range(0, self.num_test, batch_size):
            stop = start + batch_size
            yield {
                "x": self.normalise(self._test_x[start:stop]),
                "y": torch.from_numpy(self._test_y[start:stop].copy()),
            }

    def raw_train_images(self) -> np.ndarray:
        """The training images as stored (read-only uint8), e.g. to audit a batch by hand."""
        return self._train_x


def read_only(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, read-only view of ``array`` (no copy when it is already contiguous)."""
    # A read-only *view*: freezes our handle without copying (CIFAR is 150 MB) and without
    # making the caller's own array read-only.
    out = np.ascontiguousarray(array).view()
    out.flags.writeable = False
    return out
