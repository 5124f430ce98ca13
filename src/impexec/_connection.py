"""Connection information: what a worker or ``impexec status`` needs to reach a broker."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


#: What a ClusterExecutor keeps in its private directory (``impexec-*`` in the temporary
#: directory); the names :func:`remove_orphaned_private_dir` may delete.
@dataclass(frozen=True)
class CurveKeys:
    """The CurveZMQ key pairs of an encrypted executor: the broker's and its workers'."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    client_public: bytes
    client_secret: bytes = field(repr=False)

    @classmethod
    def make(cls) -> CurveKeys:
        from ._security import curve_keypair

        server_public, server_secret = curve_keypair()
        client_public, client_secret = curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dial_info(
    bound: str, advertise: str | None, key: bytes, session: bytes, curve: CurveKeys | None
) -> ConnectionInfo:
    """What a worker needs to join a broker bound at *bound* (``tcp://host:port``).

    Workers dial *advertise* when given, this host's name when the broker bound a
    wildcard address, else the bound host. Unencrypted traffic beyond loopback is
    logged as a warning: anyone on the path can read tasks and results.
    """
    host = bound.split("://", 1)[1].rsplit(":", 1)[0]
    port = bound.rsplit(":", 1)[1]
    if advertise is None and host in ("0.0.0.0", "*", "[::]", "::"):  # noqa: S104 (a check, not a bind)
        advertise = socket.gethostname()
    if curve is None and not _is_loopback(host):
        logger.warning(
            "impexec broker bound to %s without encrypt=True: anyone who can reach this "
            "port can read the tasks and results in transit (they cannot inject work "
            "without the key); use encrypt=True or an SSH tunnel on untrusted networks",
            bound,
        )
    return ConnectionInfo(
        address=f"tcp://{advertise or host}:{port}",
        key=key,
        session=session,
        server_key=curve.server_public.decode() if curve else None,
        client_public=curve.client_public.decode() if curve else None,
        client_secret=curve.client_secret.decode() if curve else None,
    )


PRIVATE_DIR_PREFIX = "impexec-"
BROKER_SOCKET = "broker.sock"
_PRIVATE_NAMES = re.compile(r"broker\.sock|connection(-local)?\.json|\.connection(-local)?\.json\.\d+\.tmp")


def remove_orphaned_private_dir(connection_file: str | os.PathLike[str], settle: float = 1.0) -> bool:
    """Remove the private directory of an executor that is gone; True if it was removed.

    For a worker on the executor's machine that saw its broker vanish: the executor was
    killed and left its socket and the connection file (which holds the key) behind.
    Only a directory that is certainly such a leftover goes: the connection file's own
    directory, named ``impexec-*``, directly in this machine's temporary directory, a
    real directory (not a link) owned by this user with mode 0700, holding nothing but
    what an executor writes there, whose lock no process holds (the executor holds it
    while it lives) and whose broker socket, if any, refuses connections (nobody listens
    on it: the executor's process is gone, not merely slow to answer). Waits up to
    *settle* seconds for those two to be released.
    """
    path = Path(connection_file)
    folder = Path(os.path.abspath(path.parent))
    names = _private_dir_names(folder, path.name)
    if names is None:
        return False
    lock = _lock_once_released(folder, names, settle)
    if lock is None:
        return False  # its executor still runs, or another worker removed it
    try:
        return _remove(folder, names)
    finally:
        os.close(lock)


def _private_dir_names(folder: Path, connection_name: str) -> list[str] | None:
    """The files in *folder* if it looks like an executor's private directory, else None."""
    if not folder.name.startswith(PRIVATE_DIR_PREFIX):
        return None
    if os.path.realpath(folder.parent) != os.path.realpath(tempfile.gettempdir()):
        return None
    try:
        st = os.lstat(folder)
        names = os.listdir(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        return None
    if connection_name not in names or not all(_PRIVATE_NAMES.fullmatch(n) for n in names):
        return None
    return names


def _lock_once_released(folder: Path, names: list[str], settle: float) -> int | None:
    """The directory's lock, once nobody listens on its socket and nobody holds the lock;
    None if that does not happen within *settle* seconds or the directory is gone."""
    # a worker may learn of its client's death (its stdin closed) while the dying process
    # still holds the lock or the socket: give the kernel a moment to release them
    deadline = time.monotonic() + settle
    while True:
        if BROKER_SOCKET not in names or _nobody_listens(folder / BROKER_SOCKET):
            lock = lock_private_dir(folder)
            if lock is not None:
                return lock
        if time.monotonic() >= deadline or not os.path.isdir(folder):
            return None
        time.sleep(0.05)


def _remove(folder: Path, names: list[str]) -> bool:
    for name in names:
        try:
            os.unlink(folder / name)
        except FileNotFoundError:  # another worker of the same executor cleans up too
            pass
        except OSError:
            return False
    try:
        os.rmdir(folder)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def lock_private_dir(folder: str | os.PathLike[str]) -> int | None:
    """Lock a private directory (an open descriptor of it, ``flock``): its executor holds
    the lock as long as its process lives, the kernel drops it when the process dies.
    Returns the descriptor, or None if another process holds the lock."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _nobody_listens(path: Path) -> bool:
    """A Unix socket file that refuses connections: its owner closed it or died."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        s.connect(str(path))
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED
    finally:
        s.close()
    return False


#: Shortest key accepted, in bytes: the same rule for the API, the command line and
#: connection files (a short HMAC key can be guessed).
MIN_KEY_BYTES = 16


def parse_key(key: str | bytes) -> bytes:
    """Accept a key as raw bytes or as hex text; either way at least 16 bytes."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    elif isinstance(key, str):
        try:
            raw = bytes.fromhex(key.strip())
        except ValueError:
            raise ValueError("a key given as text must be hexadecimal") from None
    else:
        raise TypeError(f"the key must be bytes or hex text, not {type(key).__name__}")
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(
            f"the key must have at least {MIN_KEY_BYTES} bytes "
            f"({2 * MIN_KEY_BYTES} hex digits), not {len(raw)}"
        )
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
