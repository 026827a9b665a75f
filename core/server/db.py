"""The state database: one SQLAlchemy engine (SQLite in UPLOAD_DIR, or PostgreSQL), its tables and its schema version.

Every store (uploads, chunk receipts, jobs and leases, API keys, robots and
commands, dashboard counters) is a table here, so one transaction can change
several of them and one ``pg_dump`` or SQLite snapshot holds all of them.
SQLite is opened in WAL mode with ``synchronous=FULL`` (chunk receipts excepted, see
``write``: a chunk costs one fsync, its data's own) and every write transaction starts with
``BEGIN IMMEDIATE``, so read-then-write cannot race between processes.
Times that decide who may act (job leases, the sweep lease) come from the
database's clock (``db_now``), never from each host's.
"""

from __future__ import annotations

import errno
import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    exc,
    inspect,
    literal_column,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.elements import ColumnElement

from core.config import ServerConfig
from core.sqlite import enable_wal

log = logging.getLogger("upload_server")

STATE_FILE = "state.sqlite3"
EXTENSION = "state_engine"
UPGRADE_COMMAND = "flask --app upload_server db upgrade"
# SQLite's busy timeout: how long a writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT = 30.0
_TIME = Float(precision=53)  # epoch seconds; DOUBLE PRECISION on PostgreSQL

metadata = MetaData()

