"""Wire protocol: message kinds, the fixed header, HMAC signing and verification.

A multipart ZeroMQ message is a run of *segments*; each segment is one **block** frame
followed by the **out-of-band** frames its records refer to::

    [routing id]                 ROUTER side only, added and removed by ZeroMQ
    block                        one or more records back to back:
        signature   32 bytes     HMAC-SHA256(key, header ‖ table ‖ inline ‖ oob part …)
        header      56 bytes     HEADER below (network byte order)
        table       4 x nframes  u32 per payload: its length if it is inline in this
                                 block, OOB (0xFFFFFFFF) if it is the next out-of-band frame
        inline      …            the inline payloads, back to back
    out-of-band frames           the large payloads (ZERO_COPY_THRESHOLD and up), in order

Small payloads travel inside the block, so a task or a result is one ZeroMQ frame and
a batch of tasks for one worker is one frame too: every ZeroMQ call releases the GIL,
and in a process where two Python threads run (the caller and the broker) each release
can hand the GIL over, so frames cost far more than their bytes (see docs/internals.md).
Large payloads go out of band, without a copy. An out-of-band payload enters the MAC as
its length (u64) and its bytes, or, from TREE_MIN bytes on, a parallel SHA-256 tree
digest of them (see :mod:`._signing`).

Header fields (``!BBBBI8sQQQQQ``):

==========  =====  ==============================================================
field       type   meaning
==========  =====  ==============================================================
version     u8     PROTOCOL_VERSION; any other value is dropped
kind        u8     :class:`Kind`
serializer  u8     code of the serializer that made the pickles (0: none)
flags       u8     per kind, see :class:`Flag`
nframes     u32    number of payloads (inline and out of band) of the record
session     8 B    the executor's random session id; binds the message to it
seq         u64    the sender's number of this message on its link (see :mod:`._peers`):
                   contiguous on a worker's main link, where it is also the replay guard
ack         u64    the highest number the sender has received in order on the same link
                   from its peer (cumulative acknowledgement; 0: none yet)
task_id     u64    TASK, RESULT: the task; a worker's HEARTBEAT: the last heartbeat-link
                   number it heard from the broker; 0 otherwise
ctx_id      u64    TASK, DROP_CONTEXT: the context (0: none); RESULT of an ITEM_ERRORS
                   chunk: how many of its calls raised
aux         u64    TASK: attempt number; RESULT: run time in µs; else 0
==========  =====  ==============================================================

==============  ===============  ================================================
Kind            direction        payloads
==============  ===============  ================================================
READY           worker → broker  JSON: worker id, pid, host, tag, versions (sent with a
                                 zero session: the worker learns it from WELCOME)
HEARTBEAT       both             none (on the heartbeat link); from a worker, aux =
                                 HB_IDLE | HB_GAP (see :mod:`._peers`)
STARTED         worker → broker  none: the executor's initializer ran (main link)
TASK            broker → worker  [setup pickle if HAS_SETUP], [blob table if HAS_BLOBS,
                                 then the blobs the worker lacks], function pickle (or
                                 its digest if FN_BLOB), arguments pickle, buffers
RESULT          worker → broker  value or exception pickle, out-of-band buffers
DROP_CONTEXT    broker → worker  none
SHUTDOWN        broker → worker  none: leave now; aux=1: the executor is closing (exit 0)
DRAIN           broker → worker  none: finish what you hold, take nothing more, leave
GOODBYE         worker → broker  JSON: reason
START_FAILED    worker → broker  JSON: error text (the initializer raised)
STATUS          client → broker  none (``impexec status``)
STATUS_REPLY    broker → client  JSON: statistics
STOP_WORKERS    client → broker  none (``impexec stop``): drain every worker
END_RUN         client → broker  none (``impexec end``): cancel the queued tasks, end the
                                 held ones, dismiss the workers, stop the broker
WELCOME         broker → worker  JSON: session, worker id echoed, heartbeat settings;
                                 [initializer pickle] when HAS_SETUP
RECALL          broker → worker  none; aux = how many queued (unstarted) tasks to give
                                 back, newest first: each comes back as a RESULT with
                                 RELEASED and no payload (work goes to an idle worker).
                                 Sent on the heartbeat link, whose thread answers it
                                 while a task runs
==============  ===============  ================================================

Nothing is unpickled before :func:`decode` has checked the signature with
:func:`hmac.compare_digest`; control payloads are JSON and never pickles.

Each direction and each peer signs with a key of its own, derived from the executor's key
(:func:`worker_keys`, :func:`client_keys`): a message a worker sent verifies only as that
worker's message to the broker, so a frame reflected back to its sender, replayed to
another worker, or sent by a status client in a worker's name fails its signature.
"""

