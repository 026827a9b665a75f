"""The bag catalogue on SQL (SQLite or PostgreSQL): the ``BagCatalog`` half of ``SQLStateStore``.

Adding a file and recomputing its bag happen in one transaction that first
upserts the bag's row: on PostgreSQL that row lock orders two finalize jobs
filing files of the same bag (the second then reads the first's file row); on
SQLite ``BEGIN IMMEDIATE`` already serialises them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, exists, func, insert, select

from core.server import db
from core.server.catalog import BagCatalog, BagIdentity, BagQuery, BagRecord, FileFacts, TopicFacts, combine
from core.server.db import bag_files, bag_topics, bags, upsert

_IDENTITY = ("owner", "name", "robot_id", "session", "split_index", "storage", "recovered")


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _bag(row: Mapping[str, Any], topics: Sequence[TopicFacts] = (), files: Sequence[FileFacts] = ()) -> BagRecord:
    values = {name: row[name] for name in BagRecord.__dataclass_fields__ if name not in ("topics", "files")}
    values["recovered"] = bool(values["recovered"])
    return BagRecord(**values, topics=tuple(topics), files=tuple(files))


class SQLBagCatalog(BagCatalog):
    engine: Engine

    def record_bag_file(self, bag: BagIdentity, facts: FileFacts, now: float) -> BagRecord:
        identity = {name: getattr(bag, name) for name in _IDENTITY}
        with db.write(self.engine) as conn:
            stmt = upsert(conn, bags).values(
                bag_id=bag.bag_id,
                **identity,
                start_ns=0,
                end_ns=0,
                message_count=0,
                size=0,
                stored_size=0,
                updated_at=now,
            )
            # A recovered file makes the whole bag recovered; the lock taken here orders concurrent filers.
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["bag_id"],
                    set_={"updated_at": now, "recovered": bags.c.recovered | stmt.excluded.recovered},
                )
            )
            file_row = {"bag_id": bag.bag_id, "filename": facts.filename, "facts": json.dumps(facts.to_json())}
            put = upsert(conn, bag_files).values(upload_id=facts.upload_id, **file_row)
            conn.execute(put.on_conflict_do_update(index_elements=["upload_id"], set_=file_row))
            files = self._files(conn, bag.bag_id)
            summary = combine(files)
            conn.execute(
                bags.update()
                .where(bags.c.bag_id == bag.bag_id)
                .values(
                    start_ns=summary.start_ns,
                    end_ns=summary.end_ns,
                    message_count=summary.message_count,
                    size=summary.size,
                    stored_size=summary.stored_size,
                )
            )
            conn.execute(delete(bag_topics).where(bag_topics.c.bag_id == bag.bag_id))
            if summary.topics:
                conn.execute(
                    insert(bag_topics),
                    [
                        {"bag_id": bag.bag_id, "name": t.name, "type": t.type, "message_count": t.message_count}
                        for t in summary.topics
                    ],
                )
            row = conn.execute(select(bags).where(bags.c.bag_id == bag.bag_id)).mappings().one()
        return _bag(row, summary.topics, files)

    @staticmethod
    def _files(conn: Connection, bag_id: str) -> list[FileFacts]:
        rows = conn.execute(
            select(bag_files.c.facts).where(bag_files.c.bag_id == bag_id).order_by(bag_files.c.filename)
        ).scalars()
        return [FileFacts.from_json(json.loads(text)) for text in rows]

    @staticmethod
    def _topics(conn: Connection, bag_ids: Sequence[str]) -> dict[str, list[TopicFacts]]:
        found: dict[str, list[TopicFacts]] = {bag_id: [] for bag_id in bag_ids}
        if not bag_ids:
            return found
        c = bag_topics.c
        rows = conn.execute(
            select(c.bag_id, c.name, c.type, c.message_count).where(c.bag_id.in_(bag_ids)).order_by(c.bag_id, c.name)
        )
        for bag_id, name, type_, count in rows:
            found[bag_id].append(TopicFacts(name, type_, int(count)))
        return found

    def get_bag(self, bag_id: str) -> BagRecord | None:
        with db.read(self.engine) as conn:
            row = conn.execute(select(bags).where(bags.c.bag_id == bag_id)).mappings().first()
            if row is None:
                return None
            return _bag(row, self._topics(conn, [bag_id])[bag_id], self._files(conn, bag_id))

    @staticmethod
    def _where(query: BagQuery) -> list[Any]:
        c = bags.c
        where: list[Any] = []
        for column, value in (
            (c.owner, query.owner),
            (c.robot_id, query.robot_id),
            (c.session, query.session),
            (c.recovered, query.recovered),
        ):
            if value is not None:
                where.append(column == value)
        # Overlap: the bag ends at or after the window starts and starts at or before it ends.
        if query.since_ns is not None:
            where.append(c.end_ns >= query.since_ns)
        if query.until_ns is not None:
            where.append(c.start_ns <= query.until_ns)
        t = bag_topics.c
        topic_conditions = []
        if query.topic is not None:
            topic_conditions.append(
                t.name.like(_like_prefix(query.topic), escape="\\") if query.topic_prefix else t.name == query.topic
            )
        if query.message_type is not None:
            topic_conditions.append(t.type == query.message_type)
        if topic_conditions:
            where.append(exists().where(and_(t.bag_id == c.bag_id, *topic_conditions)))
        return where

    def list_bags(self, query: BagQuery) -> tuple[list[BagRecord], int]:
        c = bags.c
        where = self._where(query)
        order = (c.start_ns, c.bag_id) if query.ascending else (c.start_ns.desc(), c.bag_id.desc())
        with db.read(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(bags).where(*where)).scalar_one()
            rows = (
                conn.execute(select(bags).where(*where).order_by(*order).limit(query.limit).offset(query.offset))
                .mappings()
                .all()
            )
            topics = self._topics(conn, [row["bag_id"] for row in rows])
        return [_bag(row, topics[row["bag_id"]]) for row in rows], int(total)

    def delete_bag(self, bag_id: str) -> BagRecord | None:
        with db.write(self.engine) as conn:
            row = conn.execute(select(bags).where(bags.c.bag_id == bag_id).with_for_update()).mappings().first()
            if row is None:
                return None
            gone = _bag(row, self._topics(conn, [bag_id])[bag_id], self._files(conn, bag_id))
            for table in (bag_topics, bag_files, bags):
                conn.execute(delete(table).where(table.c.bag_id == bag_id))
        return gone
