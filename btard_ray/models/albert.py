"""A small ALBERT masked language model, randomly initialised (nothing is downloaded).

Built from ``transformers.AlbertConfig`` and ``AlbertForMaskedLM``. Dropout is switched on
(ALBERT's config defaults it to 0): every peer seeds torch from the public seed before its
forward pass (:func:`btard_ray.data.dropout_seed`), so the masks are re-computable by a
validator. The special-token ids (pad 0, [CLS] 2, [SEP] 3) are ALBERT's defaults and
those of :class:`btard_ray.data.text.CharTokenizer`.
"""

from __future__ import annotations

from transformers import AlbertConfig, AlbertForMaskedLM

DROPOUT = 0.1


def build_albert_mlm(
    vocab_size: int,
    seq_len: int,
    embedding_size: int = 64,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 256,
    dropout: float = DROPOUT,
) -> AlbertForMaskedLM:
    """A randomly initialised ``AlbertForMaskedLM`` for sequences of up to ``seq_len`` tokens.

    Initialisation draws from torch's global generator: seed it first for identical
    replicas. ValueError when ``hidden_size`` is not a multiple of ``num_attention_heads``.
    """
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
        )
    config = AlbertConfig(
        vocab_size=vocab_size,
        embedding_size=embedding_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        # Exactly seq_len positions: unused position rows would only lengthen the gradient
        # vector that every peer commits to and sends.
        max_position_embeddings=seq_len,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        # The plain PyTorch attention: its dropout draws from torch's generator like every
        # other dropout, whereas fused kernels may pick algorithms (and random streams) by
        # hardware and version, which a validator elsewhere could not reproduce.
        attn_implementation="eager",
    )
    return AlbertForMaskedLM(config)