from __future__ import annotations

import enum
import hmac
import json
import logging
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import zmq
from zmq.backend import Socket as _BaseSocket

from ._errors import ProtocolError as ProtocolError  # raised by decode: callers catch it here
from ._signing import TREE_MIN as TREE_MIN
from ._signing import _as_bytes_view, _mac
from ._signing import client_keys as client_keys  # the keys of the messages this module signs
from ._signing import worker_keys as worker_keys

logger = logging.getLogger(__name__)

# pyzmq's send_multipart/recv_multipart spend most of their time in Python glue (enum flag
# arithmetic, copy-threshold checks); the Cython methods called directly cost a fraction of
# it, and this is the per-task hot path on both sides.
_send = _BaseSocket.send
_recv = _BaseSocket.recv
_SNDMORE = int(zmq.SNDMORE)
#: Payloads at least this large travel as out-of-band frames, sent without copying
#: (ZeroMQ keeps a reference); smaller ones are copied into the block.
ZERO_COPY_THRESHOLD = 64 * 1024

PROTOCOL_VERSION = 3
HEADER = struct.Struct("!BBBBI8sQQQQQ")
SIG_SIZE = 32
#: Signature and header: the fixed part of every record.
RECORD_FIXED = SIG_SIZE + HEADER.size
#: Table entry of a payload that is the next out-of-band frame.
OOB = 0xFFFFFFFF
#: Largest number of payload frames one message may announce; a bigger count is malformed.
MAX_FRAMES = 4096

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
_compare = hmac.compare_digest
_TABLES = [struct.Struct(f"!{n}I") for n in range(9)]  # the common small payload counts


def _table(n: int) -> struct.Struct:
    return _TABLES[n] if n < len(_TABLES) else struct.Struct(f"!{n}I")


class Kind(enum.IntEnum):
    READY = 1
    HEARTBEAT = 2
    TASK = 3
    RESULT = 4
    DROP_CONTEXT = 5
    SHUTDOWN = 6
    DRAIN = 7
    GOODBYE = 8
    START_FAILED = 9
    STATUS = 10
    STATUS_REPLY = 11
    STOP_WORKERS = 12
    WELCOME = 13
    RECALL = 14
    END_RUN = 15
    STARTED = 16


class Flag:
    """Header flags, per kind. Plain ints: IntFlag arithmetic costs µs on the hot path."""

    NONE = 0
    HAS_SETUP = 1  # TASK: the first payload frame is the context's setup
    CHUNK = 2  # TASK: the arguments pickle is a list of argument tuples (a map chunk)
    OK = 4  # RESULT: the payload is the value (else an exception)
    BARE = 4  # TASK with CHUNK: a list of single arguments, not of tuples (map over one input)
    NEED_SETUP = 8  # RESULT: the worker lacks the task's context or a blob; resend with them
    ITEM_ERRORS = 8  # TASK with CHUNK: a call that raises puts its exception in the list and
    #                  the others still run; the RESULT's ctx_id counts the calls that raised
    HAS_BLOBS = 16  # TASK: a blob table frame (and the blobs the worker lacks) comes next
    FN_BLOB = 32  # TASK: the function frame is the 32-byte digest of a blob
    RELEASED = 64  # RESULT: the worker gives the task back unstarted (after a RECALL)
    #: Any kind: the out-of-band payloads enter the MAC by their length only. Sent only
    #: between a worker and a broker that share a Unix socket (``ipc://``), where the
    #: kernel vouches that the bytes come from the peer that sent the signed record; a
    #: receiver that did not agree to it refuses the message (see docs/security.md).
    LOCAL = 128


_KIND_OF: dict[int, Kind] = {int(k): k for k in Kind}
_LOCAL = Flag.LOCAL