uploads = Table(
    "uploads",
    metadata,
    Column("upload_id", String(32), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("filesize", BigInteger, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Column("md5", Text),
    Column("sha256", Text),
    Column("compression", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("blob_id", Text),
    Column("codec", Text),
    Column("stored_size", BigInteger),
    Column("verified", Boolean, nullable=False, default=False),
    Column("deduplicated", Boolean, nullable=False, default=False),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("progress", BigInteger, nullable=False, default=0),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("fingerprint", Text),  # core.protocol.FINGERPRINT_EDGE; from clients that declare sha256 at finalize
    Index("uploads_by_file", "owner", "filename", "filesize", "state"),
    Index("uploads_by_sha256", "sha256", "state"),
    Index("uploads_by_md5", "md5", "filesize", "state"),
    Index("uploads_by_fingerprint", "fingerprint", "filesize", "state"),
    Index("uploads_by_created", "created_at"),
    Index("uploads_by_activity", "state", "updated_at"),
)

chunks = Table(
    "chunks",
    metadata,
    Column("upload_id", String(32), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("receipt", Text, nullable=False),  # "<algorithm>:<hex>", core.checksums.ChunkChecksum
    PrimaryKeyConstraint("upload_id", "idx"),
)

# ``attempts`` is the fencing token: every claim increments it, and every state change of an
# attempt checks it in the same statement, so a worker whose lease ran out changes nothing.
jobs = Table(
    "jobs",
    metadata,
    Column("upload_id", String(32), primary_key=True),
    Column("holder", Text),
    Column("due_at", _TIME, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # Failed attempts that count against JOB_MAX_ATTEMPTS: not crashes, takeovers or a full disk.
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
)

leases = Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("until", _TIME, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(12), primary_key=True),
    Column("name", Text, nullable=False, index=True),
    Column("admin", Boolean, nullable=False),
    Column("secret_sha256", Text, nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("revoked_at", _TIME),
)

robots = Table(
    "robots",
    metadata,
    Column("robot_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("last_seen", _TIME, nullable=False),
    Column("first_seen", _TIME, nullable=False),
    # The last heartbeat the server refused (413, 400, 401, 403, 429…), so the dashboard can say why.
    Column("rejected_at", _TIME),
    Column("rejected_status", Integer),
    Column("rejected_reason", Text),
)

commands = Table(
    "commands",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("robot_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("args", Text, nullable=False),
    Column("issued_by", Text, nullable=False),
    Column("created_at", _TIME, nullable=False),
    Column("state", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Index("commands_open", "robot_id", "state"),
    Index("commands_created", "created_at"),
)

dashboard_buckets = Table(
    "dashboard_buckets",
    metadata,
    Column("t", Integer, primary_key=True, autoincrement=False),
    Column("requests", Integer, nullable=False),
    Column("rate_limited", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("bytes_in", BigInteger, nullable=False),
)

# The bag catalogue (core/server/catalog.py): one row per bag, its files, its topics.
bags = Table(
    "bags",
    metadata,
    Column("bag_id", String(32), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("robot_id", Text, nullable=False),
    Column("session", Text, nullable=False),
    Column("split_index", Integer, nullable=False),
    Column("storage", Text, nullable=False),
    Column("recovered", Boolean, nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("message_count", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("stored_size", BigInteger, nullable=False),
    Column("updated_at", _TIME, nullable=False),
    Index("bags_by_start", "start_ns", "bag_id"),
    Index("bags_by_robot", "robot_id", "start_ns"),
    Index("bags_by_session", "session", "start_ns"),
)

bag_files = Table(
    "bag_files",
    metadata,
    Column("upload_id", String(32), primary_key=True),
    Column("bag_id", String(32), nullable=False),
    Column("filename", Text, nullable=False),
    Column("facts", Text, nullable=False),  # catalog.FileFacts as JSON
    Index("bag_files_by_bag", "bag_id"),
)

bag_topics = Table(
    "bag_topics",
    metadata,
    Column("bag_id", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("message_count", BigInteger, nullable=False),
    PrimaryKeyConstraint("bag_id", "name"),
    Index("bag_topics_by_name", "name", "bag_id"),
    Index("bag_topics_by_type", "type", "bag_id"),
)


# tus uploads (core/server/tus/): the protocol's view of an ``uploads`` row with the same id.
# ``upload_offset`` is the contiguous byte count stored and acknowledged; ``received_sha256`` is
# the sha256 of those bytes hashed in order as they were written, set when the upload completes
# in one process (finalize then need not re-read them); ``concat`` is "partial", "final",
# ``CONCAT_JOINED`` or null.
tus_uploads = Table(
    "tus_uploads",
    metadata,
    Column("upload_id", String(32), primary_key=True),
    Column("upload_length", BigInteger, nullable=False),
    Column("upload_offset", BigInteger, nullable=False),
    Column("concat", Text),
    Column("parts", Text),  # a final upload's partial upload ids, JSON
    Column("raw_metadata", Text, nullable=False),  # the Upload-Metadata header as sent, for HEAD
    Column("received_sha256", Text),
    # The running sha256 of bytes [0, upload_offset), exported (core/server/tus/hashing.py), and its format.
    Column("hash_format", Text),
    Column("hash_state", LargeBinary),
)


# A partial upload whose bytes a final upload now holds: not a failure, so listings leave it out;
# the sweep deletes its rows after STATE_RETENTION (``TusStore.prune_joined``).
CONCAT_JOINED = "joined"


class SchemaOutdated(RuntimeError):
    """The database is older than this code: the operator must run the upgrade command."""


# --- engines ---------------------------------------------------------------------------------
def state_url(config: ServerConfig) -> str:
    """STATE_STORE_URI as SQLAlchemy spells it: empty means the SQLite file in UPLOAD_DIR."""
    uri = config.state_store_uri
    if not uri:
        return f"sqlite:///{config.upload_dir / STATE_FILE}"
    if uri.startswith("postgresql://"):
        return "postgresql+psycopg://" + uri.removeprefix("postgresql://")
    return uri


def open_engine(config: ServerConfig) -> Engine:
    """The engine of STATE_STORE_URI; SQLite's directory is created, PostgreSQL's pool sized per process."""
    url = state_url(config)
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(
            url, pool_size=config.state_pool_size, max_overflow=0, pool_pre_ping=True, pool_timeout=10
        )
    _dispose_after_fork(engine)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    enable_wal(dbapi_connection, SQLITE_BUSY_TIMEOUT)
    dbapi_connection.execute("PRAGMA synchronous=FULL")


@contextmanager
def _sqlite_synchronous(conn: Connection, level: str) -> Iterator[None]:
    """Run one transaction at SQLite ``synchronous=level`` (set outside it: SQLite refuses inside one)."""
    if level == "FULL" or conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    raw.execute(f"PRAGMA synchronous={level}")
    try:
        yield
    finally:
        raw.execute("PRAGMA synchronous=FULL")


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front; reads ask for a plain (deferred) transaction.
    immediate = not conn.get_execution_options().get("read_only", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _dispose_after_fork(engine: Engine) -> None:
    """gunicorn imports the app, then forks: a child must open its own connections, never the parent's."""
    ref = weakref.ref(engine)

    def reset() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=reset)


@contextmanager
def write(engine: Engine, *, durable: bool = True) -> Iterator[Connection]:
    """One write transaction; a full disk or database is the same ``OSError(ENOSPC)`` as the blob store's.

    ``durable=False`` (chunk receipts only) commits on SQLite with ``synchronous=NORMAL``: the WAL is
    not fsynced, so the commit survives a crash of any process but perhaps not a power loss. A receipt
    lost that way costs a re-sent chunk, never data: its bytes are fsynced before the receipt, the robot
    deletes nothing before "verified", and the next durable commit (finalize's, among others) fsyncs
    the WAL with every receipt before it. PostgreSQL commits are durable either way.
    """
    try:
        with engine.connect() as conn, _sqlite_synchronous(conn, "FULL" if durable else "NORMAL"), conn.begin():
            yield conn
    except exc.OperationalError as err:
        if is_disk_full(err):
            raise OSError(errno.ENOSPC, f"state database: {err.orig}") from err
        raise


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (no write lock on SQLite)."""
    with engine.connect().execution_options(read_only=True) as conn, conn.begin():
        yield conn


@contextmanager
def direct_connection(engine: Engine) -> Iterator[Any]:
    """A pooled DBAPI connection for ``DirectRead`` statements, back to the pool at the end (see ``DirectRead``)."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()
    except dbapi_error as err:  # the database is down: as SQLAlchemy's own connect would say
        raise exc.DBAPIError.instance(None, None, err, dbapi_error, connection_invalidated=True) from err
    try:
        yield raw
    finally:
        raw.close()


class DirectRead:
    """One SELECT run straight on a pooled DBAPI connection, compiled once per dialect.

    For the lookups most requests make (the API key; a status poll's upload and receipts):
    SQLAlchemy's connection and transaction layer cost ~110 µs per statement here, the DBAPI
    call ~13 µs. A lone SELECT needs no transaction of its own (SQLite and PostgreSQL read one
    snapshot per statement). Rows come back as the DBAPI gives them (SQLite booleans are 0/1),
    and a DBAPI error is raised as SQLAlchemy's, so the 503 handling stays the same.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}

    def _sql(self, engine: Engine) -> tuple[str, tuple[str, ...] | None]:
        compiled = self._compiled.get(engine.dialect.name)
        if compiled is None:
            done = self.statement.compile(dialect=engine.dialect)
            compiled = (str(done), tuple(done.positiontup or ()) if done.positional else None)
            self._compiled[engine.dialect.name] = compiled
        return compiled

    def rows(
        self, engine: Engine, *, first: bool = False, raw: Any = None, **params: Any
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, rows); ``first``: at most one row is fetched.

        ``raw``: a connection of ``direct_connection`` to run on, for several reads of one request
        (each checkout and return to the pool costs more than a lookup by primary key).
        """
        if raw is None:
            with direct_connection(engine) as own:
                return self.rows(engine, first=first, raw=own, **params)
        sql, order = self._sql(engine)
        args: Any = params if order is None else tuple(params[name] for name in order)
        dbapi_error = engine.dialect.loaded_dbapi.Error
        try:
            cursor = raw.cursor()
            cursor.execute(sql, args)
            names = [column[0] for column in cursor.description]
            found = cursor.fetchmany(1) if first else cursor.fetchall()
            cursor.close()
        except dbapi_error as err:
            lost = engine.dialect.is_disconnect(err, raw.dbapi_connection, None)
            raw.invalidate()  # a connection that failed a statement does not go back to the pool
            raise exc.DBAPIError.instance(sql, args, err, dbapi_error, connection_invalidated=lost) from err
        return names, list(found)

    def first(self, engine: Engine, *, raw: Any = None, **params: Any) -> dict[str, Any] | None:
        names, found = self.rows(engine, first=True, raw=raw, **params)
        return dict(zip(names, found[0], strict=True)) if found else None


def is_disk_full(err: exc.DBAPIError) -> bool:
    orig = err.orig
    if getattr(orig, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
        return True
    return getattr(orig, "sqlstate", None) == "53100"  # PostgreSQL disk_full


def upsert(conn: Connection, table: Any) -> Any:
    """The dialect's ``INSERT … ON CONFLICT`` (SQLite and PostgreSQL spell it the same way)."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def db_now(conn: Connection) -> ColumnElement[float]:
    """The database's current time in epoch seconds, as an SQL expression (one clock for every host)."""
    if conn.dialect.name == "sqlite":
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)")
    return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")


def checked_engine(config: ServerConfig) -> Engine:
    """``open_engine`` whose schema is known to be current (see ``check_schema``).

    Under the ``flask`` command line an outdated schema is only a warning: that is where
    ``db upgrade`` (and ``backup create`` before it) must be able to run.
    """
    engine = open_engine(config)
    try:
        check_schema(engine)
    except SchemaOutdated as err:
        if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
            engine.dispose()
            raise
        log.warning("%s", err)
    return engine


# --- schema version ---------------------------------------------------------------------------
def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str:
    head = ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()
    assert head is not None  # noqa: S101 - the package ships its migrations
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


LEGACY_REVISION = "0001"


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; (revision before, after). A database of the pre-Alembic
    server (tables, no version) is recognised as revision 0001 and upgraded with all its rows kept."""
    cfg = _alembic_config(engine)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        before = current_revision(conn)
    if before is None and "uploads" in tables:
        command.stamp(cfg, LEGACY_REVISION)
        before = LEGACY_REVISION
    command.upgrade(cfg, "head")
    return before, head_revision(engine)


def check_schema(engine: Engine) -> None:
    """Refuse to serve on an outdated schema; an empty database gets the schema at once.

    Creating a fresh schema in place is what every first start needs (and what tests do);
    changing an existing one is the operator's decision, so it only names the command.
    """
    head = head_revision(engine)
    with engine.connect() as conn:
        revision = current_revision(conn)
        empty = not inspect(conn).get_table_names()
    if revision == head:
        return
    if empty:
        upgrade(engine)
        log.info("State database created at schema %s: %s", head, engine.url.render_as_string(hide_password=True))
        return
    shown = revision or "pre-migration (no version table)"
    msg = (
        f"state database {engine.url.render_as_string(hide_password=True)} has schema {shown}, "
        f"this server needs {head}: stop the servers, back up, and run `{UPGRADE_COMMAND}`"
    )
    raise SchemaOutdated(msg)
