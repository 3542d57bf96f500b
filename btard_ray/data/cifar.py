"""CIFAR-10 in its python-pickle distribution, with optional crop-and-flip augmentation.

The directory (or its ``cifar-10-batches-py`` subdirectory) holds ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``, each a pickled dict with ``b"data"``, an (N, 3072)
uint8 array whose rows are the red, green and blue 32x32 planes, and ``b"labels"``, N ints
in 0..9.

The files are unpickled with an allow-list of globals (numpy's array reconstructors only):
a pickle can run arbitrary code on load, and a data directory is the kind of thing one
downloads from somewhere. Anything else in a file is refused with a DataError.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from btard_ray.data.dataset import DataError, ImageDataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
SUBDIRECTORY = "cifar-10-batches-py"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
#: Augmentation: zero-pad every side by this much, then crop back to 32x32.
CROP_PADDING = 4


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Take the reconstructors from numpy's own reductions rather than importing them by
    # name: their module moved (numpy.core -> numpy._core) and the old name warns.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 encode bytes objects with this.
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array and dtype reconstructors."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}") from None


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file as (images (N, 3, 32, 32) uint8, labels (N,) int64).

    Raises DataError naming the file when it is missing, not a safe pickle of a dict, or
    holds data of the wrong type, shape or label range.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        # encoding="bytes": the original files were written by Python 2, whose str keys
        # (b"data", b"labels") must stay bytes.
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # unpickling fails in many ways on bad input; all mean the same
        raise DataError(f"{path}: not a CIFAR-10 pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: missing key {'data' if data is None else 'labels'!r}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be an (N, 3072) uint8 array, got {what}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: 'labels' must be a list of integers") from None
    if label_array.shape != (data.shape[0],):
        raise DataError(f"{path}: {label_array.size} labels for {data.shape[0]} images")
    if label_array.size and (label_array.min() < 0 or label_array.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}")
    return data.reshape((-1, *IMAGE_SHAPE)), label_array


def resolve_cifar_directory(path: str | Path) -> Path:
    """``path`` itself, or its ``cifar-10-batches-py`` subdirectory when that holds the files."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected the CIFAR-10 python batches)")
    nested = directory / SUBDIRECTORY
    if not (directory / TEST_FILE).exists() and nested.is_dir():
        return nested
    return directory


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = CROP_PADDING) -> np.ndarray:
    """Random crop (zero padding ``padding`` on each side) and horizontal flip, per image.

    ``images`` is (B, C, H, W); the result has the same shape. Draws from ``rng``, in this
    order: the vertical offsets (B ints in ``[0, 2*padding]``), the horizontal offsets
    (likewise), then B uniforms in [0, 1), flipping where the uniform is < 0.5. The number
    of draws depends only on B, so the rng's state afterwards does not depend on the data.
    """
    batch, _, height, width = images.shape
    top = rng.integers(0, 2 * padding + 1, size=batch)
    left = rng.integers(0, 2 * padding + 1, size=batch)
    flip = rng.random(batch) < 0.5
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows = top[:, None] + np.arange(height)[None, :]  # (B, H)
    cols = left[:, None] + np.arange(width)[None, :]  # (B, W)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)  # a flip reads the columns backwards
    out = padded[
        np.arange(batch)[:, None, None, None],
        np.arange(images.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    return np.ascontiguousarray(out)


def load_cifar10_dataset(path: str | Path, augment: bool = False) -> ImageDataset:
    """CIFAR-10 as an :class:`ImageDataset` of shape (3, 32, 32), normalised per channel.

    With ``augment`` every training batch is randomly cropped and flipped by
    :func:`random_crop_flip` with the rng passed to ``train_batch`` (so a validator rebuilds
    the same augmented batch from the public seed). Test batches are never augmented.
    """
    directory = resolve_cifar_directory(path)
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory}: missing CIFAR-10 file(s) {', '.join(missing)}")
    parts = [read_cifar_batch(directory / name) for name in TRAIN_FILES]
    x_train = np.concatenate([images for images, _ in parts])
    y_train = np.concatenate([labels for _, labels in parts])
    del parts
    x_test, y_test = read_cifar_batch(directory / TEST_FILE)
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"{directory}: empty split ({x_train.shape[0]} train, {x_test.shape[0]} test images)")
    return ImageDataset(
        name="cifar10",
        train_images=x_train,
        train_labels=y_train,
        test_images=x_test,
        test_labels=y_test,
        scale=1.0 / 255.0,
        num_classes=NUM_CLASSES,
        augment=random_crop_flip if augment else None,
    )