class Message:
    """One decoded (verified) message; payloads are still serialized.

    ``frames`` holds the payloads: memoryviews into the block for inline ones, the
    ZeroMQ frames themselves for out-of-band ones.
    """

    __slots__ = ("ack", "aux", "ctx_id", "flags", "frames", "kind", "seq", "serializer", "session", "task_id")

    def __init__(
        self,
        kind: Kind,
        session: bytes = b"\0" * 8,
        seq: int = 0,
        task_id: int = 0,
        ctx_id: int = 0,
        aux: int = 0,
        flags: int = 0,
        serializer: int = 0,
        frames: list[Any] | None = None,
        ack: int = 0,
    ):
        self.kind = kind
        self.session = session
        self.seq = seq
        self.ack = ack
        self.task_id = task_id
        self.ctx_id = ctx_id
        self.aux = aux
        self.flags = flags
        self.serializer = serializer
        self.frames = [] if frames is None else frames

    def __repr__(self) -> str:
        return (
            f"Message({self.kind.name}, seq={self.seq}, ack={self.ack}, task_id={self.task_id}, "
            f"ctx_id={self.ctx_id}, aux={self.aux}, flags={self.flags}, "
            f"frames={len(self.frames)})"
        )

    def json(self) -> dict[str, Any]:
        """Decode a JSON control payload (first frame): always an object ({} if absent)."""
        if not self.frames:
            return {}
        try:
            value = json.loads(bytes(self.frames[0]).decode())
        except ValueError as exc:  # bad UTF-8 or bad JSON: a malformed message, not a bug
            raise ProtocolError(f"{self.kind.name} with a malformed JSON payload: {exc}") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.kind.name} whose JSON payload is not an object")
        return value


def _nbytes(frame: Any) -> int:
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def encode(
    key: bytes,
    kind: int,
    session: bytes,
    seq: int,
    *,
    task_id: int = 0,
    ctx_id: int = 0,
    aux: int = 0,
    flags: int = 0,
    serializer: int = 0,
    frames: Sequence[Any] = (),
    local: bool = False,
    ack: int = 0,
) -> list[Any]:
    """Return the frames of one signed message (without a routing id): a block, then
    its out-of-band payloads. The frames of several messages may be sent as one
    multipart, or merged first with :func:`join`.

    *local*: the peer is on the other end of a Unix socket and agreed to Flag.LOCAL;
    out-of-band payloads then enter the MAC by length only.
    """
    n = len(frames)
    if not n:
        header = _pack_header(
            PROTOCOL_VERSION, kind, serializer, flags, 0, session, seq, ack, task_id, ctx_id, aux
        )
        return [_mac(key, header, ()) + header]
    lengths: list[int] = []
    inline: list[Any] = []
    oob: list[Any] = []
    for f in frames:
        nb = _nbytes(f)
        if nb < ZERO_COPY_THRESHOLD:
            lengths.append(nb)
            inline.append(f)
        else:
            lengths.append(OOB)
            oob.append(f)
    local = local and bool(oob)
    if local:
        flags |= _LOCAL
    header = _pack_header(
        PROTOCOL_VERSION, kind, serializer, flags, n, session, seq, ack, task_id, ctx_id, aux
    )
    body = b"".join([header, _table(n).pack(*lengths), *inline])
    return [_mac(key, body, oob, not local) + body, *oob]


def encode_json(key: bytes, kind: int, session: bytes, seq: int, obj: Any, **fields: Any) -> list[Any]:
    """Return one signed message whose payload is *obj* as JSON."""
    return encode(key, kind, session, seq, frames=[json.dumps(obj).encode()], **fields)


def join(messages: Sequence[list[Any]]) -> list[Any]:
    """Merge encoded messages into one segment: their blocks in one frame, then every
    out-of-band frame in order (decode reads the records in the same order)."""
    if len(messages) == 1:
        return messages[0]
    blocks = [m[0] for m in messages]
    out: list[Any] = [b"".join(blocks)]
    for m in messages:
        if len(m) > 1:
            out += m[1:]
    return out


