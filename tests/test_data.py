"""Data loaders and the public-batch rule (no Ray).

Every batch must be a pure function of public values, so most tests here check
determinism (same inputs, same tensors) and its converse (other inputs, other tensors), and
every reader is fed files written here in the exact on-disk format, good and broken.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from btard_ray.config import DataConfig
from btard_ray.data import (
    DataError,
    batch_seed_sequence,
    clear_dataset_cache,
    dropout_seed,
    load_dataset,
    public_batch,
    public_indices,
)
from btard_ray.data.cifar import load_cifar10_dataset, random_crop_flip
from btard_ray.data.dataset import ImageDataset
from btard_ray.data.digits import load_digits_dataset
from btard_ray.data.idx import load_idx_dataset, read_idx
from btard_ray.data.text import (
    IGNORE_INDEX,
    MASK_ID,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    UNK_ID,
    CharTokenizer,
    MaskedLMDataset,
    load_text_dataset,
    mask_tokens,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits_dataset(0.25)


def _all_train(dataset: ImageDataset) -> dict[str, torch.Tensor]:
    return dataset.train_batch(np.arange(dataset.num_train), np.random.default_rng(0))


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_split_sizes(digits: ImageDataset) -> None:
    assert digits.task == "classification"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.num_train + digits.num_test == 1797
    assert digits.num_test == int(np.ceil(0.25 * 1797))  # scikit-learn rounds the test share up
    batch = digits.train_batch(np.array([0, 5, 7]), np.random.default_rng(0))
    assert batch["x"].shape == (3, 1, 8, 8) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (3,) and batch["y"].dtype == torch.int64
    sizes = [b["x"].shape[0] for b in digits.test_batches(100)]
    assert sizes == [100, 100, 100, 100, 50]
    assert all(b["y"].dtype == torch.int64 for b in digits.test_batches(100))


def test_digits_other_test_fraction_changes_split() -> None:
    small = load_digits_dataset(0.1)
    assert small.num_test == int(np.ceil(0.1 * 1797))
    assert small.num_train == 1797 - small.num_test


def test_digits_split_is_fixed_and_stratified(digits: ImageDataset) -> None:
    again = load_digits_dataset(0.25)
    assert np.array_equal(again.raw_train_images(), digits.raw_train_images())
    assert torch.equal(_all_train(again)["y"], _all_train(digits)["y"])
    test_y = torch.cat([b["y"] for b in digits.test_batches(64)]).numpy()
    all_y = np.concatenate([_all_train(digits)["y"].numpy(), test_y])
    # Stratified: every class contributes its share of the test split, up to rounding.
    expected = 0.25 * np.bincount(all_y, minlength=10)
    assert np.all(np.abs(np.bincount(test_y, minlength=10) - expected) <= 1)


def test_digits_normalised_with_train_statistics(digits: ImageDataset) -> None:
    x = _all_train(digits)["x"].double()
    assert abs(x.mean().item()) < 1e-5
    assert abs(x.std(unbiased=False).item() - 1.0) < 1e-5
    # The statistics are those of pixels scaled to [0, 1] (raw digits are 0..16).
    raw = digits.raw_train_images().astype(np.float64) / 16.0
    assert np.isclose(digits.mean[0], raw.mean()) and np.isclose(digits.std[0], raw.std())


def test_batches_are_fresh_copies(digits: ImageDataset) -> None:
    first = digits.train_batch(np.array([1, 2]), np.random.default_rng(0))
    first["x"].zero_()
    first["y"].fill_(-1)
    second = digits.train_batch(np.array([1, 2]), np.random.default_rng(0))
    assert second["x"].abs().sum() > 0 and (second["y"] >= 0).all()


@pytest.mark.parametrize("bad", [np.array([0, 1347]), np.array([-1]), np.array([[0, 1]]), np.array([0.5])])
def test_train_batch_rejects_bad_indices(digits: ImageDataset, bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        digits.train_batch(bad, np.random.default_rng(0))


# --------------------------------------------------------------------------- public batches


def test_public_batch_is_deterministic(digits: ImageDataset) -> None:
    a = public_batch(digits, seed=7, peer_id=3, step=11, batch_size=32)
    b = public_batch(digits, seed=7, peer_id=3, step=11, batch_size=32)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


@pytest.mark.parametrize("other", [(7, 4, 11), (7, 3, 12), (8, 3, 11), (-7, 3, 11)])
def test_public_batch_differs_across_peers_steps_and_seeds(digits: ImageDataset, other: tuple[int, int, int]) -> None:
    base = public_indices(digits.num_train, 7, 3, 11, 32)
    changed = public_indices(digits.num_train, *other, 32)
    assert not np.array_equal(base, changed)
    batch = public_batch(digits, *other, batch_size=32)
    assert not torch.equal(batch["x"], public_batch(digits, 7, 3, 11, 32)["x"])


def test_public_indices_distinct_within_a_batch_and_cover_the_data(digits: ImageDataset) -> None:
    seen = set()
    for step in range(200):
        idx = public_indices(digits.num_train, 0, 0, step, 64)
        assert len(np.unique(idx)) == 64
        assert idx.min() >= 0 and idx.max() < digits.num_train
        seen.update(idx.tolist())
    assert len(seen) > 0.99 * digits.num_train  # with replacement across steps, yet uniform


def test_public_batch_is_train_batch_of_public_indices(digits: ImageDataset) -> None:
    idx = public_indices(digits.num_train, 1, 2, 3, 16)
    expected = digits.train_batch(idx, np.random.default_rng(0))
    got = public_batch(digits, 1, 2, 3, 16)
    assert torch.equal(got["y"], expected["y"]) and torch.equal(got["x"], expected["x"])


def test_public_batch_rule_is_pinned() -> None:
    # A canary: if numpy or this module changes the streams, peers on different versions
    # would stop agreeing on each other's batches, and validators would accuse honest peers.
    assert public_indices(1347, 0, 0, 0, 8).tolist() == [765, 339, 1210, 409, 1061, 1313, 26, 105]
    assert dropout_seed(0, 0, 0) == 8670037001951722876


def test_public_batch_argument_checks(digits: ImageDataset) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        public_batch(digits, 0, 0, 0, digits.num_train + 1)
    with pytest.raises(ValueError, match="batch_size"):
        public_batch(digits, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="peer_id"):
        batch_seed_sequence(0, -1, 0)
    with pytest.raises(ValueError, match="step"):
        batch_seed_sequence(0, 0, 2**32)


def test_dropout_seed_is_deterministic_63_bit_and_distinct() -> None:
    seeds = {dropout_seed(5, peer, step) for peer in range(10) for step in range(10)}
    assert len(seeds) == 100
    assert all(0 <= s < 2**63 for s in seeds)
    assert dropout_seed(5, 1, 2) == dropout_seed(5, 1, 2)
    assert dropout_seed(5, 1, 2) != dropout_seed(6, 1, 2)
    # A different child of the same sequence: not the seed the batch rng was drawn from.
    sequence = batch_seed_sequence(5, 1, 2)
    batch_child = sequence.spawn(1)[0].generate_state(1, np.uint64)[0]
    assert dropout_seed(5, 1, 2) != int(batch_child >> np.uint64(1))


def test_load_dataset_caches_per_config() -> None:
    clear_dataset_cache()
    a = load_dataset(DataConfig(name="digits", batch_size=8))
    assert load_dataset(DataConfig(name="digits", batch_size=64)) is a  # batch size: same data
    assert load_dataset(DataConfig(name="digits", test_fraction=0.5)) is not a
    clear_dataset_cache()
    assert load_dataset(DataConfig(name="digits")) is not a


def test_load_dataset_requires_a_path_for_file_data() -> None:
    with pytest.raises(DataError, match="path"):
        load_dataset(DataConfig(name="idx"))


# --------------------------------------------------------------------------- IDX


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    """An IDX file written by hand from the format's definition (not by the code under test)."""
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian).tobytes(order="C")


