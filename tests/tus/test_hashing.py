"""The exportable sha256 (OpenSSL's SHA256_* through ctypes): equal to hashlib, and strict about the states it takes."""

from __future__ import annotations

import hashlib
import random

import pytest

from core.server.tus.hashing import LIBCRYPTO, STATE_FORMAT, ExportableSha256, StreamHashes

pytestmark = pytest.mark.skipif(LIBCRYPTO is None, reason="this libcrypto lacks SHA256_Init/Update/Final")


def split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(pieces - 1))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("seed", range(8))
def test_a_hash_exported_and_resumed_at_random_splits_equals_hashlib(seed: int) -> None:
    """Every piece continues from the bytes of the previous state alone, as a PATCH on another worker does."""
    rng = random.Random(seed)
    data = rng.randbytes(rng.choice([0, 1, 63, 64, 65, 1000, 200_000]))
    state, offset = ExportableSha256(LIBCRYPTO).export(), 0
    for piece in split(data, rng, rng.randint(1, 12)):
        running = ExportableSha256.resume(state, STATE_FORMAT, offset, LIBCRYPTO)
        assert running is not None
        running.update(piece)
        assert running.hexdigest() == hashlib.sha256(data[: offset + len(piece)]).hexdigest()  # a peek goes on
        state, offset = running.export(), offset + len(piece)

    resumed = ExportableSha256.resume(state, STATE_FORMAT, offset, LIBCRYPTO)
    assert resumed is not None
    assert resumed.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_state_is_taken_only_at_its_own_offset_and_in_its_own_format() -> None:
    running = ExportableSha256(LIBCRYPTO)
    running.update(b"x" * 100)
    state = running.export()

    assert ExportableSha256.resume(state, STATE_FORMAT, 100, LIBCRYPTO) is not None
    assert ExportableSha256.resume(state, STATE_FORMAT, 99, LIBCRYPTO) is None
    assert ExportableSha256.resume(state, STATE_FORMAT, 100 + 64, LIBCRYPTO) is None  # same fill, other count
    assert ExportableSha256.resume(state, "openssl-sha256-ctx-v1/112/big", 100, LIBCRYPTO) is None
    assert ExportableSha256.resume(state[:-1], STATE_FORMAT, 100, LIBCRYPTO) is None
    wrong_length = state[:-4] + (28).to_bytes(4, "little")  # md_len of SHA-224
    assert ExportableSha256.resume(wrong_length, STATE_FORMAT, 100, LIBCRYPTO) is None


def test_stream_hashes_prefer_the_stored_state_and_keep_none_in_process() -> None:
    hashes = StreamHashes()
    running = hashes.start()
    running.update(b"abc")
    hashes.save("u", 3, running)  # an exportable hash lives in the tus row, not here

    assert hashes.resume("u", 3, None) is None
    resumed = hashes.resume("u", 3, StreamHashes.exported(running))
    assert resumed is not None
    assert resumed.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_without_libcrypto_the_hash_stays_in_the_process_that_received_the_bytes() -> None:
    hashes = StreamHashes(lib=None)
    running = hashes.start()
    running.update(b"abc")
    assert StreamHashes.exported(running) is None
    hashes.save("u", 3, running)

    resumed = hashes.resume("u", 3, None)
    assert resumed is not None
    assert resumed.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    assert StreamHashes(lib=None).resume("u", 3, None) is None  # another process


def test_a_hash_kept_in_process_is_not_changed_by_the_patch_that_goes_on_with_it() -> None:
    """One PATCH continues its hash over several chunks; what it saved at a chunk stays at that offset."""
    hashes = StreamHashes(lib=None)
    running = hashes.start()
    running.update(b"abc")
    hashes.save("u", 3, running)
    running.update(b"more")

    resumed = hashes.resume("u", 3, None)
    assert resumed is not None
    assert resumed.hexdigest() == hashlib.sha256(b"abc").hexdigest()
