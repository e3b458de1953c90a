"""The persistent privacy ledger: one SQLite file per private dataset.

A ledger holds the dataset's (ε, δ) budget, the accountant that bounds it, and every query ever
charged against it. :meth:`Ledger.charge` is an atomic check-and-charge:

1. validate the query (nothing is opened for bad input);
2. ``BEGIN IMMEDIATE``: take SQLite's write lock, so no other process can charge in between;
3. read the grouped history ((σ, q, k) → total count), compose it with the new queries under the
   ledger's accountant (:func:`privdiff.accounting.compute_epsilon`);
4. if ε would exceed the budget: roll back and raise
   :class:`~privdiff.errors.PrivacyBudgetExceeded` (nothing recorded); else insert and ``COMMIT``
   (WAL journal, ``synchronous=FULL``: durable when ``charge`` returns).

The caller releases its output only after ``charge`` returns, so a crash between charge and
release can only over-count privacy loss, never under-count it. Many processes may charge the same
file at once: the write lock serialises them, ``busy_timeout`` plus a retry loop waits out the
others, and each sees the history committed before it.

The file identifies itself with SQLite's ``application_id`` (:data:`APPLICATION_ID`, "PDVL") and
``user_version`` (:data:`SCHEMA_VERSION`). :meth:`Ledger.open` refuses anything else — a missing
file, garbage bytes, a truncated file, another program's SQLite database, a newer schema — with
:class:`~privdiff.errors.LedgerError`, and never rewrites or resets it.

``request_id`` is an audit label, not an idempotency key: two charges with the same id are two
releases with fresh noise, so both are charged.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from privdiff.accounting.accountants import DEFAULT_ACCOUNTANT, check_accountant, compute_epsilon
from privdiff.accounting.query import DPRDMQuery, check_delta, check_epsilon
from privdiff.errors import InvalidParameter, LedgerError, PrivacyBudgetExceeded, check_int

#: SQLite ``PRAGMA application_id`` of a privdiff ledger: the bytes "PDVL".
APPLICATION_ID = int.from_bytes(b"PDVL", "big")
#: ``PRAGMA user_version``; bump with a migration when the tables change.
SCHEMA_VERSION = 1
#: Seconds a charge waits for other writers before giving up with LedgerError.
LOCK_TIMEOUT_S = 60.0

_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE charges (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    time          REAL    NOT NULL,
    request_id    TEXT    NOT NULL,
    sigma         REAL    NOT NULL CHECK (sigma > 0),
    sample_rate   REAL    NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    k             INTEGER NOT NULL CHECK (k >= 1),
    count         INTEGER NOT NULL CHECK (count >= 1),
    epsilon_after REAL    NOT NULL
) STRICT;
CREATE INDEX charges_request ON charges (request_id);
-- Grouped history, kept in the same transaction as `charges`, so re-accounting 10^5 queries is a
-- composition of a handful of self-composed groups, not 10^5 events.
CREATE TABLE query_groups (
    sigma       REAL    NOT NULL,
    sample_rate REAL    NOT NULL,
    k           INTEGER NOT NULL,
    count       INTEGER NOT NULL CHECK (count >= 1),
    PRIMARY KEY (sigma, sample_rate, k)
) STRICT;
"""
_TABLES = {"meta", "charges", "query_groups"}