def _write(path: Path, blob: bytes, gzipped: bool) -> None:
    path.write_bytes(gzip.compress(blob) if gzipped else blob)


def _write_idx_dir(directory: Path, digits: ImageDataset, gzipped: bool, sep: str = "-") -> tuple[np.ndarray, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    train_x = digits.raw_train_images()[:, 0]
    train_y = _all_train(digits)["y"].numpy().astype(np.uint8)
    test_x = np.concatenate([b["x"] for b in digits.test_batches(1000)])  # only for the count
    rng = np.random.default_rng(0)
    test_raw = rng.integers(0, 17, size=(len(test_x), 8, 8)).astype(np.uint8)
    test_y = rng.integers(0, 10, size=len(test_x)).astype(np.uint8)
    gz = ".gz" if gzipped else ""
    _write(directory / f"train-images{sep}idx3-ubyte{gz}", _idx_bytes(train_x, 0x08), gzipped)
    _write(directory / f"train-labels{sep}idx1-ubyte{gz}", _idx_bytes(train_y, 0x08), gzipped)
    _write(directory / f"t10k-images{sep}idx3-ubyte{gz}", _idx_bytes(test_raw, 0x08), gzipped)
    _write(directory / f"t10k-labels{sep}idx1-ubyte{gz}", _idx_bytes(test_y, 0x08), gzipped)
    return train_x, train_y, test_raw, test_y


@pytest.mark.parametrize("gzipped,sep", [(False, "-"), (True, "-"), (True, "."), (False, ".")])
def test_idx_directory_round_trips_values(tmp_path: Path, digits: ImageDataset, gzipped: bool, sep: str) -> None:
    train_x, train_y, test_raw, test_y = _write_idx_dir(tmp_path, digits, gzipped, sep)
    data = load_idx_dataset(tmp_path)
    assert (data.num_train, data.num_test) == (len(train_x), len(test_raw))
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert np.array_equal(data.raw_train_images()[:, 0], train_x)
    batch = _all_train(data)
    assert np.array_equal(batch["y"].numpy(), train_y)
    scaled = train_x.astype(np.float64) / 255.0
    expected = (scaled - scaled.mean()) / scaled.std()
    assert np.allclose(batch["x"][:, 0].numpy(), expected, atol=1e-5)
    test = next(data.test_batches(len(test_raw)))
    assert np.array_equal(test["y"].numpy(), test_y)
    assert np.allclose(test["x"][:, 0].numpy(), (test_raw / 255.0 - scaled.mean()) / scaled.std(), atol=1e-5)


@pytest.mark.parametrize(
    "code,array",
    [
        (0x08, np.arange(24, dtype=np.uint8).reshape(2, 3, 4)),
        (0x09, np.array([-128, -1, 0, 127], dtype=np.int8)),
        (0x0B, np.array([[-300, 2], [1000, -32768]], dtype=np.int16)),
        (0x0C, np.array([2**31 - 1, -5, 70000], dtype=np.int32)),
        (0x0D, np.array([[1.5, -2.25e10], [3.0, 0.1]], dtype=np.float32)),
        (0x0E, np.array([np.pi, -1e300], dtype=np.float64)),
    ],
)
def test_read_idx_parses_every_type_code(tmp_path: Path, code: int, array: np.ndarray) -> None:
    path = tmp_path / "values.idx"
    path.write_bytes(_idx_bytes(array, code))
    got = read_idx(path)
    assert got.shape == array.shape and got.dtype == array.dtype and got.dtype.isnative
    assert np.array_equal(got, array)


def test_idx_wrong_magic_names_the_file(tmp_path: Path, digits: ImageDataset) -> None:
    _write_idx_dir(tmp_path, digits, gzipped=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    blob = bytearray(bad.read_bytes())
    blob[0:4] = b"\x50\x4b\x03\x04"  # a zip file's magic, say
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic"):
        load_idx_dataset(tmp_path)
    blob[0:4] = b"\x00\x00\x07\x03"  # right zeros, unknown type code
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_truncated_file_names_the_file(tmp_path: Path, digits: ImageDataset, gzipped: bool) -> None:
    _write_idx_dir(tmp_path, digits, gzipped=gzipped)
    name = "t10k-labels-idx1-ubyte" + (".gz" if gzipped else "")
    path = tmp_path / name
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 7])
    with pytest.raises(DataError, match=name.replace(".", r"\.")) as info:
        load_idx_dataset(tmp_path)
    assert "truncated" in str(info.value)


