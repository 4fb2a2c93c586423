"""Transfers to a receiver in another process: a kill -9 mid-transfer fails the sender promptly with the
acknowledged prefix, and a restarted receiver (which lost its resume table) takes the blob from 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import trio
from libp2p import generate_new_ed25519_identity

from pyagent.node.host import Host, HostConfig
from pyagent.node.inbox import Inbox
from pyagent.node.transfer import TransferConfig, TransferService
from pyagent.proto.events import Event, TransferChunk, TransferDone, TransferFailed, TransferProgress
from pyagent.proto.ready import Transfer

COMPONENT = "/pyagent/test-component/1.0.0"
WAIT_S = 30.0


async def serve() -> None:
    """The receiver: a Host and a TransferService whose owner task steps each chunk at once."""
    events_send, events_receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), HostConfig(), events_send)
    inbox: Inbox[Event] = Inbox(4096, 65_536)
    service = TransferService(host, inbox, inbox.send_feedback, lambda protocol: protocol == COMPONENT)

    async def own() -> None:
        while True:
            item = await inbox.receive()
            if isinstance(item, TransferChunk):
                service.chunk_stepped(item)

    async def drain() -> None:
        async for _event in events_receive:
            pass

    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(own)
        nursery.start_soon(drain)
        nursery.start_soon(service.run)
        print(host.listen_addrs()[0], flush=True)


class PacedSource:
    """64 MiB of a repeating pattern, read slowly enough to kill the receiver in the middle."""

    size = 64 << 20

    def read(self, offset: int, length: int) -> bytes:
        time.sleep(0.002)
        return bytes((offset // 4096 + i // 4096) % 251 for i in range(0, length, 4096)) * 4096


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


async def test_a_killed_receiver_fails_the_sender_and_a_fresh_one_starts_over() -> None:
    events_send, _events_receive = trio.open_memory_channel[Event](4096)
    host = Host(generate_new_ed25519_identity(), HostConfig(), events_send)
    feedback: list[Event] = []
    service = TransferService(host, Inbox(16, 16), feedback.append, lambda protocol: False, TransferConfig())
    source = PacedSource()

    async def wait_for(kind: type[Event], minimum: int = 0) -> Event:
        with trio.fail_after(WAIT_S):
            while True:
                for event in feedback:
                    if isinstance(event, kind) and getattr(event, "acked", 0) >= minimum:
                        return event
                await trio.sleep(0.01)

    first, addr = start_receiver()
    second = None
    try:
        async with host.running(), trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            peer = addr.rsplit("/p2p/", 1)[1]
            service.start(Transfer(peer, COMPONENT, 1, source, addrs=(addr,)))
            await wait_for(TransferProgress, 8 << 20)
            os.kill(first.pid, signal.SIGKILL)
            killed_at = trio.current_time()
            failed = await wait_for(TransferFailed)
            assert isinstance(failed, TransferFailed)
            assert trio.current_time() - killed_at < 10.0
            assert failed.reason.startswith("stream:"), failed.reason
            assert 8 << 20 <= failed.acked < source.size

            # A new receiver process has no resume table: the offer to resume is answered with 0.
            second, addr = start_receiver()
            peer = addr.rsplit("/p2p/", 1)[1]
            feedback.clear()
            service.start(Transfer(peer, COMPONENT, 2, source, offset=failed.acked, addrs=(addr,)))
            done = await wait_for(TransferDone)
            assert isinstance(done, TransferDone) and done.size == source.size
            assert service.stats()["out_bytes"] >= source.size + (8 << 20)
            nursery.cancel_scope.cancel()
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait(10)


if __name__ == "__main__":
    trio.run(serve)
