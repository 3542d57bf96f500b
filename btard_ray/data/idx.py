"""MNIST-format (IDX) directories: MNIST, Fashion-MNIST, KMNIST and friends.

An IDX file is a 4-byte magic number ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the values in C order, big-endian. A directory holds four of them::

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

each possibly gzipped (``.gz``, recognised by its content, not its name) and with either
the ``-idx3-ubyte`` or the ``.idx3-ubyte`` spelling. Debian's ``dataset-fashion-mnist``
package installs exactly these four files, gzipped, in ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from btard_ray.data.dataset import DataError, ImageDataset

#: IDX type codes and the big-endian numpy dtypes they stand for.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a native-endian array of its shape.

    Raises DataError naming the file when it is missing or unreadable, is not valid gzip,
    has a wrong magic number or an unknown type code, or holds fewer or more bytes than its
    header announces.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if blob[:2] == _GZIP_MAGIC:
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return parse_idx(blob, name=str(path))


def parse_idx(blob: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file; ``name`` is used in error messages."""
    if len(blob) < 4:
        raise DataError(f"{name}: truncated: {len(blob)} bytes, too short for an IDX header")
    zero1, zero2, code, ndim = blob[0], blob[1], blob[2], blob[3]
    if zero1 != 0 or zero2 != 0 or code not in IDX_DTYPES:
        raise DataError(
            f"{name}: not an IDX file: bad magic number 0x{blob[:4].hex()} "
            f"(expected 0x0000 then a type code in {sorted(hex(c) for c in IDX_DTYPES)} and the rank)"
        )
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares rank 0")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{name}: truncated: header needs {header} bytes, file has {len(blob)}")
    shape = struct.unpack(f">{ndim}I", blob[4:header])
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(blob) < expected:
        raise DataError(
            f"{name}: truncated: shape {shape} of {dtype.name} needs {expected} bytes, file has {len(blob)}"
        )
    if len(blob) > expected:
        raise DataError(f"{name}: {len(blob) - expected} unexpected bytes after the data of shape {shape}")
    values = np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)
    # Native byte order (and a writable copy) so downstream code never sees '>' dtypes.
    return values.astype(dtype.newbyteorder("="))


def find_idx_file(directory: Path, stem: str, kind: str) -> Path:
    """The file for ``stem`` (``train-images``...) and ``kind`` (``idx3``/``idx1``) in
    ``directory``, trying the ``-``/``.`` spellings, each plain then gzipped."""
    candidates = [
        directory / f"{stem}{sep}{kind}-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing {stem}-{kind}-ubyte (looked for {', '.join(c.name for c in candidates)})")


def _read_split(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, Path]:
    images_path = find_idx_file(directory, f"{prefix}-images", "idx3")
    labels_path = find_idx_file(directory, f"{prefix}-labels", "idx1")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected (N, H, W) uint8 images, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected (N,) integer labels, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path.name}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{labels_path}: negative label {labels.min()}")
    return images[:, None, :, :], labels.astype(np.int64), images_path


def load_idx_dataset(path: str | Path) -> ImageDataset:
    """An IDX directory as an :class:`ImageDataset` of shape (1, H, W) (1, 28, 28 for MNIST).

    Pixels are scaled to [0, 1] and normalised with the training split's mean and std. The
    number of classes is one more than the largest label in either split.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected an MNIST-format IDX directory)")
    x_train, y_train, train_path = _read_split(directory, "train")
    x_test, y_test, test_path = _read_split(directory, "t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{test_path}: images of size {x_test.shape[2:]} but {train_path.name} has {x_train.shape[2:]}"
        )
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise DataError(f"{directory}: empty split ({x_train.shape[0]} train, {x_test.shape[0]} test images)")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return ImageDataset(
        name="idx",
        train_images=x_train,
        train_labels=y_train,
        test_images=x_test,
        test_labels=y_test,
        scale=1.0 / 255.0,
        num_classes=num_classes,
    )
