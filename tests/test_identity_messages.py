"""Identities (real Ed25519 via PyNaCl) and signed protocol messages: every way a message is refused."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from btard_ray.identity import Identity, IdentityError, verify_signature
from btard_ray.messages import (
    DOMAIN_TAG,
    KINDS,
    BadSignature,
    MalformedMessage,
    Message,
    MessageError,
    MessageVerifier,
    ReplayedMessage,
    UnknownKind,
    WrongJob,
    WrongKind,
    WrongStep,
    canonical_json,
    sign_message,
)

JOB = "job-a"


@pytest.fixture
def alice() -> Identity:
    return Identity.from_seed(bytes(range(32)))


@pytest.fixture
def bob() -> Identity:
    return Identity.from_seed(bytes(range(1, 33)))


def _signed_by_hand(identity: Identity, **fields) -> Message:
    """A message signed over arbitrary fields, bypassing sign_message's own checks."""
    unsigned = Message(signature="", **fields)
    return replace(unsigned, signature=identity.sign(unsigned.canonical_bytes()).hex())


# -- identities --------------------------------------------------------------------------------


def test_sign_and_verify(alice, bob):
    data = b"the aggregate of part 3"
    sig = alice.sign(data)
    assert len(sig) == 64 and len(alice.public_key) == 32 and alice.public_hex == alice.public_key.hex()
    assert verify_signature(alice.public_key, data, sig)
    assert not verify_signature(alice.public_key, data + b"!", sig)
    assert not verify_signature(bob.public_key, data, sig)
    assert not verify_signature(alice.public_key, data, bytes(64))


@pytest.mark.parametrize(
    "key, data, sig",
    [
        (b"short", b"x", bytes(64)),
        (bytes(32), b"x", b"short"),
        ("not bytes", b"x", bytes(64)),
        (None, None, None),
        (bytes(32), "str data", bytes(64)),
        (b"\xff" * 32, b"x", b"\xff" * 64),  # not a curve point, not a valid signature
    ],
)
def test_verify_signature_never_raises(key, data, sig):
    assert verify_signature(key, data, sig) is False


def test_from_seed_is_deterministic_and_checks_length():
    assert Identity.from_seed(b"\x07" * 32).public_key == Identity.from_seed(b"\x07" * 32).public_key
    assert Identity.from_seed(b"\x07" * 32).public_key != Identity.from_seed(b"\x08" * 32).public_key
    with pytest.raises(IdentityError, match="exactly 32 bytes"):
        Identity.from_seed(b"\x07" * 31)


def test_derive_gives_independent_deterministic_keys():
    secret = b"job secret of at least sixteen bytes"
    assert Identity.derive(secret, "peer-1").public_key == Identity.derive(secret, "peer-1").public_key
    assert Identity.derive(secret, "peer-1").public_key != Identity.derive(secret, "peer-2").public_key
    assert Identity.derive(secret, "peer-1").public_key != Identity.derive(secret + b"x", "peer-1").public_key
    with pytest.raises(IdentityError):
        Identity.derive(b"short", "peer-1")


def test_repr_does_not_leak_the_seed(alice):
    assert bytes(range(32)).hex() not in repr(alice)