def decode(
    key: bytes, frames: Sequence[Any], session: bytes | None, local: bool = False
) -> Iterator[Message]:
    """Verify and split the records of one multipart message.

    Raises ProtocolError at the first record that is malformed, unauthenticated, of
    another protocol version or (when *session* is given) of another session; records
    before it have already been yielded. The caller drops the rest and logs.

    *local*: the sender is a peer on a Unix socket that agreed to Flag.LOCAL; without
    it, a record with that flag is refused.
    """
    i, n = 0, len(frames)
    while i < n:
        view = _as_bytes_view(frames[i])
        size = view.nbytes
        i += 1
        pos = 0
        if size < RECORD_FIXED:
            raise ProtocolError(f"block of {size} B, shorter than a record's {RECORD_FIXED} B")
        while pos < size:
            if size - pos < RECORD_FIXED:
                raise ProtocolError(f"truncated record: {size - pos} B left, need {RECORD_FIXED}")
            body_at = pos + SIG_SIZE
            version, kind, ser, flags, nframes, sess, seq, ack, task_id, ctx_id, aux = _unpack_header(
                view, body_at
            )
            payload, oob, at, i = _payloads(view, body_at + HEADER.size, nframes, frames, i)
            unhashed = bool(flags & _LOCAL)
            if not _compare(_mac(key, view[body_at:at], oob, not unhashed), view[pos:body_at]):
                raise ProtocolError("bad signature (wrong key, or the message was altered)")
            # only now, with the signature checked, do the header's claims count
            k = _KIND_OF.get(kind)
            if (
                k is None
                or version != PROTOCOL_VERSION
                or (session is not None and sess != session)
                or (unhashed and not local)
            ):
                _refuse(version, kind, sess, session, unhashed and not local)
            yield Message(k, sess, seq, task_id, ctx_id, aux, flags, ser, payload, ack)
            pos = at


def _payloads(
    view: memoryview, at: int, nframes: int, frames: Sequence[Any], i: int
) -> tuple[list[Any], list[Any], int, int]:
    """Read the length table at *at* and the payloads it describes.

    Inline payloads are views of the block; out-of-band ones are the next frames,
    from ``frames[i]`` on. Returns (payloads, the out-of-band ones among them, where the
    record ends in the block, the index of the next unread frame).
    """
    size = view.nbytes
    if nframes > MAX_FRAMES or at + 4 * nframes > size:
        raise ProtocolError(f"header announces {nframes} payloads, too many for the block")
    lengths = _table(nframes).unpack_from(view, at) if nframes else ()
    at += 4 * nframes
    payload: list[Any] = []
    oob: list[Any] = []
    for length in lengths:
        if length == OOB:
            if i >= len(frames):
                raise ProtocolError("a record refers to an out-of-band frame that is missing")
            f = frames[i]
            i += 1
            payload.append(f)
            oob.append(f)
        else:
            end = at + length
            if end > size:
                raise ProtocolError(f"inline payload of {length} B runs past the block")
            payload.append(view[at:end])
            at = end
    return payload, oob, at, i


def _refuse(version: int, kind: int, sess: bytes, session: bytes | None, unhashed_remote: bool) -> NoReturn:
    """Raise the ProtocolError that says which claim of a signed record's header fails."""
    if unhashed_remote:
        raise ProtocolError(
            "a record whose large payloads are not in its MAC, from a peer not on a Unix socket"
        )
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if kind not in _KIND_OF:
        raise ProtocolError(f"unknown message kind {kind}")
    if session is not None and sess != session:
        raise ProtocolError("message from another session (another executor, or a replay)")
    raise AssertionError("a record refused with every claim holding")


def send_frames(sock: Any, frames: Sequence[Any], flags: int = 0) -> None:
    """Send one multipart message; big frames go zero-copy, small ones are copied."""
    last = len(frames) - 1
    if not last:
        f = frames[0]
        _send(sock, f, flags, _nbytes(f) < ZERO_COPY_THRESHOLD)
        return
    for i, frame in enumerate(frames):
        _send(sock, frame, flags | (_SNDMORE if i < last else 0), _nbytes(frame) < ZERO_COPY_THRESHOLD)


def recv_frames(sock: Any, flags: int = 0) -> list[Any]:
    """Receive one multipart message as zmq.Frame objects (no copy of big payloads).

    Raises zmq.Again with ``flags=zmq.NOBLOCK`` when nothing is waiting.
    """
    parts = [_recv(sock, flags, False)]
    while parts[-1].more:
        parts.append(_recv(sock, 0, False))
    return parts
