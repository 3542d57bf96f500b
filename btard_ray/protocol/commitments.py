"""Commitments to gradient parts and to seed nonces (design §4, step 1).

At step t every peer publishes, signed, the digest of each of its n gradient parts and the
digest of a fresh random nonce (its share of the next shared seed, see ``randomness``). The
aggregator of part j later checks every part it receives against its digest, and a
validator or judge can check any part it is shown. So the digest must be a function of the
part's exact bits and must say which slot the part fills:

    part_digest = sha256( b"btard-part-v1\\0"
                          ‖ field(job) ‖ field(step) ‖ field(peer) ‖ field(index)
                          ‖ field(dtype) ‖ field(shape) ‖ raw bytes of the part )

    nonce_digest = sha256( b"btard-nonce-v1\\0" ‖ nonce )

where ``field(b) = len(b) as 8 bytes big-endian ‖ b`` (:func:`length_prefixed`), strings are
UTF-8, integers are their decimal ASCII spelling, ``dtype`` is torch's name of the dtype
(``"float32"``), ``shape`` the comma-joined dimensions (``""`` for a 0-d tensor), and the raw
bytes are the tensor's elements in row-major order, little-endian, whatever the host.

Why each part of it:

* the domain tag keeps a part digest from ever being a valid digest of anything else the
  protocol hashes (nonces, seeds, messages, ledger rows);
* job, step, peer and index bind the digest to one slot: a peer cannot replay an honest
  peer's part (or its own part of an earlier step) into another slot and have it verify;
* dtype and shape make equal bytes with different meanings (one float64 vs two float32)
  hash differently;
* the length prefixes make the encoding injective: no two different field lists give the
  same byte string, so no collision can be built by moving bytes between fields.

The nonce digest needs no slot binding: the nonce is 32 fresh random bytes, and the
commitment message that carries the digest is itself signed for one job, step and sender.
"""

from __future__ import annotations

import hashlib
import secrets
import sys

import torch

__all__ = ["NONCE_BYTES", "length_prefixed", "new_nonce", "nonce_digest", "part_digest"]

PART_TAG = b"btard-part-v1\0"
NONCE_TAG = b"btard-nonce-v1\0"
#: Size of a seed nonce: 256 bits, so it cannot be guessed from its digest.
NONCE_BYTES = 32


def length_prefixed(*fields: bytes) -> bytes:
    """``len(f) as 8 bytes big-endian ‖ f`` for every field, concatenated.

    The canonical field encoding of every protocol hash: injective, so two different
    field lists never encode to the same bytes.
    """
    return b"".join(len(f).to_bytes(8, "big") + f for f in fields)


def _check_index(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


#: dtypes whose tensors numpy can view without a copy (bfloat16 cannot be viewed).
_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
                           torch.int64, torch.uint8, torch.bool})


def _tensor_bytes(part: torch.Tensor) -> memoryview:
    """The elements of ``part`` in row-major order, little-endian, as one byte buffer."""
    if sys.byteorder == "little" and part.device.type == "cpu" and part.is_contiguous() \
            and part.dtype in _NUMPY_DTYPES:
        # The common case (a float32 part on the CPU): hash the tensor's own memory.
        return memoryview(part.detach().numpy()).cast("B")
    flat = part.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8)  # reinterpret, no copy; works for every dtype incl. bfloat16
    size = flat.element_size()
    if sys.byteorder == "big" and size > 1:
        # Hash the little-endian spelling everywhere, so that a big-endian host agrees.
        raw = raw.reshape(-1, size).flip(1).contiguous().reshape(-1)
    return memoryview(raw.numpy())


def part_digest(job: str, step: int, peer: str, index: int, part: torch.Tensor) -> str:
    """Hex sha256 committing ``peer`` to ``part`` as its part ``index`` of step ``step`` of ``job``.

    digest = sha256(b"btard-part-v1\\0" ‖ field(job) ‖ field(step) ‖ field(peer) ‖ field(index)
    ‖ field(dtype) ‖ field(shape) ‖ little-endian bytes of the part), see the module docstring.
    The tensor may live on any device and be non-contiguous: only its values, dtype and
    shape count. Raises ValueError for a non-string job/peer, a negative or non-integer
    step/index, or a tensor that is not a dense (strided) tensor.
    """
    if not isinstance(job, str) or not isinstance(peer, str):
        raise ValueError(f"job and peer must be strings, got {type(job).__name__} and {type(peer).__name__}")
    _check_index("step", step)
    _check_index("index", index)
    if not isinstance(part, torch.Tensor) or part.layout != torch.strided:
        raise ValueError(f"part must be a dense torch.Tensor, got {type(part).__name__}")
    header = length_prefixed(
        job.encode("utf-8"),
        str(step).encode("ascii"),
        peer.encode("utf-8"),
        str(index).encode("ascii"),
        str(part.dtype).removeprefix("torch.").encode("ascii"),
        ",".join(str(s) for s in part.shape).encode("ascii"),
    )
    h = hashlib.sha256(PART_TAG)
    h.update(header)
    h.update(_tensor_bytes(part))
    return h.hexdigest()


def nonce_digest(nonce: bytes) -> str:
    """Hex sha256 of ``b"btard-nonce-v1\\0" ‖ nonce``: the commitment to a seed nonce."""
    if not isinstance(nonce, (bytes, bytearray)):
        raise ValueError(f"a nonce is bytes, got {type(nonce).__name__}")
    return hashlib.sha256(NONCE_TAG + bytes(nonce)).hexdigest()


def new_nonce() -> bytes:
    """32 fresh bytes from the OS's cryptographic generator (``secrets``): one step's seed share."""
    return secrets.token_bytes(NONCE_BYTES)
