"""Kombu's Redis transport, made to survive its own connection being closed under it.

When a worker loses Redis, Celery's consumer closes the connection and kombu closes its channel.
Kombu then puts the messages the worker holds unacknowledged back into their queues, and Celery
acknowledges the tasks that end meanwhile; kombu 5.7 does both through a connection pool it makes on
first use from the channel's connection, which may be closed already (its ``client`` is None). The
``AttributeError`` that follows is not one of the connection errors Celery ignores there: the worker
stops ("Unrecoverable error ... no attribute 'hostname'"), and a task that ended just then is
recorded as failed ("reject requeue=False"). Every worker that lost Redis at that moment was gone.

Skipping those calls on a closed connection loses nothing: with this transport an unacknowledged
message is kept in Redis itself (the ``unacked`` hash), and put back in its queue after
``visibility_timeout`` by any worker; a task that ran meanwhile is answered from its claim's record.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger("vmkeep.agent.fleet.transport")


class QoS(kombu_redis.QoS):
    def _closed(self) -> bool:
        return getattr(self.channel.connection, "client", None) is None

    def restore_unacked_once(self, stderr: Any = None) -> None:
        if self._closed() and self._delivered:
            log.warning(
                "lost Redis with %d task(s) unacknowledged; Redis keeps them and puts them back after "
                "visibility_timeout (the agent hands them out again if Redis lost everything)",
                len(self._delivered),
            )
            self._delivered.clear()
        super().restore_unacked_once(stderr)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if self._closed():
            # the message stays in Redis' unacked hash and comes back after visibility_timeout: that
            # delivery finds the task's answer in its claim's record
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._closed():
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
