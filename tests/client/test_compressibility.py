"""The client asks for compression only for data that shrinks."""

from __future__ import annotations

from core.client.compressibility import worth_compressing


def test_repetitive_data_is_worth_compressing(make_file):
    path = make_file(3 << 20, compressible=True)

    assert worth_compressing(path, path.stat().st_size)


def test_random_data_is_not(make_file):
    path = make_file(3 << 20)

    assert not worth_compressing(path, path.stat().st_size)


def test_an_empty_file_is_not(make_file):
    path = make_file(0)

    assert not worth_compressing(path, 0)