def test_idx_header_only_and_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + b"\x00\x00")  # rank 1 but half a dimension
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    path.write_bytes(_idx_bytes(np.zeros(3, np.uint8), 0x08) + b"junk")
    with pytest.raises(DataError, match="unexpected bytes"):
        read_idx(path)


def test_idx_missing_file_is_named(tmp_path: Path, digits: ImageDataset) -> None:
    _write_idx_dir(tmp_path, digits, gzipped=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_idx_dataset(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        load_idx_dataset(tmp_path / "nowhere")


def test_idx_mismatched_label_count(tmp_path: Path, digits: ImageDataset) -> None:
    _write_idx_dir(tmp_path, digits, gzipped=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5, np.uint8), 0x08))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*5 labels"):
        load_idx_dataset(tmp_path)


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason=f"{FASHION_MNIST} absent (Debian: apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    data = load_dataset(DataConfig(name="idx", path=FASHION_MNIST))
    assert (data.num_train, data.num_test) == (60000, 10000)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    labels = _all_train(data)["y"].numpy()
    assert np.array_equal(np.bincount(labels), np.full(10, 6000))  # Fashion-MNIST is balanced
    # Its well-known pixel statistics (mean 0.2860, std 0.3530 on [0, 1]).
    assert abs(float(data.mean[0]) - 0.2860) < 1e-3 and abs(float(data.std[0]) - 0.3530) < 1e-3
    batch = public_batch(data, 0, 0, 0, 16)
    assert batch["x"].shape == (16, 1, 28, 28)


