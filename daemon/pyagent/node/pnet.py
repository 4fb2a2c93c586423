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

Use: ``libp2p.new_host(..., transports=[PnetTCP(psk)])`` and leave py-libp2p's ``psk`` unset.
"""

import logging
import os
import pathlib

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


class PnetStream(ReadWriteCloser):
    """A TCP stream encrypted with the private-network cipher, with the nonce exchange done lazily.

    The handshake runs on first use, inside py-libp2p's upgrade, so it counts against the swarm's own
    inbound limits and upgrade timeout rather than needing limits of its own.
    """

    def __init__(self, inner: ReadWriteCloser, psk: bytes, *, nonce_timeout_ms: int) -> None:
        self._inner = inner
        # Read now: once the peer hangs up (as a peer with the wrong key does) the socket cannot say.
        self._peer_address = inner.get_remote_address()
        self._psk = psk
        self._nonce_timeout_ms = nonce_timeout_ms
        self._local_nonce = os.urandom(NONCE_LEN_BYTES)
        self._encrypt = XSalsa20(psk, self._local_nonce)
        self._decrypt: XSalsa20 | None = None
        self._nonce_sent = False
        self._header_bytes_checked = 0
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
        if self._header_bytes_checked < len(MULTISTREAM_HEADER):
            self._check_header(plaintext)
        return plaintext

    def _check_header(self, plaintext: bytes) -> None:
        start = self._header_bytes_checked
        expected = MULTISTREAM_HEADER[start : start + len(plaintext)]
        if plaintext[: len(expected)] != expected:
            raise self._mismatch("its bytes do not decrypt under our key (it has a different swarm.key)")
        self._header_bytes_checked += len(expected)

    async def _read_peer_nonce(self) -> bytes:
        received = bytearray()
        with trio.move_on_after(self._nonce_timeout_ms / 1000):
            while len(received) < NONCE_LEN_BYTES:
                chunk = await self._inner.read(NONCE_LEN_BYTES - len(received))
                if not chunk:
                    raise NonceExchangeError(
                        f"private-network peer {self._peer_name()} closed the connection before sending "
                        "its nonce (it may use a different swarm.key or none)"
                    )
                received += chunk
                if received.startswith(MULTISTREAM_HEADER):
                    raise self._mismatch("it speaks plaintext multistream-select (it has no swarm.key)")
            return bytes(received)
        raise NonceExchangeError(
            f"private-network peer {self._peer_name()} sent no nonce within {self._nonce_timeout_ms} ms"
        )

    def _mismatch(self, reason: str) -> KeyMismatchError:
        message = (
            f"private-network key does not match peer {self._peer_name()}: {reason}; "
            f"our key fingerprint is {key_fingerprint(self._psk)}"
        )
        logger.warning("%s", message)
        return KeyMismatchError(message)

    def _peer_name(self) -> str:
        address = self._peer_address
        return "(unknown address)" if address is None else f"{address[0]}:{address[1]}"

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()


class PnetTCP(TCP):
    """py-libp2p's TCP transport with every connection, dialled or accepted, in the private network."""

    def __init__(self, psk: bytes, *, nonce_timeout_ms: int = NONCE_TIMEOUT_MS_DEFAULT) -> None:
        super().__init__()
        if len(psk) != KEY_LEN_BYTES:
            raise ValueError(f"private-network key must be {KEY_LEN_BYTES} bytes, got {len(psk)}")
        if nonce_timeout_ms <= 0:
            raise ValueError(f"nonce_timeout_ms must be positive, got {nonce_timeout_ms}")
        self._psk = psk
        self._nonce_timeout_ms = nonce_timeout_ms

    async def dial(self, maddr: Multiaddr) -> RawConnection:
        return self._protect(await super().dial(maddr))

    async def dial_with_source(self, maddr: Multiaddr, source: tuple[str, int]) -> RawConnection:
        return self._protect(await super().dial_with_source(maddr, source))

    def create_listener(self, handler_function: THandler) -> TCPListener:
        async def protected_handler(stream: ReadWriteCloser) -> None:
            await handler_function(self._wrap(stream))

        return super().create_listener(protected_handler)

    def _protect(self, connection: object) -> RawConnection:
        # TCP.dial is typed as returning IRawConnection but always builds a RawConnection around the
        # socket stream; that public ``stream`` attribute is the seam we wrap.
        assert isinstance(connection, RawConnection), f"TCP.dial returned {type(connection).__name__}"
        return RawConnection(self._wrap(connection.stream), initiator=True)

    def _wrap(self, stream: ReadWriteCloser) -> PnetStream:
        return PnetStream(stream, self._psk, nonce_timeout_ms=self._nonce_timeout_ms)
