"""Ed25519 identities: who signed a protocol message, a vote, or the ledger's chain head.

Every peer, and the job itself, holds one :class:`Identity`. Its public key (32 bytes,
usually shown as 64 lowercase hex characters) is the peer's name in every signed message
and in the ban ledger. Signatures are PyNaCl's detached Ed25519 signatures (64 bytes),
which are deterministic: signing the same bytes twice gives the same signature.

Key files are JSON (``{"format": "btard-ed25519-v1", "seed": hex, "public_key": hex}``)
with mode 0600. They are created through ``os.open`` with that mode, so a key is never
readable by others, not even for the instant between creating and chmod-ing the file, and
:meth:`Identity.load` refuses a key file that group or others can access (as ssh does).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
KEY_FILE_FORMAT = "btard-ed25519-v1"
_DERIVE_TAG = b"btard-identity-v1\0"


class IdentityError(ValueError):
    """A key file or seed that cannot be used: missing, malformed, or too permissive."""


class Identity:
    """An Ed25519 key pair that signs on behalf of one peer (or of the job).

    ``public_key`` is the 32-byte verify key, ``public_hex`` its lowercase hex form (the
    peer id used in messages and in the ledger). The secret seed never appears in
    ``repr`` and is only written by :meth:`save`.
    """

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: SigningKey) -> None:
        if not isinstance(signing_key, SigningKey):
            raise TypeError(f"Identity needs a nacl.signing.SigningKey, got {type(signing_key).__name__}")
        self._signing_key = signing_key

    # -- construction -------------------------------------------------------------------

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (from the OS's CSPRNG, via libsodium)."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose Ed25519 seed is ``seed`` (exactly 32 bytes): deterministic.

        Use :meth:`derive` to get a seed from a longer secret and a label.
        """
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
            got = f"{len(seed)} bytes" if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
            raise IdentityError(f"an Ed25519 seed is exactly {SEED_BYTES} bytes, got {got}")
        return cls(SigningKey(bytes(seed)))

    @classmethod
    def derive(cls, secret: bytes, label: str) -> Identity:
        """A deterministic identity for ``label`` (e.g. ``"peer-3"``) under a job secret.

        seed = HMAC-SHA256(key=secret, msg=b"btard-identity-v1\\0" || utf8(label)), so
        different labels give independent keys and nobody without the secret can
        compute them.
        """
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise IdentityError("the secret to derive identities from must be at least 16 bytes")
        seed = hmac.new(bytes(secret), _DERIVE_TAG + label.encode("utf-8"), hashlib.sha256).digest()
        return cls.from_seed(seed)

    # -- public side ----------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 verify key."""
        return bytes(self._signing_key.verify_key)

    @property
    def public_hex(self) -> str:
        """The verify key as 64 lowercase hex characters (the peer id in messages)."""
        return self.public_key.hex()

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``data``."""
        return self._signing_key.sign(bytes(data)).signature

    def __repr__(self) -> str:
        return f"Identity(public={self.public_hex[:16]}…)"

    def seed_for_own_actor(self) -> bytes:
        """The 32-byte secret seed, for handing this identity to an actor its owner starts
        (``btard join`` gives its key to the Peer actor it owns). Never send it elsewhere."""
        return bytes(self._signing_key)

    # -- key files ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key to ``path`` with mode 0600 and return the path.

        The key goes to a temporary file in the same directory, created by ``os.open``
        with mode 0600 (never readable by others), is fsync-ed, then moved into place
        atomically, so a crash never leaves a half-written key. Refuses to replace an
        existing file unless ``overwrite`` (losing a key loses an identity).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps(
            {"format": KEY_FILE_FORMAT, "seed": bytes(self._signing_key).hex(), "public_key": self.public_hex}
        ).encode("ascii")
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask can only remove bits; this pins exactly 0600
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # atomic "create only if absent"
                except FileExistsError:
                    raise IdentityError(
                        f"{target}: a key file already exists (pass overwrite=True to replace it)"
                    ) from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key written by :meth:`save`.

        Raises :class:`IdentityError` naming the file when it is missing, when group or
        others have any access to it (mode & 0o077 != 0), when it is not a btard key file,
        or when its stored public key does not match its seed (a corrupted file).
        """
        source = Path(path)
        try:
            fd = os.open(source, os.O_RDONLY)
        except FileNotFoundError:
            raise IdentityError(f"{source}: no such key file") from None
        except OSError as exc:
            raise IdentityError(f"{source}: cannot open key file: {exc.strerror}") from None
        try:
            # fstat the descriptor we read from, so the check and the read see the same file
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IdentityError(f"{source}: not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise IdentityError(
                    f"{source}: key file permissions {mode:04o} are too open (group/others can access it); "
                    f"run: chmod 600 {source}"
                )
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
                if len(raw) > 65536:
                    raise IdentityError(f"{source}: not a btard key file (too large)")
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
                raise ValueError("wrong format tag")
            seed = bytes.fromhex(doc["seed"])
            stored_public = doc["public_key"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise IdentityError(f"{source}: not a btard key file (expected format {KEY_FILE_FORMAT!r})") from None
        identity = cls.from_seed(seed)
        if identity.public_hex != stored_public:
            raise IdentityError(f"{source}: corrupted key file (its public key does not match its seed)")
        return identity


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` under ``public_key``.

    Never raises: a key or signature of the wrong type or length, a key that is not a
    curve point, or any other bad input gives False.
    """
    try:
        if not (isinstance(public_key, (bytes, bytearray)) and len(public_key) == PUBLIC_KEY_BYTES):
            return False
        if not (isinstance(signature, (bytes, bytearray)) and len(signature) == SIGNATURE_BYTES):
            return False
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return False
        VerifyKey(bytes(public_key)).verify(bytes(data), bytes(signature))
        return True
    except (CryptoError, ValueError, TypeError):
        return False
    except Exception:  # noqa: BLE001 - the contract is "never raises on bad input"
        return False


def public_key_from_hex(value: str) -> bytes | None:
    """The 32-byte key spelled by 64 lowercase hex characters, or None when ``value`` is not one.

    Only the lowercase spelling is accepted so that one key has exactly one peer id.
    """
    if not isinstance(value, str) or len(value) != 2 * PUBLIC_KEY_BYTES or value != value.lower():
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
