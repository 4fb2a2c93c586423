"""libp2p private networks (spec PSK v1) on py-libp2p's TCP transport.

A private mesh shares one 32-byte key, kept in a ``swarm.key`` file. Every TCP connection is encrypted
with XSalsa20 under that key *before* multistream-select and Noise, as the libp2p spec says
(https://github.com/libp2p/specs/blob/master/pnet/Private-Networks-PSK-V1.md), so go- and rust-libp2p
peers with the same key can join. py-libp2p's own ``psk=`` option is not the spec (Salsa20, 8-byte
nonce), which is why this module exists; the cipher itself is Rust (``pyagent._core``).

The spec has no key check: a peer with another key just reads noise and times out much later. We fail
fast instead: multistream-select 1.0 makes both sides open with its 20-byte header, whose first byte is
the length ``0x13``. Each decrypted byte of that header is compared as it arrives, so a different key
is caught on the first byte (255 times in 256) and surely within 20, and the connection is closed at
once with :class:`KeyMismatchError`. A peer without any key is caught even earlier: its plaintext
header shows up where the nonce should be.

A public node checks the same header in plaintext (:class:`PlainTCP`): a private peer's first bytes
are its nonce, so a node with no key reports ``key-mismatch`` too, instead of a multistream-select
parse error about random bytes (issue 15).

Use: ``libp2p.new_host(..., transports=[PnetTCP(psk)])`` and leave py-libp2p's ``psk`` unset.
"""

import logging
import os
import pathlib
from collections.abc import Callable

import trio
from libp2p.custom_types import THandler
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import IOException
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.transport.tcp.tcp import TCP, TCPListener
from multiaddr import Multiaddr

from pyagent import secretfile
from pyagent._core import (
    KEY_LEN_BYTES,
    NONCE_LEN_BYTES,
    XSalsa20,
    format_swarm_key,
    key_fingerprint,
    parse_swarm_key,
)
from pyagent.errors import ConfigError, RemoteProtocolError
from pyagent.node.dial_errors import causes

logger = logging.getLogger(__name__)

# multistream-select 1.0's opening message: varint length 0x13, then "/multistream/1.0.0\n".
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"
# Long enough for a peer's first TCP segment across a slow link, short enough that a silent or
# keyless peer is refused in under the 2 s an operator will wait for a "wrong key" answer.
NONCE_TIMEOUT_MS_DEFAULT = 1500

_CREATE_HINT = "create one with `pyagent mesh new-private --out {path}`"


class PrivateNetworkError(RemoteProtocolError, IOException):
    """A peer failed the private-network handshake.

    It is an ``IOException`` so py-libp2p's upgrade code treats it as a failed connection (and keeps
    it as the ``__cause__`` of its own errors) rather than as a bug.
    """


class KeyMismatchError(PrivateNetworkError):
    """The peer does not hold our swarm key: a different key, or none at all."""


class NonceExchangeError(PrivateNetworkError):
    """The peer did not send its 24-byte nonce in time, or closed before it did."""


def find_key_mismatch(error: BaseException) -> KeyMismatchError | None:
    """The :class:`KeyMismatchError` behind a failed dial, if any, however deeply py-libp2p wrapped it."""
    return next((e for e in causes(error) if isinstance(e, KeyMismatchError)), None)


def generate_swarm_key() -> str:
    """A fresh random key, as the text of a ``swarm.key`` file (base16 form)."""
    return format_swarm_key(os.urandom(KEY_LEN_BYTES))


