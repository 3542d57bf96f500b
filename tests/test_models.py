"""Models: shapes, identical construction on every peer, and gradients a validator can redo.

Kept small and fast: tiny synthetic image sets built in memory, a 4-image ResNet batch and
a 2-layer ALBERT on a short corpus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from btard_ray.config import ModelConfig
from btard_ray.data import Dataset, dropout_seed, public_batch
from btard_ray.data.dataset import ImageDataset
from btard_ray.data.digits import load_digits_dataset
from btard_ray.data.text import MaskedLMDataset, load_text_dataset
from btard_ray.models import MODELS, MnistCNN, ResNet18, build_model, compute_loss
from btard_ray.models.mnist_cnn import conv_padding

ALBERT = ModelConfig(
    name="albert_mlm",
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)


def _images(shape: tuple[int, int, int], n_train: int = 8, n_test: int = 4, classes: int = 10) -> ImageDataset:
    rng = np.random.default_rng(0)
    return ImageDataset(
        name="synthetic",
        train_images=rng.integers(0, 256, size=(n_train, *shape), dtype=np.uint8),
        train_labels=rng.integers(0, classes, size=n_train),
        test_images=rng.integers(0, 256, size=(n_test, *shape), dtype=np.uint8),
        test_labels=rng.integers(0, classes, size=n_test),
        scale=1 / 255,
        num_classes=classes,
    )


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits_dataset(0.25)


@pytest.fixture(scope="module")
def mnist_like() -> ImageDataset:
    return _images((1, 28, 28))


@pytest.fixture(scope="module")
def cifar_like() -> ImageDataset:
    return _images((3, 32, 32))


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> MaskedLMDataset:
    path: Path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("Byzantine peers send arbitrary gradients; honest ones clip them. " * 40)
    return load_text_dataset(path, seq_len=24, mask_prob=0.15)


def _gradient(model: nn.Module, batch: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _, _ = compute_loss(model, batch)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- shapes


def test_mnist_cnn_on_digits(digits: ImageDataset) -> None:
    model = build_model(ModelConfig(name="mnist_cnn"), digits, seed=0)
    assert isinstance(model, MnistCNN) and model.padding == 2
    assert model.flat_features == 20 * 2 * 2  # 8 -> 8 -> 4 -> 4 -> 2
    out = model(public_batch(digits, 0, 0, 0, 5)["x"])
    assert out.shape == (5, 10)


def test_mnist_cnn_flat_size_is_320_for_28x28(mnist_like: ImageDataset) -> None:
    model = build_model(ModelConfig(name="mnist_cnn"), mnist_like, seed=0)
    assert model.padding == 0 and model.flat_features == 320
    assert model.classifier[0].in_features == 320
    assert model(public_batch(mnist_like, 0, 0, 0, 3)["x"]).shape == (3, 10)


def test_mnist_cnn_padding_rule() -> None:
    assert conv_padding(28, 28) == 0 and conv_padding(16, 16) == 0
    assert conv_padding(15, 28) == 2 and conv_padding(8, 8) == 2
    with pytest.raises(ValueError, match="at least"):
        conv_padding(3, 3)
    assert MnistCNN(3, (32, 32), 10).flat_features == 20 * 5 * 5  # 32 -> 28 -> 14 -> 10 -> 5


def test_resnet18_on_a_cifar_shaped_batch(cifar_like: ImageDataset) -> None:
    model = build_model(ModelConfig(name="resnet18"), cifar_like, seed=0)
    assert isinstance(model, ResNet18)
    batch = public_batch(cifar_like, 0, 0, 0, 4)
    loss, correct, counted = compute_loss(model, batch)
    assert torch.isfinite(loss) and counted == 4 and 0 <= correct <= 4
    assert model(batch["x"]).shape == (4, 10)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000  # ResNet-18


def test_resnet18_keeps_no_running_statistics(cifar_like: ImageDataset) -> None:
    # Running BatchNorm statistics would differ between peers that saw different batches.
    model = build_model(ModelConfig(name="resnet18"), cifar_like, seed=0)
    assert list(model.buffers()) == []
    batch = public_batch(cifar_like, 0, 0, 0, 4)
    with torch.no_grad():
        train_out = model(batch["x"])
        model.eval()
        eval_out = model(batch["x"])
    assert torch.allclose(train_out, eval_out)  # eval also normalises with batch statistics


def test_albert_mlm_forward_and_loss(text: MaskedLMDataset) -> None:
    model = build_model(ALBERT, text, seed=0)
    assert model.config.hidden_dropout_prob > 0 and model.config.attention_probs_dropout_prob > 0
    assert model.config.vocab_size == text.num_classes
    assert model.config.max_position_embeddings >= 24
    batch = public_batch(text, 0, 0, 0, 3)
    out = model(**batch)
    assert out.logits.shape == (3, 24, text.num_classes)
    loss, correct, counted = compute_loss(model, batch)
    assert torch.isfinite(loss) and 0 <= correct <= counted


def test_compute_loss_counts_only_masked_tokens(text: MaskedLMDataset) -> None:
    model = build_model(ALBERT, text, seed=0).eval()  # eval: two forwards give equal logits
    batch = public_batch(text, 0, 1, 2, 4)
    masked = batch["labels"] != -100
    assert 0 < int(masked.sum()) < masked.numel()
    loss, correct, counted = compute_loss(model, batch)
    assert counted == int(masked.sum())
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[masked], batch["labels"][masked])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert correct == int((logits[masked].argmax(-1) == batch["labels"][masked]).sum())


def test_compute_loss_classification(digits: ImageDataset) -> None:
    model = build_model(ModelConfig(name="mnist_cnn"), digits, seed=3).eval()
    batch = public_batch(digits, 0, 0, 0, 64)
    loss, correct, counted = compute_loss(model, batch)
    with torch.no_grad():
        logits = model(batch["x"])
    assert counted == 64
    assert correct == int((logits.argmax(1) == batch["y"]).sum())
    assert torch.allclose(loss, F.cross_entropy(logits, batch["y"]))
    with pytest.raises(ValueError, match="unrecognised batch"):
        compute_loss(model, {"inputs": batch["x"]})


# --------------------------------------------------------------------------- identical replicas


@pytest.mark.parametrize("name", ["mnist_cnn", "resnet18", "albert_mlm"])
def test_same_seed_builds_identical_weights(name: str, digits: ImageDataset, text: MaskedLMDataset) -> None:
    cfg = ALBERT if name == "albert_mlm" else ModelConfig(name=name)
    data: Dataset = text if name == "albert_mlm" else digits
    a, b, c = (_weights(build_model(cfg, data, seed=s)) for s in (11, 11, 12))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_build_model_leaves_the_callers_random_state_alone(digits: ImageDataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(ModelConfig(name="mnist_cnn"), digits, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_model_must_fit_the_task(digits: ImageDataset, text: MaskedLMDataset) -> None:
    with pytest.raises(ValueError, match="mlm"):
        build_model(ALBERT, digits, seed=0)
    with pytest.raises(ValueError, match="classification"):
        build_model(ModelConfig(name="mnist_cnn"), text, seed=0)
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig.model_construct(name="vgg"), digits, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        build_model(ALBERT.model_copy(update={"num_attention_heads": 3}), text, seed=0)
    assert set(MODELS) == {"mnist_cnn", "resnet18", "albert_mlm"}


# --------------------------------------------------------------------------- validator re-computation


@pytest.mark.parametrize("name", ["mnist_cnn", "albert_mlm"])
def test_dropout_seed_makes_the_gradient_recomputable(name: str, digits: ImageDataset, text: MaskedLMDataset) -> None:
    cfg = ALBERT if name == "albert_mlm" else ModelConfig(name=name)
    data: Dataset = text if name == "albert_mlm" else digits
    peer = build_model(cfg, data, seed=0)
    validator = build_model(cfg, data, seed=0)  # a separate replica, as on another machine
    batch = public_batch(data, seed=0, peer_id=2, step=5, batch_size=8)
    seed = dropout_seed(0, 2, 5)
    g_peer = _gradient(peer, batch, seed)
    g_validator = _gradient(validator, public_batch(data, 0, 2, 5, 8), seed)
    assert torch.equal(g_peer, g_validator)
    g_other = _gradient(peer, batch, dropout_seed(0, 2, 6))
    assert not torch.allclose(g_peer, g_other)  # dropout really depends on the seed