@dataclass(frozen=True)
class Charge:
    """What a successful charge did. The release may go out once this exists."""

    epsilon_spent: float
    epsilon_budget: float
    epsilon_remaining: float
    delta: float
    queries_total: int
    queries_charged: int
    request_id: str
    accountant: str
    time: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChargeRecord:
    """One row of the ledger's history (one (σ, q, k) group of one charge)."""

    id: int
    time: float
    request_id: str
    sigma: float
    sample_rate: float
    k: int
    count: int
    epsilon_after: float

    @property
    def query(self) -> DPRDMQuery:
        return DPRDMQuery(self.sigma, self.sample_rate, self.k)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LedgerStatus:
    epsilon_budget: float
    delta: float
    epsilon_spent: float
    epsilon_remaining: float
    queries: int
    accountant: str
    dataset: str
    groups: int = 0
    path: str = ""
    created: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Ledger:
    """A privacy budget for one private dataset, persisted in SQLite. See the module docstring.

    Build one with :meth:`create` (new file) or :meth:`open` (existing file), never directly.
    A ``Ledger`` is safe to share between threads of one process (each call takes SQLite's lock)
    and between processes (each opens its own ``Ledger`` on the same path).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict[str, str]):
        self._path = path
        self._conn = conn
        # One connection per Ledger, shared by threads under this lock; processes use SQLite's.
        self._lock = threading.RLock()
        self.epsilon_budget = float(meta["epsilon"])
        self.delta = float(meta["delta"])
        self.accountant = meta["accountant"]
        self.dataset = meta.get("dataset", "")
        self.created = float(meta.get("created", "0"))

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        epsilon: float,
        delta: float,
        accountant: str = DEFAULT_ACCOUNTANT,
        dataset: str = "",
    ) -> Ledger:
        """Create a new ledger file with budget (ε, δ). Refuses to overwrite an existing file.

        The file is built under a temporary name and linked into place atomically, so a crash
        leaves either no ledger or a complete one, and two creators cannot both succeed.
        """
        epsilon = check_epsilon("epsilon", epsilon)
        delta = check_delta(delta)
        check_accountant(accountant)
        if not isinstance(dataset, str):
            raise InvalidParameter("dataset", dataset, "a string")
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise LedgerError(f"ledger {path} already exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise LedgerError(f"cannot create ledger {path}: directory {path.parent} does not exist")

        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE")  # single file while it is built
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
                meta = {
                    "epsilon": repr(epsilon),
                    "delta": repr(delta),
                    "accountant": accountant,
                    "dataset": dataset,
                    "created": repr(time.time()),
                    "schema_version": str(SCHEMA_VERSION),
                }
                with conn:
                    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
            finally:
                conn.close()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic and fails if `path` appeared meanwhile
            except FileExistsError:
                raise LedgerError(f"ledger {path} already exists; refusing to overwrite it") from None
            except OSError as exc:
                raise LedgerError(f"cannot create ledger {path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        ledger = cls.open(path)
        # WAL from here on: readers never block the writer, and commits append (crash-safe).
        ledger._conn.execute("PRAGMA journal_mode=WAL")
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike) -> Ledger:
        """Open an existing ledger; anything that is not an intact privdiff ledger → LedgerError.

        The file is inspected read-only before SQLite opens it for writing, so a foreign or
        corrupt file is left byte-for-byte unchanged.
        """
        path = Path(path)
        _check_header(path)
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=rw",
                uri=True,
                isolation_level=None,
                timeout=LOCK_TIMEOUT_S,
                check_same_thread=False,  # guarded by Ledger._lock
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT_S * 1000)}")
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise LedgerError(f"ledger {path} is corrupt (sqlite quick_check: {ok})")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID:
                raise LedgerError(f"{path} is an SQLite database but not a privdiff ledger")
            if version != SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {path} has schema version {version}; this privdiff reads version "
                    f"{SCHEMA_VERSION} (upgrade privdiff, or migrate the file)"
                )
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not _TABLES <= tables:
                raise LedgerError(f"ledger {path} lacks tables {sorted(_TABLES - tables)}")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            for key in ("epsilon", "delta", "accountant"):
                if key not in meta:
                    raise LedgerError(f"ledger {path} has no {key!r} in its metadata")
            try:
                check_epsilon("epsilon", float(meta["epsilon"]))
                check_delta(float(meta["delta"]))
                check_accountant(meta["accountant"])
            except (InvalidParameter, ValueError) as exc:
                raise LedgerError(f"ledger {path} has invalid metadata: {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise LedgerError(f"ledger {path} is unreadable: {exc}") from exc
        except LedgerError:
            conn.close()
            raise
        return cls(path, conn, meta)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return (
            f"Ledger({str(self._path)!r}, epsilon={self.epsilon_budget:g}, delta={self.delta:g}, "
            f"accountant={self.accountant!r}, dataset={self.dataset!r})"
        )

    # ------------------------------------------------------------------ charging
    def charge(self, query: DPRDMQuery, count: int = 1, request_id: str | None = None) -> Charge:
        """Charge ``count`` repetitions of ``query``, or raise without recording anything.

        Raises:
            InvalidParameter: bad query/count/request_id (before any transaction).
            PrivacyBudgetExceeded: the charge would take ε past the budget; nothing recorded.
            LedgerError: the file could not be written (lock timeout, disk error).
        """
        if not isinstance(query, DPRDMQuery):
            raise InvalidParameter("query", query, "a DPRDMQuery")
        count = check_int("count", count, minimum=1)
        return self._charge_groups({query: count}, request_id)

    def charge_many(self, queries: Sequence[DPRDMQuery], request_id: str | None = None) -> Charge:
        """Charge a batch of (possibly different) queries, all or nothing."""
        groups: dict[DPRDMQuery, int] = {}
        for query in queries:
            if not isinstance(query, DPRDMQuery):
                raise InvalidParameter("query", query, "a DPRDMQuery")
            groups[query] = groups.get(query, 0) + 1
        if not groups:
            raise InvalidParameter("queries", list(queries), "a non-empty sequence of DPRDMQuery")
        return self._charge_groups(groups, request_id)

    def preview(self, query: DPRDMQuery, count: int = 1) -> float:
        """ε the history would have after charging ``count`` × ``query``; charges nothing."""
        if not isinstance(query, DPRDMQuery):
            raise InvalidParameter("query", query, "a DPRDMQuery")
        count = check_int("count", count, minimum=1)
        return self._epsilon(self._grouped() + [(query, count)])

    def _charge_groups(self, groups: dict[DPRDMQuery, int], request_id: str | None) -> Charge:
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not request_id:
            raise InvalidParameter("request_id", request_id, "a non-empty string or None")
        new = sorted(groups.items(), key=lambda qc: (qc[0].sigma, qc[0].sample_rate, qc[0].k))
        n_new = sum(groups.values())

        with self._write_transaction() as conn:
            history = self._grouped(conn)
            eps_after = self._epsilon(history + new)
            if eps_after > self.epsilon_budget:
                raise PrivacyBudgetExceeded(
                    epsilon_spent=self._epsilon(history),
                    epsilon_would_be=eps_after,
                    epsilon_budget=self.epsilon_budget,
                    delta=self.delta,
                    queries_requested=n_new,
                )
            now = time.time()
            conn.executemany(
                "INSERT INTO charges(time, request_id, sigma, sample_rate, k, count, epsilon_after)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(now, request_id, q.sigma, q.sample_rate, q.k, c, eps_after) for q, c in new],
            )
            conn.executemany(
                "INSERT INTO query_groups(sigma, sample_rate, k, count) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(sigma, sample_rate, k) DO UPDATE SET count = count + excluded.count",
                [(q.sigma, q.sample_rate, q.k, c) for q, c in new],
            )
            total = sum(c for _, c in history) + n_new
        return Charge(
            epsilon_spent=eps_after,
            epsilon_budget=self.epsilon_budget,
            epsilon_remaining=max(0.0, self.epsilon_budget - eps_after),
            delta=self.delta,
            queries_total=total,
            queries_charged=n_new,
            request_id=request_id,
            accountant=self.accountant,
            time=now,
        )

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, retrying while other processes hold the write lock.

        ``busy_timeout`` already waits inside SQLite; the loop adds jittered retries for the
        cases SQLite reports as SQLITE_BUSY at once (e.g. a WAL snapshot that went stale).
        """
        with self._lock:
            yield from self._write_transaction_locked()

    def _write_transaction_locked(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise LedgerError(f"cannot write ledger {self._path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise LedgerError(
                        f"ledger {self._path} stayed locked by another writer for "
                        f"{LOCK_TIMEOUT_S:.0f} s; nothing was charged"
                    ) from exc
                time.sleep(random.uniform(0.005, 0.05))
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise LedgerError(f"could not commit to ledger {self._path}: {exc}") from exc

    # ------------------------------------------------------------------ reading
    def _grouped(self, conn: sqlite3.Connection | None = None) -> list[tuple[DPRDMQuery, int]]:
        with self._lock:
            rows = (conn or self._conn).execute(
                "SELECT sigma, sample_rate, k, count FROM query_groups ORDER BY sigma, sample_rate, k"
            ).fetchall()
        return [(DPRDMQuery(s, q, k), c) for s, q, k, c in rows]

    def _epsilon(self, history: list[tuple[DPRDMQuery, int]]) -> float:
        eps = compute_epsilon(history, self.delta, self.accountant, warn_on_edge=False).epsilon
        return eps if math.isfinite(eps) else math.inf

    def status(self) -> LedgerStatus:
        """Budget, ε spent so far (re-accounted from the grouped history) and query count."""
        history = self._grouped()
        spent = self._epsilon(history)
        return LedgerStatus(
            epsilon_budget=self.epsilon_budget,
            delta=self.delta,
            epsilon_spent=spent,
            epsilon_remaining=max(0.0, self.epsilon_budget - spent),
            queries=sum(c for _, c in history),
            accountant=self.accountant,
            dataset=self.dataset,
            groups=len(history),
            path=str(self._path),
            created=self.created,
        )

    def history(self, limit: int | None = None) -> list[ChargeRecord]:
        """Charged queries, oldest first (the last ``limit`` rows when given)."""
        sql = "SELECT id, time, request_id, sigma, sample_rate, k, count, epsilon_after FROM charges"
        if limit is not None:
            limit = check_int("limit", limit, minimum=1)
        with self._lock:
            if limit is None:
                rows = self._conn.execute(sql + " ORDER BY id").fetchall()
            else:
                rows = self._conn.execute(sql + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
        return [ChargeRecord(*row) for row in rows]


# ---------------------------------------------------------------------------------------------


def _check_header(path: Path) -> None:
    """Refuse missing, non-SQLite, foreign and truncated files without opening them for writing.

    SQLite's 100-byte header carries the magic string, the page size (offset 16), the database
    size in pages (offset 28) and the application id (offset 68); see sqlite.org/fileformat.html.
    """
    if not path.exists():
        raise LedgerError(f"ledger {path} does not exist (create one with `privdiff budget init`)")
    if not path.is_file():
        raise LedgerError(f"ledger {path} is not a regular file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise LedgerError(f"{path} is not a privdiff ledger (not an SQLite database)")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise LedgerError(f"{path} is an SQLite database but not a privdiff ledger")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # In WAL mode the main file may lag the header's page count until a checkpoint, but it is
    # never shorter than the pages it says it has once checkpointed; a shorter file was cut.
    wal = path.with_name(path.name + "-wal")
    # The page count is trustworthy only when its "valid-for" number (offset 92) matches the
    # change counter (offset 24); every SQLite since 3.7.0 keeps them in step.
    pages_valid = header[92:96] == header[24:28]
    if pages_valid and pages and size < pages * page_size and not (wal.exists() and wal.stat().st_size > 0):
        raise LedgerError(
            f"ledger {path} is truncated ({size} bytes, header says {pages} pages of {page_size})"
        )


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
