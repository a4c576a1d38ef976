"""How far behind each consumer group is: committed offset against high watermark, per partition.

Everything comes from the admin API, so looking never joins a group and never
triggers a rebalance of the workers being looked at.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from nlpkit.errors import NlpkitError
from nlpkit.stream.kafka_clients import admin_client


@dataclass(frozen=True)
class PartitionLag:
    """``committed`` is None when the group has not committed on this partition yet; its lag
    then counts every message still in the partition (where a new group starts reading)."""

    group: str
    topic: str
    partition: int
    committed: int | None
    high_watermark: int
    lag: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def consumer_lag(
    bootstrap_servers: str,
    groups: Sequence[str] = (),
    topics: Sequence[str] = (),
    timeout: float = 10.0,
) -> list[PartitionLag]:
    """Lag per group, topic and partition, sorted; all groups on the cluster when none are named.

    With ``topics``, only those topics are shown, every partition of them included even
    where a group has committed nothing yet.
    """
    admin = admin_client(bootstrap_servers)
    chosen_groups = list(groups) or _all_groups(admin, timeout)
    committed = {group: _committed(admin, group, timeout) for group in chosen_groups}
    partitions_of_topics = _partitions(admin, topics, timeout) if topics else []
    wanted: set[tuple[str, str, int]] = set()
    for group, offsets in committed.items():
        if topics:
            wanted.update((group, topic, partition) for topic, partition in partitions_of_topics)
        else:
            wanted.update((group, topic, partition) for topic, partition in offsets)
    ends = {(t, p) for _, t, p in wanted}
    high = _offsets(admin, ends, OffsetSpec.latest(), timeout)
    never_committed = {(t, p) for g, t, p in wanted if (t, p) not in committed[g]}
    low = _offsets(admin, never_committed, OffsetSpec.earliest(), timeout)
    rows = []
    for group, topic, partition in sorted(wanted):
        done = committed[group].get((topic, partition))
        start = done if done is not None else low[(topic, partition)]
        end = high[(topic, partition)]
        rows.append(PartitionLag(group, topic, partition, done, end, max(0, end - start)))
    return rows


def _all_groups(admin: AdminClient, timeout: float) -> list[str]:
    result = _wait(admin.list_consumer_groups(request_timeout=timeout), timeout, "list consumer groups")
    return sorted(group.group_id for group in result.valid)


def _committed(admin: AdminClient, group: str, timeout: float) -> dict[tuple[str, int], int]:
    request = [ConsumerGroupTopicPartitions(group)]
    future = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
    answer = _wait(future, timeout, f"read the offsets of group '{group}'")
    return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions if tp.offset >= 0}


def _partitions(admin: AdminClient, topics: Iterable[str], timeout: float) -> list[tuple[str, int]]:
    metadata = admin.list_topics(timeout=timeout).topics
    missing = [topic for topic in topics if topic not in metadata]
    if missing:
        raise NlpkitError(f"topic '{missing[0]}' does not exist (see `nlpkit topics list`)")
    return [(topic, partition) for topic in topics for partition in metadata[topic].partitions]


def _offsets(
    admin: AdminClient, partitions: set[tuple[str, int]], spec: OffsetSpec, timeout: float
) -> dict[tuple[str, int], int]:
    if not partitions:
        return {}
    futures = admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions}, request_timeout=timeout)
    return {(tp.topic, tp.partition): _wait(f, timeout, "read partition offsets").offset for tp, f in futures.items()}


def _wait(future: Any, timeout: float, doing: str) -> Any:
    try:
        return future.result(timeout=timeout + 5)
    except KafkaException as exc:
        raise NlpkitError(f"cannot {doing}: {exc.args[0].str()}") from exc
    except TimeoutError as exc:
        raise NlpkitError(f"cannot {doing}: the broker did not answer within {timeout:.0f} s") from exc
