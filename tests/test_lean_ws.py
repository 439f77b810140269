"""The lean uvicorn protocol: its queue and flag behave as the asyncio ones uvicorn expects, and nodes use it."""

from __future__ import annotations

import asyncio

import pytest

from tidings.client import Connection
from tidings.server.transport.lean_protocol import LeanWebSocketProtocol, Mailbox, WritableFlag

from .support.timing import UNIT


async def test_mailbox_keeps_order_and_wakes_a_waiting_reader() -> None:
    mailbox = Mailbox()
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    assert mailbox.qsize() == 2 and not mailbox.empty()
    assert [await mailbox.get(), await mailbox.get()] == [1, 2]
    assert mailbox.empty()
    reader = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)  # the reader is now waiting
    assert not reader.done()
    mailbox.put_nowait(3)
    assert await asyncio.wait_for(reader, 5 * UNIT) == 3


async def test_mailbox_refuses_a_second_concurrent_reader_and_survives_a_cancelled_one() -> None:
    mailbox = Mailbox()
    first = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already waiting"):
        await mailbox.get()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    mailbox.put_nowait("after")  # nothing is lost to the cancelled reader
    assert await asyncio.wait_for(mailbox.get(), 5 * UNIT) == "after"


async def test_writable_flag_blocks_writers_while_cleared() -> None:
    flag = WritableFlag()
    assert flag.is_set() and await flag.wait() is True
    flag.clear()
    writers = [asyncio.create_task(flag.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not any(w.done() for w in writers)
    cancelled.cancel()
    await asyncio.sleep(0)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*writers), 5 * UNIT) == [True, True, True]
    assert cancelled.cancelled()


async def test_nodes_serve_websockets_with_the_lean_protocol(node, token) -> None:
    """A real connection runs on LeanWebSocketProtocol, and its handshake headers are not kept."""
    async with Connection(node.ws_url, token("alice")) as alice:
        hub = node.server.lifespan.state["hub"]
        (connection,) = [c for c in hub.connections.values() if c.client_id == alice.info["client"]]
        protocol = connection._direct._protocol
        assert isinstance(protocol, LeanWebSocketProtocol)
        assert isinstance(protocol.queue, Mailbox) and isinstance(protocol.writable, WritableFlag)
        assert protocol.request is None and protocol.response is None
        await alice.subscribe("room:lean")
        await alice.publish("room:lean", {"n": 1})
        assert (await alice.publications("room:lean", timeout=5 * UNIT))["data"] == {"n": 1}
