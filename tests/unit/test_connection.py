"""Connection files (mode 0600) and the ``FILE | URL + key`` forms workers accept."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from impexec._connection import ConnectionInfo, parse_key, resolve

KEY = bytes(range(32))


def _info(**changes: object) -> ConnectionInfo:
    fields = {"address": "tcp://127.0.0.1:5555", "key": KEY, "session": b"\x01" * 8}
    fields.update(changes)
    return ConnectionInfo(**fields)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    info = _info(server_key="S" * 40, client_public="P" * 40, client_secret="Q" * 40)
    path = info.write(tmp_path / "conn.json")
    assert ConnectionInfo.read(path) == info
    data = json.loads(path.read_text())
    assert data["key"] == KEY.hex()  # hex text, not bytes
    assert data["address"] == "tcp://127.0.0.1:5555"


def test_written_with_mode_0600_even_under_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = _info().write(tmp_path / "conn.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_overwrites_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "conn.json"
    _info(address="tcp://h:1").write(target)
    _info(address="tcp://h:2").write(target)
    assert ConnectionInfo.read(target).address == "tcp://h:2"
    assert [p.name for p in tmp_path.iterdir()] == ["conn.json"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_a_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = _info().write(tmp_path / "conn.json")
    path.chmod(mode)
    with pytest.raises(PermissionError) as info:
        ConnectionInfo.read(path)
    message = str(info.value)
    assert f"{mode:o}" in message
    assert "chmod 600" in message
    assert str(path) in message


def test_resolve_file(tmp_path: Path) -> None:
    path = _info().write(tmp_path / "conn.json")
    assert resolve(str(path)).key == KEY
    other = "ab" * 16
    assert resolve(str(path), other).key == bytes.fromhex(other)  # --key overrides the file


def test_resolve_url_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMPEXEC_KEY", raising=False)
    with pytest.raises(ValueError, match="--key"):
        resolve("tcp://10.0.0.1:5555")
    info = resolve("tcp://10.0.0.1:5555", KEY.hex())
    assert (info.address, info.key) == ("tcp://10.0.0.1:5555", KEY)
    monkeypatch.setenv("IMPEXEC_KEY", KEY.hex())
    assert resolve("tcp://10.0.0.1:5555").key == KEY


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (KEY.hex(), True),
        ("  " + KEY.hex() + "\n", True),
        ("ab" * 16, True),
        ("ab" * 15, False),
        ("not hex at all!", False),
        ("", False),
    ],
)
def test_parse_key_text(text: str, ok: bool) -> None:
    if ok:
        assert parse_key(text) == bytes.fromhex(text.strip())
    else:
        with pytest.raises(ValueError):
            parse_key(text)


def test_parse_key_bytes() -> None:
    assert parse_key(KEY) == KEY
    with pytest.raises(ValueError):
        parse_key(b"")