def load_swarm_key(path: pathlib.Path) -> bytes:
    """Read and parse a ``swarm.key`` file; any problem is a one-line :class:`ConfigError`.

    A key readable by group or others is logged as a warning, not refused: the key is shared by every
    member of the mesh anyway, and refusing would stop a daemon over a file mode set by a deployment
    tool. The warning says how to fix it.
    """
    hint = _CREATE_HINT.format(path=path)
    raw, exposed = secretfile.read(path, "swarm key file", hint)
    try:
        key = parse_swarm_key(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        reason = "it is not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
        raise ConfigError(f"swarm key file {path} is invalid: {reason}; {hint}") from None
    if exposed:
        logger.warning("swarm key file %s is accessible by group or others; run `chmod 600 %s`", path, path)
    return key


class MultistreamHeaderCheck:
    """Compares the first bytes a peer sends (after decryption, in a private mesh) with
    multistream-select's header, as they arrive."""

    def __init__(self) -> None:
        self._bytes_checked = 0

    def matches(self, data: bytes) -> bool:
        start = self._bytes_checked
        if start >= len(MULTISTREAM_HEADER):
            return True
        expected = MULTISTREAM_HEADER[start : start + len(data)]
        if data[: len(expected)] != expected:
            return False
        self._bytes_checked += len(expected)
        return True


class PnetStream(ReadWriteCloser):
    """A TCP stream encrypted with the private-network cipher, with the nonce exchange done lazily.

    The handshake runs on first use, inside py-libp2p's upgrade, so it counts against the swarm's own
    inbound limits and upgrade timeout rather than needing limits of its own.
    """

    def __init__(
        self, inner: ReadWriteCloser, psk: bytes, *, nonce_timeout_ms: int, on_mismatch: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._on_mismatch = on_mismatch
        # Read now: once the peer hangs up (as a peer with the wrong key does) the socket cannot say.
        self._peer_address = inner.get_remote_address()
        self._psk = psk
        self._nonce_timeout_ms = nonce_timeout_ms
        self._local_nonce = os.urandom(NONCE_LEN_BYTES)
        self._encrypt = XSalsa20(psk, self._local_nonce)
        self._decrypt: XSalsa20 | None = None
        self._nonce_sent = False
        self._header = MultistreamHeaderCheck()
        # Encrypting and sending must happen in keystream order, and yamux writes from many tasks;
        # one lock per direction keeps each direction's keystream and bytes in step.
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()

    async def write(self, data: bytes) -> None:
        async with self._write_lock:
            await self._write_locked(data)

    async def _write_locked(self, data: bytes) -> None:
        ciphertext = self._encrypt.apply(data)
        if not self._nonce_sent:
            self._nonce_sent = True
            ciphertext = self._local_nonce + ciphertext
        await self._inner.write(ciphertext)

    async def read(self, n: int | None = None) -> bytes:
        async with self._read_lock:
            try:
                return await self._read_locked(n)
            except PrivateNetworkError:
                await self._inner.close()
                raise

    async def _read_locked(self, n: int | None) -> bytes:
        if self._decrypt is None:
            # Both sides send their nonce before anything else; a reader that has not written yet
            # sends its own first, so two peers that both start by reading cannot wait on each other.
            async with self._write_lock:
                if not self._nonce_sent:
                    await self._write_locked(b"")
            self._decrypt = XSalsa20(self._psk, await self._read_peer_nonce())
        ciphertext = await self._inner.read(n)
        if not ciphertext:
            return b""
        plaintext = self._decrypt.apply(ciphertext)
        if not self._header.matches(plaintext):
            raise self._mismatch("its bytes do not decrypt under our key (it has a different swarm.key)")
        return plaintext

    async def _read_peer_nonce(self) -> bytes:
        peer = peer_name(self._peer_address)
        received = bytearray()
        with trio.move_on_after(self._nonce_timeout_ms / 1000):
            while len(received) < NONCE_LEN_BYTES:
                chunk = await self._inner.read(NONCE_LEN_BYTES - len(received))
                if not chunk:
                    raise NonceExchangeError(
                        f"private-network peer {peer} closed the connection before sending "
                        "its nonce (it may use a different swarm.key or none)"
                    )
                received += chunk
                if received.startswith(MULTISTREAM_HEADER):
                    raise self._mismatch("it speaks plaintext multistream-select (it has no swarm.key)")
            return bytes(received)
        raise NonceExchangeError(
            f"private-network peer {peer} sent no nonce within {self._nonce_timeout_ms} ms"
        )

    def _mismatch(self, reason: str) -> KeyMismatchError:
        self._on_mismatch()
        fingerprint = key_fingerprint(self._psk)
        return key_mismatch(self._peer_address, f"{reason}; our key fingerprint is {fingerprint}")

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()


class PlainStream(ReadWriteCloser):
    """A public node's TCP stream that checks the peer's first bytes are multistream-select's header, so
    that a peer in a private mesh (whose first bytes are its nonce) is a key mismatch at once."""

    def __init__(self, inner: ReadWriteCloser, on_mismatch: Callable[[], None]) -> None:
        self._inner = inner
        self._peer_address = inner.get_remote_address()
        self._on_mismatch = on_mismatch
        self._header = MultistreamHeaderCheck()

    async def read(self, n: int | None = None) -> bytes:
        data = await self._inner.read(n)
        if not self._header.matches(data):
            self._on_mismatch()
            await self._inner.close()
            raise key_mismatch(
                self._peer_address,
                "its first bytes are not multistream-select "
                "(it is in a private mesh; this node has no swarm.key)",
            )
        return data

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()


def key_mismatch(peer_address: tuple[str, int] | None, reason: str) -> KeyMismatchError:
    """The error for a peer without our key (or with one when we have none), logged as one line."""
    message = f"private-network key does not match peer {peer_name(peer_address)}: {reason}"
    logger.warning("%s", message)
    return KeyMismatchError(message)


def peer_name(peer_address: tuple[str, int] | None) -> str:
    return "(unknown address)" if peer_address is None else f"{peer_address[0]}:{peer_address[1]}"


def _ignore() -> None:
    return None


Wrap = Callable[[ReadWriteCloser, Callable[[], None]], ReadWriteCloser]


class _WrappedTCP(TCP):
    """py-libp2p's TCP transport with every connection, dialled or accepted, wrapped by ``wrap``.
    ``on_inbound_mismatch`` counts the accepted connections refused for their key."""

    def __init__(self, wrap: Wrap, on_inbound_mismatch: Callable[[], None]) -> None:
        super().__init__()
        self._wrap = wrap
        self._on_inbound_mismatch = on_inbound_mismatch

    async def dial(self, maddr: Multiaddr) -> RawConnection:
        return self._protect(await super().dial(maddr))

    async def dial_with_source(self, maddr: Multiaddr, source: tuple[str, int]) -> RawConnection:
        return self._protect(await super().dial_with_source(maddr, source))

    def create_listener(self, handler_function: THandler) -> TCPListener:
        async def protected_handler(stream: ReadWriteCloser) -> None:
            await handler_function(self._wrap(stream, self._on_inbound_mismatch))

        return super().create_listener(protected_handler)

    def _protect(self, connection: object) -> RawConnection:
        # TCP.dial is typed as returning IRawConnection but always builds a RawConnection around the
        # socket stream; that public ``stream`` attribute is the seam we wrap. A dial's mismatch is
        # counted as its outcome (dial_outcomes), not here.
        assert isinstance(connection, RawConnection), f"TCP.dial returned {type(connection).__name__}"
        return RawConnection(self._wrap(connection.stream, _ignore), initiator=True)


class PnetTCP(_WrappedTCP):
    """Every connection in the private network of ``psk``."""

    def __init__(
        self,
        psk: bytes,
        *,
        nonce_timeout_ms: int = NONCE_TIMEOUT_MS_DEFAULT,
        on_inbound_mismatch: Callable[[], None] = _ignore,
    ) -> None:
        if len(psk) != KEY_LEN_BYTES:
            raise ValueError(f"private-network key must be {KEY_LEN_BYTES} bytes, got {len(psk)}")
        if nonce_timeout_ms <= 0:
            raise ValueError(f"nonce_timeout_ms must be positive, got {nonce_timeout_ms}")

        def wrap(stream: ReadWriteCloser, on_mismatch: Callable[[], None]) -> ReadWriteCloser:
            return PnetStream(stream, psk, nonce_timeout_ms=nonce_timeout_ms, on_mismatch=on_mismatch)

        super().__init__(wrap, on_inbound_mismatch)


class PlainTCP(_WrappedTCP):
    """A public node's TCP: no cipher, but a peer in a private mesh is refused as a key mismatch."""

    def __init__(self, on_inbound_mismatch: Callable[[], None] = _ignore) -> None:
        super().__init__(PlainStream, on_inbound_mismatch)
