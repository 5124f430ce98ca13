"""Connection information: what a worker or ``impexec status`` needs to reach a broker."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ConnectionInfo:
    """Address and secrets of one executor's broker.

    ``key`` signs every message (HMAC-SHA256); ``server_key`` and the client key pair are
    CurveZMQ keys (Z85 text) when the executor encrypts.
    """

    address: str
    key: bytes = field(repr=False)  # secrets stay out of reprs, logs and tracebacks
    session: bytes = b""
    server_key: str | None = None
    client_public: str | None = None
    client_secret: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["key"] = self.key.hex()
        data["session"] = self.session.hex()
        data["impexec"] = 1  # file format version
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectionInfo:
        return cls(
            address=data["address"],
            key=parse_key(data["key"]),
            session=bytes.fromhex(data.get("session") or ""),
            server_key=data.get("server_key"),
            client_public=data.get("client_public"),
            client_secret=data.get("client_secret"),
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON file readable by its owner only (mode 0600), atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f, indent=1)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ConnectionInfo:
        """Read a connection file; refuse one that others may read (it holds the key)."""
        path = Path(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(
                f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
                f"it holds the executor's key: run 'chmod 600 {path}'"
            )
        return cls.from_json(json.loads(path.read_text()))


def parse_key(key: str | bytes) -> bytes:
    """Accept a key as raw bytes or as hex text."""
    if isinstance(key, bytes):
        if not key:
            raise ValueError("the key must not be empty")
        return key
    try:
        raw = bytes.fromhex(key.strip())
    except ValueError:
        raise ValueError("a key given as text must be hexadecimal") from None
    if len(raw) < 16:
        raise ValueError("the key must have at least 16 bytes (32 hex digits)")
    return raw


def resolve(target: str, key: str | None = None) -> ConnectionInfo:
    """A connection file path, or a ``tcp://`` URL plus a key (or $IMPEXEC_KEY)."""
    if "://" in target:
        key = key or os.environ.get("IMPEXEC_KEY")
        if not key:
            raise ValueError(f"connecting to {target} needs --key HEX (or IMPEXEC_KEY)")
        return ConnectionInfo(address=target, key=parse_key(key))
    info = ConnectionInfo.read(target)
    if key:
        info = ConnectionInfo(**{**info.__dict__, "key": parse_key(key)})
    return info
