"""How a publication travels through Redis (pure: no I/O, no redis import).

A publication's *payload* is one MessagePack array ``[data, user, client, ts]``
(``user``/``client`` are nil for a backend publication). It is stored as field
``p`` of the channel's stream entry, whose id is ``<offset>-0``.

On pub/sub the *envelope* is ``<epoch>:<offset>:<payload>``, built by
``publish.lua`` with plain concatenation, so a node reads the position without
decoding the payload (it skips a duplicate cheaply). An ephemeral publication
has an empty epoch and offset: ``::<payload>``.

``tidings.client``'s RedisEmitter may reuse these functions to publish without a node.
"""

from __future__ import annotations

from typing import Any

import msgpack

from tidings.server.cluster.backplane import Publication, Sender, kind_of

__all__ = [
    "decode_publication",
    "encode_payload",
    "ephemeral_envelope",
    "offset_of_entry_id",
    "split_envelope",
]


def encode_payload(data: Any, sender: Sender | None, ts: int) -> bytes:
    """The payload of one publication."""
    user, client = (sender.user, sender.client) if sender is not None else (None, None)
    payload: bytes = msgpack.packb([data, user, client, ts], use_bin_type=True)
    return payload


def decode_publication(channel: str, epoch: str, offset: int | None, payload: bytes) -> Publication:
    """The publication a payload holds, with its kind (:func:`kind_of`: the payload carries none).

    Raises:
        ValueError: ``payload`` is not one this module encoded.
    """
    try:
        data, user, client, ts = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError("not a Tidings payload") from exc
    sender = Sender(user, client) if isinstance(user, str) and isinstance(client, str) else None
    return Publication(channel, epoch, offset, data, sender, int(ts), kind_of(channel, offset, sender, data))


def ephemeral_envelope(payload: bytes) -> bytes:
    """The pub/sub message of an ephemeral publication (no epoch, no offset)."""
    return b"::" + payload


def split_envelope(message: bytes) -> tuple[str, int | None, bytes]:
    """``(epoch, offset, payload)`` of a pub/sub message; offset None (and epoch "") when ephemeral.

    Raises:
        ValueError: ``message`` is not an envelope.
    """
    epoch, offset, payload = message.split(b":", 2)
    if not offset:
        return "", None, payload
    return epoch.decode("ascii"), int(offset), payload


def offset_of_entry_id(entry_id: bytes) -> int:
    """The offset a stream entry id (``b"<offset>-0"``) stands for."""
    return int(entry_id.partition(b"-")[0])
