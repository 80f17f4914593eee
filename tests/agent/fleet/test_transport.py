"""The fleet's Redis transport when its connection was closed under it (a worker losing Redis).

The state is made by kombu's own close path (``Connection._do_close_transport``), on a real
redis-server: the race in which Celery's consumer closes the connection before its channel has
put back or acknowledged its messages cannot be timed from outside.
"""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection, Queue
from kombu.transport import redis as kombu_redis

from tests.fixtures.redis import RedisServer
from vmkeep.agent.fleet.transport import Transport


def held_messages(redis_server: RedisServer, transport: type) -> tuple[Any, list[Any]]:
    """A channel holding two unacknowledged messages, its connection then closed under it."""
    conn = Connection(redis_server.url, transport=transport, password=redis_server.password)
    channel = conn.channel()
    queue = Queue("q1", routing_key="q1")(channel)
    queue.declare()
    for n in range(2):
        conn.Producer(channel).publish({"task": n}, routing_key="q1")
    messages = [queue.get(no_ack=False) for _ in range(2)]
    assert None not in messages
    conn._do_close_transport()  # what kombu does to the connection when Celery's consumer closes it
    return channel, messages


def test_stock_kombu_fails_on_a_channel_whose_connection_closed(redis_server: RedisServer) -> None:
    channel, _ = held_messages(redis_server, kombu_redis.Transport)
    with pytest.raises(AttributeError, match="hostname"):
        channel.close()  # what stopped every worker that lost Redis at that moment


def test_a_closed_connection_neither_restores_nor_acks_and_redis_keeps_the_messages(
    redis_server: RedisServer,
) -> None:
    channel, [ended, running] = held_messages(redis_server, Transport)
    ended.ack()  # a task that ended as the connection went
    channel.close()  # the consumer closing: puts nothing back
    running.ack()  # a task that ended after
    client = redis_server.client()
    assert client.hlen("unacked") == 2, "both stay in Redis, for visibility_timeout to put back"  # type: ignore[attr-defined]
    assert client.llen("q1") == 0  # type: ignore[attr-defined]


def test_an_open_connection_acks_as_always(redis_server: RedisServer) -> None:
    conn = Connection(redis_server.url, transport=Transport, password=redis_server.password)
    channel = conn.channel()
    queue = Queue("q1", routing_key="q1")(channel)
    queue.declare()
    conn.Producer(channel).publish({"task": 1}, routing_key="q1")
    message = queue.get(no_ack=False)
    message.ack()
    assert redis_server.client().hlen("unacked") == 0  # type: ignore[attr-defined]
    conn.close()