def test_key_file_is_0600_and_round_trips(tmp_path, alice):
    path = alice.save(tmp_path / "keys" / "alice.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path).public_key == alice.public_key
    assert [p.name for p in path.parent.iterdir()] == ["alice.key"]  # no temporary file left behind


def test_key_file_is_0600_even_with_a_permissive_umask(tmp_path, alice):
    old = os.umask(0)
    try:
        path = alice.save(tmp_path / "alice.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_save_refuses_to_overwrite_unless_asked(tmp_path, alice, bob):
    path = alice.save(tmp_path / "id.key")
    with pytest.raises(IdentityError, match="already exists"):
        bob.save(path)
    assert Identity.load(path).public_key == alice.public_key
    bob.save(path, overwrite=True)
    assert Identity.load(path).public_key == bob.public_key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_load_refuses_a_key_readable_by_others(tmp_path, alice, mode):
    path = alice.save(tmp_path / "alice.key")
    os.chmod(path, mode)
    with pytest.raises(IdentityError, match="too open.*chmod 600"):
        Identity.load(path)


def test_load_errors_are_clear(tmp_path, alice):
    with pytest.raises(IdentityError, match="no such key file"):
        Identity.load(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not json at all")
    os.close(fd)
    with pytest.raises(IdentityError, match="not a btard key file"):
        Identity.load(bad)
    # a key file whose seed and public key disagree
    path = alice.save(tmp_path / "alice.key")
    doc = json.loads(path.read_text())
    doc["public_key"] = "00" * 32
    path.write_text(json.dumps(doc))
    with pytest.raises(IdentityError, match="corrupted"):
        Identity.load(path)


# -- messages ----------------------------------------------------------------------------------


def test_signed_message_verifies_and_names_its_fields(alice):
    msg = sign_message(alice, JOB, 3, "commitment", {"parts": ["ab", "cd"], "nonce_hash": "ef"})
    assert msg.sender == alice.public_hex and msg.job == JOB and msg.step == 3 and msg.kind == "commitment"
    assert msg.signature_valid()
    assert msg.canonical_bytes().startswith(DOMAIN_TAG)
    assert MessageVerifier(JOB).check(msg, expected_step=3, expected_kind="commitment") is msg


def test_every_message_is_unique(alice):
    a = sign_message(alice, JOB, 1, "reveal", {"nonce": "x"})
    b = sign_message(alice, JOB, 1, "reveal", {"nonce": "x"})
    assert a.nonce != b.nonce and a.signature != b.signature


def test_wrong_signature_is_rejected(alice, bob):
    msg = sign_message(alice, JOB, 1, "vote", {"guilty": True})
    other = sign_message(alice, JOB, 1, "vote", {"guilty": False})
    forged_by_bob = replace(msg, signature=bob.sign(msg.canonical_bytes()).hex())
    impersonation = replace(sign_message(bob, JOB, 1, "vote", {"guilty": True}), sender=alice.public_hex)
    for bad in (replace(msg, signature=other.signature), forged_by_bob, impersonation,
                replace(msg, signature="zz" * 64), replace(msg, signature="")):
        with pytest.raises(BadSignature) as info:
            MessageVerifier(JOB).check(bad, expected_step=1)
        assert alice.public_hex[:16] in str(info.value) and "vote" in str(info.value) and "step 1" in str(info.value)


def test_payload_changed_after_signing_fails(alice):
    msg = sign_message(alice, JOB, 2, "inner_products", {"s": [0.25, -1.5], "norms": [1.0, 2.0]})
    msg.payload["s"][0] = 0.0  # the dataclass is frozen, but the payload dict is not
    assert not msg.signature_valid()
    with pytest.raises(BadSignature):
        MessageVerifier(JOB).check(msg, expected_step=2)


@pytest.mark.parametrize("field, value", [("job", "job-b"), ("step", 4), ("kind", "reveal"), ("nonce", "00" * 16)])
def test_any_changed_field_fails(alice, field, value):
    msg = sign_message(alice, JOB, 3, "commitment", {"parts": []})
    with pytest.raises(BadSignature):
        MessageVerifier(JOB).check(replace(msg, **{field: value}), expected_step=None)


def test_wrong_job_is_rejected(alice):
    msg = sign_message(alice, "job-b", 1, "reveal", {"nonce": "aa"})
    with pytest.raises(WrongJob, match="job-b") as info:
        MessageVerifier(JOB).check(msg, expected_step=1)
    assert info.value.sender == alice.public_hex and info.value.kind == "reveal" and info.value.step == 1


def test_wrong_step_is_rejected(alice):
    msg = sign_message(alice, JOB, 4, "reveal", {"nonce": "aa"})
    with pytest.raises(WrongStep, match="expected step 5") as info:
        MessageVerifier(JOB).check(msg, expected_step=5)
    assert "step 4" in str(info.value)


def test_unknown_kind_is_rejected(alice):
    with pytest.raises(UnknownKind, match="unknown kind"):
        sign_message(alice, JOB, 1, "gossip", {})
    # validly signed, but of a kind this version does not know
    msg = _signed_by_hand(alice, job=JOB, step=1, kind="gossip", sender=alice.public_hex, payload={}, nonce="ab")
    assert msg.signature_valid()
    with pytest.raises(UnknownKind) as info:
        MessageVerifier(JOB).check(msg, expected_step=1)
    assert "gossip" in str(info.value)


def test_unexpected_kind_is_rejected(alice):
    msg = sign_message(alice, JOB, 1, "vote", {"guilty": True})
    with pytest.raises(WrongKind, match="expected a message of kind 'accusation'"):
        MessageVerifier(JOB).check(msg, expected_step=1, expected_kind="accusation")


def test_replay_is_rejected(alice):
    verifier = MessageVerifier(JOB)
    msg = sign_message(alice, JOB, 1, "reveal", {"nonce": "aa"})
    verifier.check(msg, expected_step=1)
    with pytest.raises(ReplayedMessage):
        verifier.check(msg, expected_step=1)
    # a copy that went through storage is the same message
    with pytest.raises(ReplayedMessage):
        verifier.check(Message.from_dict(json.loads(json.dumps(msg.to_dict()))), expected_step=1)
    # same sender, kind, step and nonce, different payload (an equivocation): also refused
    twin = _signed_by_hand(alice, job=JOB, step=1, kind="reveal", sender=alice.public_hex,
                           payload={"nonce": "bb"}, nonce=msg.nonce)
    with pytest.raises(ReplayedMessage):
        verifier.check(twin, expected_step=1)
    # another verifier (another peer) has not seen it
    assert MessageVerifier(JOB).check(msg, expected_step=1) is msg


def test_rejected_messages_are_not_remembered(alice, bob):
    verifier = MessageVerifier(JOB)
    msg = sign_message(alice, JOB, 1, "reveal", {"nonce": "aa"})
    with pytest.raises(WrongStep):
        verifier.check(msg, expected_step=2)
    with pytest.raises(BadSignature):
        verifier.check(replace(msg, signature=bob.sign(msg.canonical_bytes()).hex()), expected_step=None)
    assert verifier.check(msg, expected_step=None) is msg


def test_replay_memory_is_a_window_of_steps(alice):
    verifier = MessageVerifier(JOB, window=2)
    old = sign_message(alice, JOB, 1, "accusation", {"accused": "x"})
    verifier.check(old, expected_step=None)
    verifier.advance(3)
    with pytest.raises(ReplayedMessage):  # step 1 is still inside [3 - 2, 3 + 2]
        verifier.check(old, expected_step=None)
    verifier.advance(4)  # step 1 is forgotten, and from now on refused rather than re-accepted
    with pytest.raises(WrongStep, match="older than the replay window"):
        verifier.check(old, expected_step=None)
    with pytest.raises(WrongStep, match="after the current step"):
        verifier.check(sign_message(alice, JOB, 7, "vote", {}), expected_step=None)
    assert verifier.current_step == 4
    # expecting an old step explicitly does not bring its forgotten replay memory back
    with pytest.raises(WrongStep, match="older than the replay window"):
        verifier.check(old, expected_step=1)
    # signed messages never move the window: only the owner's expected_step / advance do
    verifier.check(sign_message(alice, JOB, 6, "vote", {}), expected_step=None)
    assert verifier.current_step == 4
    # expecting an old step explicitly does not bring its forgotten replay memory back
    with pytest.raises(WrongStep, match="older than the replay window"):
        verifier.check(old, expected_step=1)


def test_to_dict_round_trips_exactly(alice):
    msg = sign_message(alice, JOB, 7, "aggregate_report",
                       {"hash": "ab" * 32, "distances": [0.1, 1e-300, 2.5e16, -0.0, 3.0], "n": 2**70,
                        "tuple": (1, 2), "text": "é ✓ \U0001f600", "nested": {"b": None, "a": True}})
    stored = json.dumps(msg.to_dict())
    back = Message.from_dict(json.loads(stored))
    assert back == msg
    assert back.canonical_bytes() == msg.canonical_bytes()
    assert back.payload["tuple"] == [1, 2] and isinstance(back.payload["distances"][4], float)
    MessageVerifier(JOB).check(back, expected_step=7)


def test_tampered_dict_fails_verification(alice):
    data = sign_message(alice, JOB, 7, "accusation", {"accused": "ab" * 32, "part": 2}).to_dict()
    data["payload"]["part"] = 3
    msg = Message.from_dict(data)
    assert not msg.signature_valid()
    with pytest.raises(BadSignature):
        MessageVerifier(JOB).check(msg, expected_step=7)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("signature"),
    lambda d: d.update(extra=1),
    lambda d: d.update(step="7"),
    lambda d: d.update(payload=[1, 2]),
])
def test_malformed_dict_is_refused(alice, mutate):
    data = sign_message(alice, JOB, 7, "vote", {}).to_dict()
    mutate(data)
    with pytest.raises(MalformedMessage):
        Message.from_dict(data)


def test_payloads_without_a_canonical_form_are_refused(alice):
    for payload, where in [({"x": float("nan")}, "'x'"), ({"x": [1, float("inf")]}, "'x'"),
                           ({"x": b"raw"}, "'x'"), ({1: "int key"}, "int key")]:
        with pytest.raises(MalformedMessage, match=where):
            sign_message(alice, JOB, 1, "vote", payload)


def test_kinds_cover_the_protocol():
    for kind in ("commitment", "aggregate_report", "reveal", "inner_products", "weight_hash", "accusation", "vote"):
        assert kind in KINDS


def test_errors_are_value_errors_naming_sender_kind_step(alice):
    err = WrongStep("why", sender=alice.public_hex, kind="reveal", step=9)
    assert isinstance(err, MessageError) and isinstance(err, ValueError)
    assert str(err) == f"reveal message from {alice.public_hex[:16]}… at step 9: why"


# -- canonical encoding ------------------------------------------------------------------------


def test_canonical_json_ignores_dict_order():
    a = {"b": 1, "a": {"y": [1, 2.5], "x": None}}
    b = {"a": {"x": None, "y": [1, 2.5]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == b'{"a":{"x":null,"y":[1,2.5]},"b":1}'


def test_canonical_json_spells_floats_by_repr():
    assert canonical_json([1.0, 0.1, -0.0, 1e16, 1e-7, 1]) == b"[1.0,0.1,-0.0,1e+16,1e-07,1]"


def test_canonical_json_writes_enum_values_not_names():
    import enum

    class Verdict(str, enum.Enum):
        guilty = "guilty"

    class Part(enum.IntEnum):
        second = 2

    assert canonical_json({"v": Verdict.guilty, "p": Part.second}) == b'{"p":2,"v":"guilty"}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def _reversed_dicts(value):
    if isinstance(value, dict):
        return {k: _reversed_dicts(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_dicts(v) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_json_is_stable(value):
    encoded = canonical_json(value)
    assert canonical_json(_reversed_dicts(value)) == encoded
    assert canonical_json(json.loads(encoded)) == encoded  # parse and re-encode: same bytes
    encoded.decode("ascii")


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_json_payload_survives_storage(payload):
    identity = Identity.from_seed(b"\x01" * 32)
    msg = sign_message(identity, JOB, 0, "validation", payload)
    assert Message.from_dict(json.loads(json.dumps(msg.to_dict()))).signature_valid()