# --------------------------------------------------------------------------- CIFAR-10


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` opcodes and numpy's old module name, as the
    original CIFAR-10 files (pickled by Python 2's cPickle) have them."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_pickle(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def _cifar_batch(rng: np.random.Generator, n: int) -> dict[bytes, object]:
    return {
        b"batch_label": b"training batch",
        b"labels": rng.integers(0, 10, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def _write_cifar_dir(directory: Path, per_file: int = 4, protocol: str = "py2") -> dict[str, dict[bytes, object]]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(rng, per_file if name != "test_batch" else 3)
        blob = _py2_pickle(batches[name]) if protocol == "py2" else pickle.dumps(batches[name])
        (directory / name).write_bytes(blob)
    return batches


def _cifar_raw(batches: dict[str, dict[bytes, object]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)  # type: ignore[arg-type]
    y = np.concatenate([batches[n][b"labels"] for n in names])  # type: ignore[arg-type]
    return x, y


@pytest.mark.parametrize("protocol", ["py2", "py3"])
def test_cifar_reads_the_pickle_format(tmp_path: Path, protocol: str) -> None:
    batches = _write_cifar_dir(tmp_path, protocol=protocol)
    data = load_cifar10_dataset(tmp_path)
    assert (data.num_train, data.num_test) == (20, 3)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    raw, labels = _cifar_raw(batches, [f"data_batch_{i}" for i in range(1, 6)])
    assert np.array_equal(data.raw_train_images(), raw)
    batch = _all_train(data)
    assert np.array_equal(batch["y"].numpy(), labels)
    # Per-channel normalisation with the training split's statistics.
    scaled = raw / 255.0
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    expected = (scaled - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(batch["x"].numpy(), expected, atol=1e-5)
    assert not np.allclose(mean, mean[0])  # the three channels really have their own stats
    test_raw, test_labels = _cifar_raw(batches, ["test_batch"])
    test = next(data.test_batches(10))
    assert np.array_equal(test["y"].numpy(), test_labels)
    expected_test = (test_raw / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    assert np.allclose(test["x"].numpy(), expected_test, atol=1e-5)


def test_cifar_accepts_the_batches_subdirectory(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path / "cifar-10-batches-py")
    assert load_cifar10_dataset(tmp_path).num_train == 20


def test_cifar_missing_and_malformed_files(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10_dataset(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"data_batch_3.*\(N, 3072\)"):
        load_cifar10_dataset(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="data_batch_3.*dict"):
        load_cifar10_dataset(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10_dataset(tmp_path)
    ok = _cifar_batch(np.random.default_rng(0), 4)
    ok[b"labels"] = [0, 1, 2, 10]
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(ok))
    with pytest.raises(DataError, match="data_batch_3.*labels"):
        load_cifar10_dataset(tmp_path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_pickles_that_run_code(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}))
    with pytest.raises(DataError, match="test_batch.*forbidden"):
        load_cifar10_dataset(tmp_path)
    assert not marker.exists()


def _crops_of(image: np.ndarray, padding: int = 4) -> list[np.ndarray]:
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    crops = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + 32, left : left + 32]
            crops += [crop, crop[:, :, ::-1]]
    return crops


def test_cifar_augmentation_is_a_crop_or_flip_drawn_from_the_rng(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path)
    data = load_cifar10_dataset(tmp_path, augment=True)
    plain = load_cifar10_dataset(tmp_path, augment=False)
    idx = np.arange(20)
    a = data.train_batch(idx, np.random.default_rng(42))
    b = data.train_batch(idx, np.random.default_rng(42))
    c = data.train_batch(idx, np.random.default_rng(43))
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert not torch.equal(a["x"], c["x"])
    unaugmented = plain.train_batch(idx, np.random.default_rng(42))["x"]
    assert not torch.equal(a["x"], unaugmented)
    # Each augmented image is one of the 162 crops/flips of its (zero-padded) original.
    raw = data.raw_train_images()
    rng = np.random.default_rng(42)
    augmented = random_crop_flip(raw, rng)
    assert torch.equal(data.normalise(augmented), a["x"])
    for original, image in zip(raw, augmented):
        assert any(np.array_equal(image, crop) for crop in _crops_of(original))
    # Both flipped and unflipped images and several offsets occur in this batch.
    flipped = [any(np.array_equal(img, crop) for crop in _crops_of(orig)[1::2]) for orig, img in zip(raw, augmented)]
    assert any(flipped) and not all(flipped)
    # Test batches are never augmented.
    assert torch.equal(next(data.test_batches(3))["x"], next(plain.test_batches(3))["x"])


def test_no_augmentation_ignores_the_rng(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path)
    plain = load_cifar10_dataset(tmp_path, augment=False)
    a = plain.train_batch(np.arange(5), np.random.default_rng(1))
    b = plain.train_batch(np.arange(5), np.random.default_rng(2))
    assert torch.equal(a["x"], b["x"])


# --------------------------------------------------------------------------- text / MLM

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs! "
    "How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow. "
) * 6 + "Zürich ÆØÅ {tail} only in the test part ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~"


@pytest.fixture()
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def test_text_windows_and_shapes(corpus_file: Path) -> None:
    data = load_text_dataset(corpus_file, seq_len=16, mask_prob=0.15)
    test_start = len(CORPUS) - len(CORPUS) // 10
    assert data.task == "mlm" and data.input_shape == (16,)
    assert data.num_train == test_start // 16
    assert data.num_test == (len(CORPUS) - test_start) // 16
    assert data.tokenizer.decode(data.train_window(1)) == CORPUS[16:32]
    batch = data.train_batch(np.array([0, 3]), np.random.default_rng(0))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for value in batch.values():
        assert value.shape == (2, 16) and value.dtype == torch.int64
    assert bool((batch["attention_mask"] == 1).all())


def test_vocabulary_is_deterministic_and_from_the_train_text(corpus_file: Path) -> None:
    a = load_text_dataset(corpus_file, seq_len=16, mask_prob=0.15)
    b = load_text_dataset(corpus_file, seq_len=8, mask_prob=0.3)
    assert a.tokenizer.vocab == b.tokenizer.vocab
    assert a.tokenizer.vocab[:NUM_SPECIAL] == list(SPECIAL_TOKENS) and SPECIAL_TOKENS[0] == "[PAD]"
    train_text = CORPUS[: len(CORPUS) - len(CORPUS) // 10]
    assert a.tokenizer.vocab[NUM_SPECIAL:] == sorted(set(train_text))
    assert a.num_classes == NUM_SPECIAL + len(set(train_text))
    # Characters seen only in the test text are unknown.
    assert "~" not in train_text and a.tokenizer.encode("~").tolist() == [UNK_ID]
    assert CharTokenizer(["b", "a", "b"]).encode("abz").tolist() == [NUM_SPECIAL, NUM_SPECIAL + 1, UNK_ID]


def test_masking_is_deterministic_under_the_same_rng(corpus_file: Path) -> None:
    data = load_text_dataset(corpus_file, seq_len=16, mask_prob=0.15)
    idx = np.arange(data.num_train)
    a = data.train_batch(idx, np.random.default_rng(5))
    b = data.train_batch(idx, np.random.default_rng(5))
    c = data.train_batch(idx, np.random.default_rng(6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    assert torch.equal(public_batch(data, 1, 2, 3, 4)["input_ids"], public_batch(data, 1, 2, 3, 4)["input_ids"])


def test_mask_labels_are_ignored_outside_masks() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(NUM_SPECIAL, 60, size=(400, 50))
    input_ids, labels = mask_tokens(ids, np.random.default_rng(1), 0.15, 60)
    selected = labels != IGNORE_INDEX
    assert np.array_equal(labels[selected], ids[selected])  # labels are the original tokens
    assert np.array_equal(input_ids[~selected], ids[~selected])  # unselected tokens untouched
    assert selected.any(axis=1).all()  # every window has a prediction target
    assert abs(selected.mean() - 0.15) < 0.01
    masked = input_ids[selected] == MASK_ID
    kept = input_ids[selected] == ids[selected]
    assert abs(masked.mean() - 0.8) < 0.03
    assert abs(kept.mean() - 0.1) < 0.03  # 10% kept (plus the rare random draw of the same id)
    assert (input_ids[selected & (input_ids != MASK_ID)] >= NUM_SPECIAL).all()  # random ids are characters


def test_mask_forces_one_target_in_an_empty_window() -> None:
    ids = np.full((50, 3), NUM_SPECIAL)
    _, labels = mask_tokens(ids, np.random.default_rng(0), 0.01, 10)
    assert ((labels != IGNORE_INDEX).sum(axis=1) >= 1).all()


def test_text_test_batches_fixed_and_independent_of_batch_size(corpus_file: Path) -> None:
    data = load_text_dataset(corpus_file, seq_len=8, mask_prob=0.15)
    whole = list(data.test_batches(1000))
    assert len(whole) == 1 and whole[0]["labels"].shape == (data.num_test, 8)
    pieces = list(data.test_batches(3))
    for key in ("input_ids", "labels"):
        assert torch.equal(torch.cat([p[key] for p in pieces]), whole[0][key])
    assert torch.equal(next(data.test_batches(1000))["labels"], whole[0]["labels"])
    assert (whole[0]["labels"] != IGNORE_INDEX).any(dim=1).all()
    again = load_text_dataset(corpus_file, seq_len=8, mask_prob=0.15)
    assert torch.equal(next(again.test_batches(1000))["input_ids"], whole[0]["input_ids"])


def test_text_default_corpus_is_bundled() -> None:
    data = load_dataset(DataConfig(name="text", seq_len=32))
    assert isinstance(data, MaskedLMDataset)
    assert data.num_train > 500 and data.num_test > 50
    assert 60 < data.num_classes < 200  # English letters, digits, punctuation
    assert "e" in data.tokenizer.vocab and "[MASK]" in data.tokenizer.vocab


def test_text_directory_corpus(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("B" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.rst").write_text("C" * 100)
    (tmp_path / "a.txt").write_text("A" * 100)
    (tmp_path / "ignored.py").write_text("P" * 100)
    data = load_text_dataset(tmp_path, seq_len=10, mask_prob=0.15)
    assert data.tokenizer.vocab[NUM_SPECIAL:] == ["\n", "A", "B", "C"]
    assert data.tokenizer.decode(data.train_window(0)) == "A" * 10  # a.txt, b.md, sub/c.rst


def test_text_bad_corpora(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_text_dataset(tmp_path / "missing.txt", seq_len=8, mask_prob=0.15)
    with pytest.raises(DataError, match="no .txt"):
        load_text_dataset(tmp_path, seq_len=8, mask_prob=0.15)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(DataError, match="too short"):
        load_text_dataset(short, seq_len=8, mask_prob=0.15)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad" * 100)
    with pytest.raises(DataError, match="binary.txt.*UTF-8"):
        load_text_dataset(binary, seq_len=8, mask_prob=0.15)
