"""Masked-language-model data over a local text corpus, with a download-free tokenizer.

The corpus is one text file, or every ``.txt``/``.rst``/``.md`` file under a directory
(sorted by relative path, joined by a newline). With no path, the corpus is the ``.rst``
data-set descriptions that ship inside scikit-learn (``sklearn/datasets/descr``): a
few hundred kB of English that every installation has. It depends on the installed
scikit-learn version, as the whole run depends on its software versions.

Tokens are characters (:class:`CharTokenizer`). The first 90% of the characters are the
training text, the last 10% the test text; each is cut into non-overlapping windows of
``seq_len`` tokens, dropping the incomplete tail. A window is ``seq_len`` characters and
nothing else: no [CLS]/[SEP] (a character model gains nothing from them, and every position
then carries a prediction target), no padding, so ``attention_mask`` is all ones.

Masking is BERT's: each position is selected with probability ``mask_prob``; a selected
token becomes [MASK] 80% of the time, a random character 10%, and stays 10%; ``labels``
hold the original token at selected positions and -100 elsewhere. A window with no selected
position gets one (drawn from the same rng), so that every batch has a finite loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from btard_ray.data.dataset import (
    Batch,
    DataError,
    Dataset,
    check_batch_size,
    check_indices,
    read_only,
)

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The same ids as ALBERT's own vocabulary (<pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4), so
# AlbertConfig's default pad/bos/eos ids are right for this tokenizer.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL = len(SPECIAL_TOKENS)
IGNORE_INDEX = -100  # HuggingFace's "no label here"
TEST_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".rst", ".md")
#: The test split's masks are drawn once from this constant seed, so test loss is a fixed
#: function of the weights, whatever the job seed or the evaluation batch size.
TEST_MASK_SEED = 20220117


class CharTokenizer:
    """A character-level tokenizer: the 5 special tokens, then the given characters sorted.

    Deterministic: the same set of characters always yields the same ids. Characters
    outside the vocabulary encode to [UNK].
    """

    def __init__(self, characters: Sequence[str]) -> None:
        chars = sorted(set(characters))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer takes single characters")
        self.vocab: list[str] = [*SPECIAL_TOKENS, *chars]
        self._codes = np.asarray([ord(c) for c in chars], dtype=np.uint32)  # sorted

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose characters are those of ``text``."""
        return cls(list(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as a 1-D int64 array of token ids, one per character."""
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.searchsorted(self._codes, codes)
        found = pos < len(self._codes)
        found[found] = self._codes[pos[found]] == codes[found]
        return np.where(found, pos + NUM_SPECIAL, UNK_ID).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``; special tokens are written by name (``[MASK]``)."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel())


def default_corpus_files() -> list[Path]:
    """The ``.rst`` files of scikit-learn's ``sklearn/datasets/descr``, sorted by name."""
    import sklearn.datasets

    descr = Path(sklearn.datasets.__file__).resolve().parent / "descr"
    files = sorted(descr.glob("*.rst"))
    if not files:
        raise DataError(f"{descr}: no .rst files (the bundled scikit-learn corpus is missing)")
    return files


def corpus_files(path: str | Path | None) -> list[Path]:
    """The files that make up the corpus at ``path`` (see the module docstring)."""
    if path is None:
        return default_corpus_files()
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DataError(f"{path}: no {'/'.join(TEXT_SUFFIXES)} files in this directory")
        return files
    raise DataError(f"{path}: no such file or directory")


def read_corpus(path: str | Path | None) -> str:
    """The corpus text: its files decoded as UTF-8, line endings made ``\\n``, joined by ``\\n``."""
    texts = []
    for file in corpus_files(path):
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise DataError(f"{file}: cannot read ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{file}: not UTF-8 text (bad byte at offset {exc.start})") from None
        texts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n".join(texts)


def mask_tokens(
    ids: np.ndarray, rng: np.random.Generator, mask_prob: float, vocab_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style masking of a (B, L) batch of token ids: returns (input_ids, labels).

    Draws from ``rng``, in this order and always in these amounts (so the rng's state
    afterwards depends only on B and L): B*L uniforms (selection), B ints in [0, L) (the
    position forced into a window with no selection), B*L uniforms (mask/random/keep) and
    B*L random character ids in ``[NUM_SPECIAL, vocab_size)``.
    """
    if ids.ndim != 2:
        raise ValueError(f"expected (B, L) token ids, got shape {ids.shape}")
    batch, length = ids.shape
    selected = rng.random((batch, length)) < mask_prob
    forced = rng.integers(0, length, size=batch)
    action = rng.random((batch, length))
    random_ids = rng.integers(NUM_SPECIAL, vocab_size, size=(batch, length))
    empty = ~selected.any(axis=1)
    selected[empty, forced[empty]] = True
    input_ids = ids.astype(np.int64, copy=True)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    input_ids[to_mask] = MASK_ID
    input_ids[to_random] = random_ids[to_random]
    labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
    return input_ids, labels


class MaskedLMDataset(Dataset):
    """Character-level masked LM over a corpus (see the module docstring for every rule)."""

    def __init__(self, text: str, seq_len: int, mask_prob: float, name: str = "text") -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must lie in (0, 1), got {mask_prob}")
        test_start = len(text) - int(len(text) * TEST_FRACTION)
        train_text, test_text = text[:test_start], text[test_start:]
        num_train, num_test = len(train_text) // seq_len, len(test_text) // seq_len
        if num_train == 0 or num_test == 0:
            raise DataError(
                f"corpus of {len(text)} characters is too short for seq_len={seq_len}: "
                f"needs at least {int(np.ceil(seq_len / TEST_FRACTION))} for one test window"
            )
        self.tokenizer = CharTokenizer.from_text(train_text)
        super().__init__(
            name=name,
            task="mlm",
            num_train=num_train,
            num_test=num_test,
            input_shape=(seq_len,),
            num_classes=self.tokenizer.vocab_size,
        )
        self.seq_len = seq_len
        self.mask_prob = mask_prob
        # int32 halves the memory of a large corpus; batches are widened to int64.
        self._train = _windows(self.tokenizer.encode(train_text), seq_len)
        test = _windows(self.tokenizer.encode(test_text), seq_len)
        test_inputs, test_labels = mask_tokens(
            test, np.random.default_rng(TEST_MASK_SEED), mask_prob, self.tokenizer.vocab_size
        )
        self._test_inputs = read_only(test_inputs.astype(np.int32))
        self._test_labels = read_only(test_labels.astype(np.int32))

    def train_batch(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        idx = check_indices(indices, self.num_train)
        input_ids, labels = mask_tokens(self._train[idx], rng, self.mask_prob, self.num_classes)
        return _batch(input_ids, labels)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        batch_size = check_batch_size(batch_size)
        for start in range(0, self.num_test, batch_size):
            stop = start + batch_size
            yield _batch(self._test_inputs[start:stop], self._test_labels[start:stop])

    def train_window(self, index: int) -> np.ndarray:
        """The unmasked token ids of training window ``index`` (read-only)."""
        return self._train[index]


def load_text_dataset(path: str | Path | None, seq_len: int, mask_prob: float) -> MaskedLMDataset:
    """The masked-LM data set over the corpus at ``path`` (None: scikit-learn's bundled text)."""
    return MaskedLMDataset(read_corpus(path), seq_len=seq_len, mask_prob=mask_prob)


def _windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    count = len(ids) // seq_len
    return read_only(ids[: count * seq_len].astype(np.int32).reshape(count, seq_len))


def _batch(input_ids: np.ndarray, labels: np.ndarray) -> Batch:
    input_ids = torch.from_numpy(input_ids.astype(np.int64))
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.from_numpy(labels.astype(np.int64)),
    }
