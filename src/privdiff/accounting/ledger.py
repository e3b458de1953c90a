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

Step 3's accounting (the slow part: 30–250 ms for a PLD over 10⁵ queries in 10 settings) is
taken off the charge path by a *ceiling*: the exact ε of a grouped history Ĥ that contains the
candidate plus a reserve of ⌊T/512⌋ more queries of each setting being charged
(:data:`CEILING_RESERVE_DIVISOR`; PLD only: the RDP accountants are cheap enough to stay exact).
ε is monotone in the counts (one more composed mechanism never lowers the privacy loss), so every
history inside Ĥ has ε ≤ ε(Ĥ); a charge reads the grouped counts *under the write lock*, and if
history + candidate ⊆ Ĥ and ε(Ĥ) is at least :data:`CEILING_SLACK` below the budget it records
ε(Ĥ) and commits: a lookup and one transaction. Otherwise a new ceiling is computed outside the
lock from a snapshot and the charge retries; near the budget, where Ĥ would not fit, the exact ε
of history + candidate decides, so a charge is refused exactly when its exact ε exceeds the
budget. The ceiling lives in the ``Ledger`` object and needs no invalidation: it is checked
against the durable counts on every charge, so a history extended by another process simply
misses it. After :data:`OPTIMISTIC_ATTEMPTS` misses the exact ε is computed under the lock.
Processes share the work: the one that computes a ceiling holds a lease in the side file
``<ledger>-lock`` and publishes the ceiling there with its sha256; the others, which miss at the
same moment because they share one history, wait for it and use it (checked under the lock like
their own) instead of each recomputing the same PLD.

The ceiling is refreshed *before* it runs out: a charge that leaves a setting less than
:data:`REFRESH_FRACTION` of its reserve starts a background thread that takes the lease and
computes the next ceiling outside the write lock and the ticket queue, while every process keeps
charging against the old ceiling, which stays valid; the next one is published (with its sha256)
and picked up by a process whose own ceiling misses, with a read of the side file under the write
lock. A charge waits for the lease only when no published ceiling covers it, i.e. when the
reserve ran out before its successor was computed. The reserve of a refresh grows with the
observed charge rate × recompute time (:data:`RESERVE_RECOMPUTES`), capped at
:data:`MAX_RESERVE_SCALE` × ⌊T/512⌋; the trade-off is that a larger reserve makes the reported
per-charge ε a looser bound (never lower than the truth; :meth:`Ledger.status` and
:meth:`Ledger.preview` stay exact). The lease is an OFD byte-range lock, which the kernel drops
with a process that dies, so a dead refresher never blocks anyone.

So :attr:`Charge.epsilon_spent` (and the history's ``epsilon_after``) is the exact ε of the
ledger after the charge for the RDP accountants and for PLD ledgers below 512 queries, and
above that, for PLD, the exact ε of a history at most a reserve larger: a valid upper bound, never
below the truth. :meth:`Ledger.status` and :meth:`Ledger.preview` are always exact (equal to
:func:`~privdiff.accounting.compute_epsilon` of the grouped history).

Writers are admitted first come, first served: a ticket lock on the side file ``<ledger>-lock``
(:class:`_TicketLock`) orders them before SQLite's own lock, whose sleeping busy handler let one
process charge again and again while others waited. A process killed while holding or waiting
for a ticket loses its locks with its life, so it never blocks the others.

The file identifies itself with SQLite's ``application_id`` (:data:`APPLICATION_ID`, "PDVL") and
``user_version`` (:data:`SCHEMA_VERSION`). :meth:`Ledger.open` refuses anything else — a missing
file, garbage bytes, a truncated file, another program's SQLite database, a newer schema — with
:class:`~privdiff.errors.LedgerError`, and never rewrites or resets it.

Corruption that SQLite's own checks miss (a flipped byte inside a record) must never lower the
reported ε silently. Two cross-checks catch it, on open and on every :meth:`Ledger.status`:
the metadata (budget, δ, accountant, bound index) carries a sha256 checksum, and the grouped
history ``query_groups`` (what ε is computed from) must equal the per-charge records ``charges``
summed by (σ, q, k). A disagreement raises :class:`~privdiff.errors.LedgerCorrupt`.

A ledger may be *bound* to one private index by the index's manifest fingerprint (sha256 of its
``manifest.json``, which covers the vectors' hash; ``privdiff budget init --index DIR``);
:class:`~privdiff.retrieval.DPRetriever` then refuses any other index with
:class:`~privdiff.errors.LedgerIndexMismatch`, whatever path it was opened by. Schema 1 files
(no checksum, no binding) still open; :meth:`Ledger.bind_index` upgrades one to schema 2.

``request_id`` is an audit label, not an idempotency key: two charges with the same id are two
releases with fresh noise, so both are charged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import stat
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import dp_accounting

from privdiff.accounting.accountants import (
    DEFAULT_ACCOUNTANT,
    check_accountant,
    compute_epsilon,
    to_dp_event,
)
from privdiff.accounting.query import DPRDMQuery, check_delta, check_epsilon
from privdiff.errors import (
    InvalidParameter,
    LedgerCorrupt,
    LedgerError,
    LedgerIndexMismatch,
    PrivacyBudgetExceeded,
    PrivdiffError,
    check_int,
)
from privdiff.utils.atomic import fsync_dir

try:  # POSIX: the creator of a temporary file holds an flock on it (see _remove_stale_temps)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: SQLite ``PRAGMA application_id`` of a privdiff ledger: the bytes "PDVL".
APPLICATION_ID = int.from_bytes(b"PDVL", "big")
#: ``PRAGMA user_version``; bump with a migration when the tables change. Version 2 added the
#: metadata checksum and the optional index binding (no table changed).
SCHEMA_VERSION = 2
#: Versions :meth:`Ledger.open` reads (1: no checksum, no binding; see :meth:`Ledger.bind_index`).
READABLE_VERSIONS = (1, 2)
#: Seconds a charge waits for other writers before giving up with LedgerError.
LOCK_TIMEOUT_S = 60.0
#: Tries at accounting outside the write lock before a charge computes ε under it. Each lost race
#: costs one wasted accounting, and commits are serialised by the accounting time anyway (each
#: must extend the exact history it was checked on), so more tries only burn CPU under contention.
OPTIMISTIC_ATTEMPTS = 2
#: A creator's temporary file older than this (and not flock'ed by a live creator) is stale.
STALE_TMP_S = LOCK_TIMEOUT_S
#: Accountants whose ε costs too much to recompute on every charge, and the *ceiling reserve*
#: they get: a charge is admitted against the exact ε of a history that contains the candidate
#: plus ⌊T / divisor⌋ more queries of each setting being charged (T: queries in the history), so
#: the next charges of those settings cost a lookup (see :meth:`Ledger.charge`). PLD at 10⁵
#: queries over 10 settings takes 30–250 ms per evaluation; RDP sums a few curves (< 1 ms), so
#: the RDP accountants stay exact on every charge. Below ``divisor`` queries the reserve is 0
#: and every charge is exact.
CEILING_RESERVE_DIVISOR: dict[str, int] = {"pld": 512}
#: A charge admitted under a ceiling that is *larger* than the candidate relies on ε being
#: monotone in the counts (true of the privacy loss: composing one more mechanism never lowers
#: it; the PLD grid of the larger history is never finer, see accountants._pld_interval). The
#: ceiling must then sit this far (relative) below the budget, so floating-point noise in the
#: accountant (measured ≤ 3·10⁻¹⁰ relative) can never put the exact ε over it.
CEILING_SLACK = 1e-6
#: A freshly computed ceiling that other processes used up before it could be used doubles the
#: reserve of this ``Ledger`` (up to this factor), so under contention it is not recomputed forever.
MAX_RESERVE_SCALE = 16
#: Refresh the ceiling *before* it runs out: once a charge leaves less than this fraction of a
#: setting's reserve, a background thread of that process takes the lease and computes the next
#: ceiling (outside the write lock and the ticket queue) while every process keeps charging
#: against the old one, which stays valid. Only a ceiling used up before its successor is
#: published makes a charger wait (see :meth:`Ledger._refresh`).
REFRESH_FRACTION = 0.5
#: Adaptive reserve of a refresh: enough queries of each setting for this many recompute times at
#: the setting's observed charge rate (queries charged in the last :data:`RATE_SPAN_S` seconds,
#: among the last :data:`RATE_WINDOW` charge records: a bulk import long ago says nothing), so the
#: part left when the refresh starts (REFRESH_FRACTION of it) outlasts the recompute twice over.
#: Bounded by MAX_RESERVE_SCALE × ⌊T/divisor⌋: a larger reserve is a looser per-charge ε bound.
RESERVE_RECOMPUTES = 4.0
RATE_WINDOW = 2000
RATE_SPAN_S = 10.0

_HEX64 = re.compile(r"[0-9a-f]{64}")

_SQLITE_MAGIC = b"SQLite format 3\x00"

#: Ledger files this process holds SQLite connections to: (device, inode) → open Ledger objects.
#: Closing *any* descriptor of a file drops every POSIX lock the process holds on it, SQLite's
#: included (sqlite.org/howtocorrupt.html §2.2); another process could then take the file for
#: unused, checkpoint and delete the WAL, and this process's next commit would go to the deleted
#: WAL. So :meth:`Ledger.open` reads the raw header only of a file not already open here (SQLite
#: has checked such a file, and ``quick_check`` still runs), under this lock, which also covers
#: the connect and the registration, so no connection can appear during a raw read.
_LIVE: dict[tuple[int, int], int] = {}
_LIVE_LOCK = threading.Lock()


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


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
    """What a successful charge did. The release may go out once this exists.

    ``epsilon_spent`` is an upper bound on the ledger's ε after the charge: exact, except for a PLD
    ledger past 512 queries, where it is the exact ε of the admitting ceiling (see the module
    docstring); ``Ledger.status()`` reports the exact value.
    """

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
class _Ceiling:
    """The exact ε of one grouped history ``counts``: a bound for every history it contains."""

    counts: dict[DPRDMQuery, int]
    epsilon: float
    #: True when ``counts`` holds a reserve beyond the candidate it was computed for.
    reserved: bool
    #: Per setting: refresh once fewer than this many queries of it are left (see REFRESH_FRACTION).
    refresh_below: dict[DPRDMQuery, int] = dataclasses.field(default_factory=dict)
    #: Seconds it took to compute (sizes the next reserve, see RESERVE_RECOMPUTES).
    seconds: float = 0.0

    def running_low(self, merged: dict[DPRDMQuery, int], settings: Iterable[DPRDMQuery]) -> bool:
        """Does the history ``merged`` leave less than the refresh threshold of a setting?"""
        return self.reserved and any(
            self.counts.get(q, 0) - merged.get(q, 0) < self.refresh_below.get(q, 0) for q in settings
        )

    def covers(self, candidate: dict[DPRDMQuery, int], budget: float) -> bool:
        """May ``candidate`` be charged with ε = ``self.epsilon``? Exact match, or contained
        with :data:`CEILING_SLACK` below the budget (monotonicity; see the constant)."""
        if self.epsilon > budget:
            return False
        if candidate == self.counts:
            return True
        if any(c > self.counts.get(q, 0) for q, c in candidate.items()):
            return False
        return self.epsilon <= budget * (1.0 - CEILING_SLACK)


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
    #: Short fingerprint (12 hex) of the manifest of the index this ledger is bound to; "" if none.
    index: str = ""

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
        # This connection's entry in _LIVE (set by open(), which registered it), released by close().
        self._live_key: tuple[int, int] | None = None
        # One connection per Ledger, shared by threads under this lock; processes use SQLite's.
        self._lock = threading.RLock()
        # `meta` was validated by open() (_parse_meta), so these conversions cannot fail.
        self.epsilon_budget = float(meta["epsilon"])
        self.delta = float(meta["delta"])
        self.accountant = meta["accountant"]
        self.dataset = meta.get("dataset", "")
        self.created = float(meta.get("created", "0"))
        #: sha256 of the bound index's manifest (``EmbeddingIndex.fingerprint``), or "" if unbound.
        self.index_fingerprint = meta.get("index", "")
        # The last ceiling this object computed. It needs no invalidation: every charge compares it
        # with the counts it reads under the write lock, so a history another process extended
        # beyond it simply misses and a new one is computed from the durable records.
        self._ceiling: _Ceiling | None = None
        self._reserve_scale = 1
        self._tickets: _TicketLock | None | bool = None  # None: not opened yet; False: unavailable
        # The early refresh (see REFRESH_FRACTION): one background thread at a time, holding the
        # lease through its own open file description (an OFD lock taken through self._tickets
        # would not exclude this process's own charging thread), and the ceiling it last gave up
        # on (lease busy elsewhere, or the next ceiling would not fit the budget).
        self._refresh_guard = threading.Lock()
        self._refresh_thread: threading.Thread | None = None
        self._refresh_skip: _Ceiling | None = None
        self._lease: _TicketLock | None | bool = None
        self._recompute_s = 0.0  # seconds the last reserved ceiling took to compute
        self._closed = False

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
        index_fingerprint: str = "",
    ) -> Ledger:
        """Create a new ledger file with budget (ε, δ). Refuses to overwrite an existing file.

        ``dataset`` is a free label. ``index_fingerprint`` (the full sha256 of an index's
        manifest, :attr:`privdiff.retrieval.EmbeddingIndex.fingerprint`) binds the ledger to that
        index: :class:`~privdiff.retrieval.DPRetriever` then refuses every other index.

        The file is built under a temporary name and linked into place atomically, so a crash
        leaves either no ledger or a complete one, and two creators cannot both succeed. A
        temporary file left by a creator that was killed is removed by the next create/open.
        """
        epsilon = check_epsilon("epsilon", epsilon)
        delta = check_delta(delta)
        check_accountant(accountant)
        if not isinstance(dataset, str):
            raise InvalidParameter("dataset", dataset, "a string")
        if not isinstance(index_fingerprint, str) or (index_fingerprint and not _HEX64.fullmatch(index_fingerprint)):
            raise InvalidParameter(
                "index_fingerprint",
                index_fingerprint,
                "'' or 64 lowercase hex digits (an index manifest's sha256)",
            )
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise LedgerError(f"ledger {path} already exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise LedgerError(f"cannot create ledger {path}: directory {path.parent} does not exist")
        _remove_stale_temps(path)

        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        owner = -1
        try:
            # Created empty (SQLite treats an empty file as a new database) and flock'ed for its
            # whole life, so a concurrent create/open never removes a live creator's file.
            owner = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            if fcntl is not None:
                fcntl.flock(owner, fcntl.LOCK_EX)
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
                    "index": index_fingerprint,
                }
                meta["checksum"] = _meta_checksum(meta)
                with conn:
                    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
            finally:
                conn.close()
            os.fsync(owner)
            try:
                os.link(tmp, path)  # atomic and fails if `path` appeared meanwhile
            except FileExistsError:
                raise LedgerError(f"ledger {path} already exists; refusing to overwrite it") from None
            except OSError as exc:
                raise LedgerError(f"cannot create ledger {path}: {exc}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot create ledger {path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if owner >= 0:
                os.close(owner)
        fsync_dir(path.parent)
        ledger = cls.open(path)
        # WAL from here on: readers never block the writer, and commits append (crash-safe).
        ledger._conn.execute("PRAGMA journal_mode=WAL")
        return ledger

    @classmethod
    def open(cls, path: str | os.PathLike) -> Ledger:
        """Open an existing ledger; anything that is not an intact privdiff ledger → LedgerError.

        The file is inspected read-only before SQLite opens it for writing, so a foreign or
        corrupt file is left byte-for-byte unchanged. Contents that contradict themselves (see
        the module docstring) raise :class:`~privdiff.errors.LedgerCorrupt`.
        """
        path = Path(path)
        with _LIVE_LOCK:
            key = _file_key(path)
            if not _LIVE.get(key, 0):
                _check_header(path)  # a raw read: only while no connection of ours is open (see _LIVE)
            _remove_stale_temps(path)
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
            key = _file_key(path)
            _LIVE[key] = _LIVE.get(key, 0) + 1
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
            if version not in READABLE_VERSIONS:
                raise LedgerError(
                    f"ledger {path} has schema version {version}; this privdiff reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade privdiff, or migrate the file)"
                )
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not _TABLES <= tables:
                raise LedgerError(f"ledger {path} lacks tables {sorted(_TABLES - tables)}")
            meta = _parse_meta(conn.execute("SELECT key, value FROM meta").fetchall(), version, path)
            _check_history_consistent(conn, path)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            _release_live(key, conn)
            raise LedgerError(f"ledger {path} is unreadable: {exc}") from exc
        except LedgerError:
            _release_live(key, conn)
            raise
        ledger = cls(path, conn, meta)
        ledger._live_key = key
        return ledger

    def close(self) -> None:
        with self._refresh_guard:
            self._closed = True
            thread = self._refresh_thread
        if thread is not None:
            thread.join()  # it reads through self._conn and publishes through self._lease
        _release_live(self._live_key, self._conn)
        self._live_key = None
        for side in (self._tickets, self._lease):
            if isinstance(side, _TicketLock):
                side.close()
        self._tickets = self._lease = False

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
            f"accountant={self.accountant!r}, dataset={self.dataset!r}, "
            f"index={self.index_fingerprint[:12]!r})"
        )

    def bind_index(self, index_fingerprint: str) -> None:
        """Bind an unbound ledger to an index (upgrading a schema-1 file to schema 2).

        Binding only ever narrows what the ledger may be used with, so it needs no budget
        check; re-binding a bound ledger to a *different* index raises
        :class:`~privdiff.errors.LedgerIndexMismatch` (that would let two datasets share one budget).
        """
        if not isinstance(index_fingerprint, str) or not _HEX64.fullmatch(index_fingerprint):
            raise InvalidParameter(
                "index_fingerprint",
                index_fingerprint,
                "64 lowercase hex digits (an index manifest's sha256)",
            )
        with self._write_transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            meta = _parse_meta(conn.execute("SELECT key, value FROM meta").fetchall(), version, self._path)
            bound = meta.get("index", "")
            if bound == index_fingerprint:
                return
            if bound:
                raise LedgerIndexMismatch(
                    f"ledger {self._path} is already bound to index {bound[:12]}; refusing to re-bind it "
                    f"to {index_fingerprint[:12]} (one ledger per private dataset)"
                )
            meta = {k: v for k, v in meta.items() if k != "checksum"}
            meta["index"] = index_fingerprint
            meta["schema_version"] = str(SCHEMA_VERSION)
            meta["checksum"] = _meta_checksum(meta)
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                meta.items(),
            )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.index_fingerprint = index_fingerprint

    # ------------------------------------------------------------------ charging
    def charge(self, query: DPRDMQuery, count: int = 1, request_id: str | None = None) -> Charge:
        """Charge ``count`` repetitions of ``query``, or raise without recording anything.

        The returned :attr:`Charge.epsilon_spent` is the ledger's exact ε after the charge, or,
        for a PLD ledger past 512 queries, the exact ε of a slightly larger history containing it
        (the ceiling; see the module docstring); :meth:`status` is always exact.

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

    def _charge_groups(
        self,
        groups: dict[DPRDMQuery, int],
        request_id: str | None,
        *,
        optimistic: int = OPTIMISTIC_ATTEMPTS,
    ) -> Charge:
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not request_id:
            raise InvalidParameter("request_id", request_id, "a non-empty string or None")
        new = sorted(groups.items(), key=_group_key)

        # Fast path: the last ceiling (with a reserve) still covers what the file holds now
        # plus this charge: a lookup and one transaction, no accounting at all.
        ceiling = self._ceiling
        if optimistic and ceiling is not None and ceiling.reserved:
            charge = self._charge_under(ceiling, new, request_id, shared=True)
            if charge is not None:
                return charge
        # Optimistic: a new ceiling computed outside the write lock from a snapshot, used if the
        # history under the lock is still inside it (another process may have charged meanwhile).
        for attempt in range(optimistic):
            charge = self._charge_shared(new, request_id) if optimistic else None
            if charge is not None:
                return charge
            _, history = self._snapshot()
            ceiling = self._new_ceiling(history, new, lost_race=attempt > 0)
            charge = self._charge_under(ceiling, new, request_id)
            if charge is not None:
                return charge
        # Fallback (heavy contention): the exact ε, computed under the lock, as it always could.
        with self._write_transaction() as conn:
            history = self._grouped(conn)
            target = _merged(history, new)
            eps_after = self._epsilon(list(target.items()))
            if eps_after > self.epsilon_budget:
                self._refuse(history, eps_after, sum(groups.values()))
            self._ceiling = _Ceiling(target, eps_after, reserved=False)
            return self._record(conn, history, new, eps_after, request_id)

    def _charge_shared(self, new: list[tuple[DPRDMQuery, int]], request_id: str) -> Charge | None:
        """Try the ceiling another process published, then, if it does not cover this charge and
        one is being computed, wait for that one; None when neither covers it (then this process
        computes, holding the lease if it can get it, see :meth:`_new_ceiling`).

        Only a charge that no published ceiling covers waits: while a refresh computes the next
        ceiling, the current one still admits charges (see REFRESH_FRACTION)."""
        tickets = self._ticket_lock() if CEILING_RESERVE_DIVISOR.get(self.accountant) else None
        if tickets is None:
            return None
        shared = self._published()
        if shared is not None and shared != self._ceiling:
            self._ceiling = shared
            charge = self._charge_under(shared, new, request_id)
            if charge is not None:
                return charge
        try:
            tickets.wait_lease(time.monotonic() + LOCK_TIMEOUT_S)
        except OSError:
            return None
        fresh = self._published()
        if fresh is None or fresh == shared or fresh == self._ceiling:
            return None
        self._ceiling = fresh
        return self._charge_under(fresh, new, request_id)

    def _charge_under(
        self, ceiling: _Ceiling, new: list[tuple[DPRDMQuery, int]], request_id: str, *, shared: bool = False
    ) -> Charge | None:
        """Charge if ``ceiling`` (or, with ``shared``, the ceiling another process published) covers
        the history read under the write lock plus ``new``; else commit nothing and return None.

        A charge that leaves a setting of its ceiling running low starts the early refresh
        (:meth:`_start_refresh`) after it committed: it never waits for it."""
        with self._write_transaction() as conn:
            history = self._grouped(conn)
            merged = _merged(history, new)
            use = ceiling if ceiling.covers(merged, self.epsilon_budget) else None
            if use is None and shared:
                # Another process may have refreshed already: reading its ceiling costs a pread,
                # far less than a second turn in the queue.
                published = self._published()
                if published is not None and published.covers(merged, self.epsilon_budget):
                    use = self._ceiling = published
            if use is None:
                return None
            charge = self._record(conn, history, new, use.epsilon, request_id)
            low = use.running_low(merged, (q for q, _ in new))
        if low:
            self._start_refresh(use)
        return charge

    def _published(self) -> _Ceiling | None:
        """The intact ceiling published in the side file for this accountant and δ, if any."""
        tickets = self._ticket_lock() if CEILING_RESERVE_DIVISOR.get(self.accountant) else None
        if tickets is None:
            return None
        try:
            published = tickets.shared(self.accountant, self.delta)
        except OSError:
            return None
        if published is not None:
            # The publisher's recompute time sizes our next reserve, should we be the next refresher.
            self._recompute_s = max(self._recompute_s, published.seconds)
        return published

    # ------------------------------------------------------------------ the early refresh
    def _start_refresh(self, ceiling: _Ceiling) -> None:
        """Compute the successor of ``ceiling`` in a background thread, unless one is running."""
        with self._refresh_guard:
            if self._closed or self._refresh_skip is ceiling:
                return
            if self._refresh_thread is not None and self._refresh_thread.is_alive():
                return
            self._refresh_thread = threading.Thread(
                target=self._refresh, args=(ceiling,), name="privdiff-ledger-refresh", daemon=True
            )
            self._refresh_thread.start()

    def _lease_lock(self) -> _TicketLock | None:
        if self._lease is None:
            self._lease = False
            if _TicketLock.available():
                with contextlib.suppress(OSError):
                    self._lease = _TicketLock(self._path.with_name(self._path.name + "-lock"))
        return self._lease or None

    def _refresh(self, ceiling: _Ceiling) -> None:
        """The next ceiling, computed while charges still go through under ``ceiling``.

        Best effort by design: it only ever *adds* a ceiling, which every charge checks against
        the durable counts under the write lock like any other, so a refresh that fails (disk
        error, the ledger being closed) leaves the ledger exactly as correct; the charge that
        finds ``ceiling`` used up then computes a ceiling itself, as it would without refreshes.
        """
        lease = self._lease_lock()
        try:
            if lease is not None and not lease.try_lease():
                # Another process (or Ledger object) is computing; it publishes, and our charges
                # pick its ceiling up from the side file once ours runs out.
                self._refresh_skip = ceiling
                return
        except OSError:
            lease = None
        try:
            self._refresh_leased(ceiling, lease)
        except (PrivdiffError, OSError, sqlite3.Error, ValueError, TypeError):
            self._refresh_skip = ceiling
        finally:
            if lease is not None:
                with contextlib.suppress(OSError):
                    lease.release_lease()

    def _refresh_leased(self, ceiling: _Ceiling, lease: _TicketLock | None) -> None:
        with self._read_transaction() as conn:
            history = dict(self._grouped(conn))
            rates = self._recent_rates(conn)
        low = [q for q, c in ceiling.counts.items() if c - history.get(q, 0) < ceiling.refresh_below.get(q, 0)]
        published = lease.shared(self.accountant, self.delta) if lease is not None else None
        if (
            published is not None
            and all(published.counts.get(q, 0) >= c for q, c in ceiling.counts.items())
            and not published.running_low(history, low)
        ):
            self._install(published)  # someone refreshed while we queued for the lease
            return
        divisor = CEILING_RESERVE_DIVISOR.get(self.accountant, 0)
        total = sum(history.values())
        if not divisor or not low:
            return
        unit = total // divisor
        counts = dict(history)
        for previous in (ceiling, published):
            for q, c in previous.counts.items() if previous is not None else ():
                counts[q] = max(counts.get(q, 0), c)
        below = {q: ceiling.refresh_below.get(q, 0) for q in counts}
        for q in low:
            # Reserve: at least the static ⌊T/divisor⌋ (× the contention scale), grown to cover
            # RESERVE_RECOMPUTES recompute times at this setting's charge rate; capped, since the
            # reported per-charge ε is the ε of history + reserve (status()/preview() stay exact).
            need = math.ceil(RESERVE_RECOMPUTES * rates.get(q, 0.0) * self._recompute_s)
            reserve = min(MAX_RESERVE_SCALE * unit, max(self._reserve_scale * unit, need))
            if reserve <= 0:
                return
            counts[q] = history.get(q, 0) + reserve
            below[q] = int(reserve * REFRESH_FRACTION)
        counts = dict(sorted(counts.items(), key=_group_key))
        t0 = time.monotonic()
        eps = self._epsilon(list(counts.items()))
        self._recompute_s = time.monotonic() - t0
        if eps > self.epsilon_budget * (1.0 - CEILING_SLACK):
            # Near the budget: no reserve fits. Charges use `ceiling` until it runs out, then the
            # exact ε decides (see _new_ceiling); retrying here would only burn CPU.
            self._refresh_skip = ceiling
            return
        fresh = _Ceiling(counts, eps, reserved=True, refresh_below=below, seconds=self._recompute_s)
        if lease is not None:
            lease.publish(self.accountant, self.delta, counts, eps, below, self._recompute_s)
        self._install(fresh)

    def _install(self, ceiling: _Ceiling) -> None:
        """Make ``ceiling`` this object's fast-path ceiling unless it holds less than the current one."""
        with self._lock:
            current = self._ceiling
            if current is None or all(ceiling.counts.get(q, 0) >= c for q, c in current.counts.items()):
                self._ceiling = ceiling

    @staticmethod
    def _recent_rates(conn: sqlite3.Connection) -> dict[DPRDMQuery, float]:
        """Queries per second of each setting over the last RATE_SPAN_S seconds, among the last
        RATE_WINDOW charge records (by id, the primary key: no scan). Only sizes a reserve, so
        anything odd in the records yields {}."""
        rows = conn.execute(
            "SELECT time, sigma, sample_rate, k, count FROM charges"
            " WHERE id > (SELECT coalesce(max(id), 0) FROM charges) - ?",
            (RATE_WINDOW,),
        ).fetchall()
        since = time.time() - RATE_SPAN_S
        try:
            rates: dict[DPRDMQuery, float] = {}
            for t, s, q, k, c in rows:
                if float(t) >= since:
                    key = DPRDMQuery(s, q, k)
                    rates[key] = rates.get(key, 0.0) + int(c) / RATE_SPAN_S
            return rates
        except (PrivdiffError, TypeError, ValueError):
            return {}

    def _new_ceiling(
        self, history: list[tuple[DPRDMQuery, int]], new: list[tuple[DPRDMQuery, int]], *, lost_race: bool
    ) -> _Ceiling:
        """The ceiling for charging ``new`` on ``history`` (outside the write lock), or raise
        PrivacyBudgetExceeded if even the exact ε of history + new exceeds the budget.

        With a reserve (see :data:`CEILING_RESERVE_DIVISOR`) the ceiling is history + new + the
        reserve on each setting in ``new``, keeping what the previous ceiling reserved for other
        settings, so interleaved settings do not evict each other. Near the budget, where that
        ceiling does not fit, the exact ε of history + new is computed instead.
        """
        target = _merged(history, new)
        if lost_race and self._ceiling is not None and self._ceiling.reserved:
            self._reserve_scale = min(MAX_RESERVE_SCALE, 2 * self._reserve_scale)
        divisor = CEILING_RESERVE_DIVISOR.get(self.accountant, 0)
        reserve = self._reserve_scale * (sum(target.values()) // divisor) if divisor else 0
        if reserve:
            # One process computes at a time: the others wait for the lease (the reserve ran out for
            # everyone at once) and take the ceiling it published if it covers them, rather than
            # each computing a private one that nobody else can use.
            tickets = self._ticket_lock()
            leased = False
            try:
                leased = tickets is not None and tickets.take_lease(time.monotonic() + LOCK_TIMEOUT_S)
            except OSError:
                pass
            try:
                published = self._published() if leased else None
                if published is not None and published.covers(target, self.epsilon_budget):
                    self._ceiling = published
                    return published
                counts = dict(target)
                # Keep what this object's and the published ceiling reserve for other settings, so
                # interleaved settings do not evict each other and the result can replace the
                # published one (published ceilings only grow, see _TicketLock.publish).
                for previous in (self._ceiling, published):
                    for q, c in previous.counts.items() if previous is not None else ():
                        counts[q] = max(counts.get(q, 0), c)
                below = dict(self._ceiling.refresh_below) if self._ceiling is not None else {}
                for q, _ in new:
                    counts[q] = target[q] + reserve
                    below[q] = int(reserve * REFRESH_FRACTION)
                counts = dict(sorted(counts.items(), key=_group_key))
                below = {q: below.get(q, 0) for q in counts}
                t0 = time.monotonic()
                eps = self._epsilon(list(counts.items()))
                self._recompute_s = time.monotonic() - t0
                if leased and eps <= self.epsilon_budget * (1.0 - CEILING_SLACK):
                    with contextlib.suppress(OSError):
                        tickets.publish(self.accountant, self.delta, counts, eps, below, self._recompute_s)
            finally:
                if leased:
                    with contextlib.suppress(OSError):
                        tickets.release_lease()
            if eps <= self.epsilon_budget * (1.0 - CEILING_SLACK):
                self._ceiling = _Ceiling(counts, eps, reserved=True, refresh_below=below, seconds=self._recompute_s)
                return self._ceiling
        eps_after = self._epsilon(list(target.items()))
        if eps_after > self.epsilon_budget:
            # The history only grows, and ε with it: refusing on this snapshot is final.
            self._refuse(history, eps_after, sum(c for _, c in new))
        self._ceiling = _Ceiling(target, eps_after, reserved=False)
        return self._ceiling

    def _refuse(self, history: list[tuple[DPRDMQuery, int]], eps_after: float, n_new: int) -> None:
        raise PrivacyBudgetExceeded(
            epsilon_spent=self._epsilon(history),
            epsilon_would_be=eps_after,
            epsilon_budget=self.epsilon_budget,
            delta=self.delta,
            queries_requested=n_new,
        )

    def _record(
        self,
        conn: sqlite3.Connection,
        history: list[tuple[DPRDMQuery, int]],
        new: list[tuple[DPRDMQuery, int]],
        eps_after: float,
        request_id: str,
    ) -> Charge:
        """Insert one charge (inside the caller's write transaction) whose ε was checked."""
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
        n_new = sum(c for _, c in new)
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

    def _ticket_lock(self) -> _TicketLock | None:
        """The FIFO ticket lock on ``<ledger>-lock``, opened on first use (None where the side file
        cannot be created, e.g. a read-only directory, or OFD locks do not exist)."""
        if self._tickets is None:
            self._tickets = False
            if _TicketLock.available():
                with contextlib.suppress(OSError):
                    self._tickets = _TicketLock(self._path.with_name(self._path.name + "-lock"))
        return self._tickets or None

    def _write_transaction_locked(self) -> Iterator[sqlite3.Connection]:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        tickets = self._ticket_lock()
        ticket = None
        if tickets is not None:
            try:
                ticket = tickets.acquire(deadline)
            except OSError:
                ticket = None  # the side file failed: SQLite's lock alone still serialises writers
            else:
                if ticket is None:
                    raise LedgerError(
                        f"ledger {self._path}: other writers were ahead in the queue for "
                        f"{LOCK_TIMEOUT_S:.0f} s; nothing was charged"
                    )
        try:
            yield from self._sqlite_transaction(deadline)
        finally:
            if ticket is not None:
                with contextlib.suppress(OSError):
                    tickets.release(ticket)

    def _sqlite_transaction(self, deadline: float) -> Iterator[sqlite3.Connection]:
        conn = self._conn
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
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, (sqlite3.Error, UnicodeDecodeError)):
                raise LedgerError(f"cannot write ledger {self._path}: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise LedgerError(f"could not commit to ledger {self._path}: {exc}") from exc

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """One consistent read snapshot (WAL: never blocks, nor is blocked by, the writer)."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read ledger {self._path}: {exc}") from exc
            try:
                yield conn
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise LedgerError(f"ledger {self._path} is unreadable: {exc}") from exc
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        """The largest charge id: rows are only appended (AUTOINCREMENT never reuses an id), so
        an unchanged value means an unchanged history."""
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM charges").fetchone()[0])

    def _snapshot(self) -> tuple[int, list[tuple[DPRDMQuery, int]]]:
        with self._read_transaction() as conn:
            return self._version(conn), self._grouped(conn)

    def _grouped(self, conn: sqlite3.Connection | None = None) -> list[tuple[DPRDMQuery, int]]:
        with self._lock:
            try:
                # NOT INDEXED: read the table itself, never a (possibly stale) copy in its index.
                rows = (
                    (conn or self._conn)
                    .execute("SELECT sigma, sample_rate, k, count FROM query_groups NOT INDEXED")
                    .fetchall()
                )
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise LedgerError(f"ledger {self._path} is unreadable: {exc}") from exc
        try:
            return sorted(((DPRDMQuery(s, q, k), int(c)) for s, q, k, c in rows), key=_group_key)
        except (PrivdiffError, TypeError, ValueError) as exc:
            raise LedgerCorrupt(f"ledger {self._path} holds an invalid query group: {exc}") from exc

    def _epsilon(self, history: list[tuple[DPRDMQuery, int]]) -> float:
        eps = compute_epsilon(history, self.delta, self.accountant, warn_on_edge=False).epsilon
        return eps if math.isfinite(eps) else math.inf

    def status(self) -> LedgerStatus:
        """Budget, ε spent so far (re-accounted from the grouped history) and query count.

        The grouped history is first cross-checked against the per-charge records
        (:class:`~privdiff.errors.LedgerCorrupt` if they disagree).
        """
        with self._read_transaction() as conn:
            _check_history_consistent(conn, self._path)
            history = self._grouped(conn)
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
            index=self.index_fingerprint[:12],
        )

    def dp_event(self) -> dp_accounting.DpEvent:
        """The ledger's whole (cross-checked) history as one dp-accounting ``DpEvent``.

        :func:`~privdiff.accounting.to_dp_event` of the grouped history: any dp-accounting
        accountant (add/remove-one adjacency) can bound it, e.g. to audit ``status()`` with a
        tool that does not know privdiff.
        """
        with self._read_transaction() as conn:
            _check_history_consistent(conn, self._path)
            history = self._grouped(conn)
        return to_dp_event(history)

    def history(self, limit: int | None = None) -> list[ChargeRecord]:
        """Charged queries, oldest first (the last ``limit`` rows when given)."""
        sql = "SELECT id, time, request_id, sigma, sample_rate, k, count, epsilon_after FROM charges"
        if limit is not None:
            limit = check_int("limit", limit, minimum=1)
        with self._read_transaction() as conn:
            if limit is None:
                rows = conn.execute(sql + " ORDER BY id").fetchall()
            else:
                rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
        return [ChargeRecord(*row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Fair admission: a FIFO ticket lock in front of SQLite's write lock


class _TicketLock:
    """First come, first served admission to the ledger's write lock, across processes.

    SQLite's busy handler makes a waiter *sleep* (up to 100 ms a try) while the holder, back
    after a sub-millisecond commit, takes the lock again: measured with 8 chargers, 6 of them got
    one charge in 30 s. This is a ticket lock (Mellor-Crummey & Scott 1991, "Algorithms for
    scalable synchronization on shared-memory multiprocessors", §2.2, queue variant) built from
    Linux open-file-description byte-range locks on a side file ``<ledger>-lock``:

    * taking a ticket: under an exclusive lock on byte 0, read the counter t stored in the file,
      write t + 1, and lock slot t (one byte at ``_BASE + t mod _SLOTS``) exclusively;
    * waiting: until the "now serving" counter equals t;
    * releasing: set "now serving" to t + 1, then unlock slot t.

    Tickets are served strictly in the order they were taken. The kernel drops every lock of a
    process that dies (SIGKILL included): a waiter that finds the ticket being served with a free
    slot knows its holder died (holding or waiting) and advances the counter past it, so nothing a
    dead process left can block the queue. OFD locks (not POSIX ``lockf``) are
    owned by the open file, so two ``Ledger`` objects in one process queue like two processes,
    and no ``close()`` elsewhere drops them. Where OFD locks do not exist the ledger runs without
    tickets, on SQLite's lock alone (correct, only not fair).

    The ticket only orders writers; SQLite's ``BEGIN IMMEDIATE`` still guards the file, so a
    writer that takes no ticket (an older privdiff) cannot corrupt anything.
    """

    _SLOTS = 1 << 20
    _BASE = 1 << 12
    #: File offsets of the two counters: the next ticket to hand out, the ticket being served.
    _NEXT, _SERVING = 0, 8
    #: Lock bytes beside byte 0 (the dispenser): 1 guards the shared ceiling, 2 is the lease of
    #: the one process that computes a new ceiling while the others wait for it.
    _BLOB_LOCK, _LEASE = 1, 2
    #: The shared ceiling: 4-byte length, then canonical JSON (see :meth:`publish`).
    _BLOB, _BLOB_MAX = 64, 1 << 16
    #: Polling interval while waiting (seconds): short first, so a hand-over costs little; capped so
    #: that eight waiters polling cost nothing measurable. Polling, not a blocking F_OFD_SETLKW,
    #: because a wait must end with LedgerError after LOCK_TIMEOUT_S if a holder hangs.
    _POLL = (5e-5, 1e-3)

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)

    @staticmethod
    def available() -> bool:
        return fcntl is not None and hasattr(fcntl, "F_OFD_SETLK")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _lock(self, kind: int, offset: int) -> bool:
        # struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid} (l_pid = 0 for
        # OFD locks); native alignment gives the kernel's layout on Linux.
        arg = struct.pack("@hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _wait(self, kind: int, offset: int, deadline: float) -> bool:
        delay = self._POLL[0]
        while not self._lock(kind, offset):
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(self._POLL[1], delay * 1.5)
        return True

    def _read(self, offset: int) -> int:
        raw = os.pread(self._fd, 8, offset)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    def _write(self, offset: int, value: int) -> None:
        os.pwrite(self._fd, (value % (1 << 62)).to_bytes(8, "little"), offset)

    def acquire(self, deadline: float) -> int | None:
        """Take a ticket and wait for its turn; the ticket, or None if ``deadline`` passed."""
        if not self._wait(fcntl.F_WRLCK, 0, deadline):
            return None
        try:
            ticket = self._read(self._NEXT)
            self._write(self._NEXT, ticket + 1)
            # Slot t is free unless 2^20 tickets are queued at once; wait for it if so.
            if not self._wait(fcntl.F_WRLCK, self._slot(ticket), deadline):
                return None
        finally:
            self._lock(fcntl.F_UNLCK, 0)
        delay = self._POLL[0]
        while True:
            serving = self._read(self._SERVING)
            if serving == ticket:
                return ticket
            if self._dead(serving):
                # Ticket `serving` was taken (its slot locked at once) and its slot is free now: its
                # holder died before handing over. Advance past it, re-checked under byte 0.
                if self._wait(fcntl.F_WRLCK, 0, deadline):
                    try:
                        if self._read(self._SERVING) == serving and self._dead(serving):
                            self._write(self._SERVING, serving + 1)
                    finally:
                        self._lock(fcntl.F_UNLCK, 0)
                continue
            if time.monotonic() > deadline:
                self.release(ticket)  # hand the turn on, so the queue never waits for us
                return None
            time.sleep(delay)
            delay = min(self._POLL[1], delay * 1.5)

    def _dead(self, ticket: int) -> bool:
        """Is ticket's slot free (its holder released it or died)? Probed with a shared lock,
        which conflicts only with the holder's exclusive one."""
        if not self._lock(fcntl.F_RDLCK, self._slot(ticket)):
            return False
        self._lock(fcntl.F_UNLCK, self._slot(ticket))
        return True

    def release(self, ticket: int) -> None:
        """Hand the turn to ticket + 1 (if it is still ours), then free the slot."""
        try:
            if self._wait(fcntl.F_WRLCK, 0, time.monotonic() + LOCK_TIMEOUT_S):
                try:
                    if self._read(self._SERVING) == ticket:
                        self._write(self._SERVING, ticket + 1)
                finally:
                    self._lock(fcntl.F_UNLCK, 0)
        finally:
            self._lock(fcntl.F_UNLCK, self._slot(ticket))

    def _slot(self, ticket: int) -> int:
        return self._BASE + ticket % self._SLOTS

    # -------------------------------------------------------------- the shared ceiling
    # One process computes a ceiling and publishes it; the others, which would all miss at the
    # same moment (they share one history), wait for its lease and use the published one instead
    # of each recomputing the same PLD. A ceiling is a statement about the accountant, not about
    # this file: "under accountant a at δ, the grouped history `counts` has ε = e". It is
    # accepted only with its sha256 and for this ledger's accountant and δ, so a torn or corrupted
    # side file can only make a charge compute its own ceiling, and every use is still checked
    # against the durable counts under the write lock.

    def try_lease(self) -> bool:
        return self._lock(fcntl.F_WRLCK, self._LEASE)

    def take_lease(self, deadline: float) -> bool:
        """Wait for the lease and take it; False if ``deadline`` passed (a hung holder)."""
        return self._wait(fcntl.F_WRLCK, self._LEASE, deadline)

    def wait_lease(self, deadline: float) -> None:
        """Wait until no process holds the lease (it published, gave up, or died)."""
        if self._wait(fcntl.F_RDLCK, self._LEASE, deadline):
            self._lock(fcntl.F_UNLCK, self._LEASE)

    def release_lease(self) -> None:
        self._lock(fcntl.F_UNLCK, self._LEASE)

    def publish(
        self,
        accountant: str,
        delta: float,
        counts: dict[DPRDMQuery, int],
        epsilon: float,
        refresh_below: dict[DPRDMQuery, int] | None = None,
        seconds: float = 0.0,
    ) -> None:
        """Publish a ceiling, unless the one already there holds more of some setting: published
        ceilings only grow, so a slow writer of an older one never replaces a newer one."""
        body = {
            "accountant": accountant,
            "delta": repr(delta),
            "groups": [[q.sigma, q.sample_rate, q.k, c] for q, c in counts.items()],
            "epsilon": repr(epsilon),
            # When to refresh it early; only timing, never part of what ε is claimed for.
            "refresh_below": [[q.sigma, q.sample_rate, q.k, n] for q, n in (refresh_below or {}).items()],
            "seconds": repr(float(seconds)),
        }
        body["sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        data = json.dumps(body, sort_keys=True).encode()
        if len(data) > self._BLOB_MAX:
            return
        if not self._wait(fcntl.F_WRLCK, self._BLOB_LOCK, time.monotonic() + 1.0):
            return
        try:
            current = self._parse(self._read_blob(), accountant, delta)
            if current is None or all(counts.get(q, 0) >= c for q, c in current.counts.items()):
                os.pwrite(self._fd, len(data).to_bytes(4, "little") + data, self._BLOB)
        finally:
            self._lock(fcntl.F_UNLCK, self._BLOB_LOCK)

    def _read_blob(self) -> bytes:
        head = os.pread(self._fd, 4, self._BLOB)
        n = int.from_bytes(head, "little") if len(head) == 4 else 0
        return os.pread(self._fd, n, self._BLOB + 4) if 0 < n <= self._BLOB_MAX else b""

    def shared(self, accountant: str, delta: float) -> _Ceiling | None:
        """The published ceiling, if there is an intact one for this accountant and δ."""
        if not self._wait(fcntl.F_RDLCK, self._BLOB_LOCK, time.monotonic() + 1.0):
            return None
        try:
            data = self._read_blob()
        finally:
            self._lock(fcntl.F_UNLCK, self._BLOB_LOCK)
        return self._parse(data, accountant, delta)

    @staticmethod
    def _parse(data: bytes, accountant: str, delta: float) -> _Ceiling | None:
        try:
            body = json.loads(data)
            sha = body.pop("sha256")
            if sha != hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest():
                return None
            if body["accountant"] != accountant or float(body["delta"]) != delta:
                return None
            counts = {DPRDMQuery(s, q, k): check_int("count", c, minimum=1) for s, q, k, c in body["groups"]}
            below = {
                DPRDMQuery(s, q, k): check_int("refresh_below", n, minimum=0)
                for s, q, k, n in body.get("refresh_below", [])
            }
            eps = float(body["epsilon"])
            seconds = float(body.get("seconds", "0"))
        except (ValueError, TypeError, KeyError, AttributeError, PrivdiffError):
            return None
        if not math.isfinite(eps) or eps < 0:
            return None
        seconds = seconds if math.isfinite(seconds) and seconds > 0 else 0.0
        counts = dict(sorted(counts.items(), key=_group_key))
        return _Ceiling(counts, eps, reserved=True, refresh_below=below, seconds=min(seconds, LOCK_TIMEOUT_S))


# ---------------------------------------------------------------------------------------------


def _group_key(qc: tuple[DPRDMQuery, int]) -> tuple[float, float, int]:
    return (qc[0].sigma, qc[0].sample_rate, qc[0].k)


def _merged(history: list[tuple[DPRDMQuery, int]], new: list[tuple[DPRDMQuery, int]]) -> dict[DPRDMQuery, int]:
    """Grouped counts of ``history`` + ``new``, in the deterministic (σ, q, k) order."""
    counts = dict(history)
    for q, c in new:
        counts[q] = counts.get(q, 0) + c
    return dict(sorted(counts.items(), key=_group_key))


def _meta_checksum(meta: dict[str, str]) -> str:
    """sha256 over every metadata entry but the checksum itself (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _parse_meta(rows: list[tuple], version: int, path: Path) -> dict[str, str]:
    """Validate the metadata rows; any inconsistency → LedgerError/LedgerCorrupt, never a raw one."""
    meta: dict[str, str] = {}
    for key, value in rows:
        if not isinstance(key, str) or not isinstance(value, str) or key in meta:
            raise LedgerCorrupt(f"ledger {path} has a malformed metadata entry {key!r}")
        meta[key] = value
    for key in ("epsilon", "delta", "accountant"):
        if key not in meta:
            raise LedgerError(f"ledger {path} has no {key!r} in its metadata")
    if "checksum" in meta or version >= 2:
        if meta.get("checksum") != _meta_checksum(meta):
            raise LedgerCorrupt(
                f"ledger {path} is corrupt: its metadata (budget, δ, accountant, index) fails its checksum"
            )
    try:
        check_epsilon("epsilon", float(meta["epsilon"]))
        check_delta(float(meta["delta"]))
        check_accountant(meta["accountant"])
        created = float(meta.get("created", "0"))
        if not math.isfinite(created):
            raise ValueError(f"created={meta['created']!r}")
    except (PrivdiffError, ValueError) as exc:
        raise LedgerError(f"ledger {path} has invalid metadata: {exc}") from exc
    if meta.get("index") and not _HEX64.fullmatch(meta["index"]):
        raise LedgerCorrupt(f"ledger {path} has a malformed index fingerprint")
    return meta


def _check_history_consistent(conn: sqlite3.Connection, path: Path) -> None:
    """``query_groups`` (what ε is computed from) must equal ``charges`` summed by (σ, q, k).

    Both tables are written in one transaction, so they always agree on an intact file; a
    corrupted record in either (which SQLite's quick_check does not look inside) shows up here
    instead of silently changing ε.
    """

    def table(sql: str) -> list[tuple]:
        rows = conn.execute(sql).fetchall()
        try:
            return sorted(rows)
        except TypeError:  # a record whose column changed type: not comparable
            raise LedgerCorrupt(f"ledger {path} is corrupt: a history record has the wrong type") from None

    groups = table(
        "SELECT sigma, sample_rate, k, sum(count) FROM query_groups NOT INDEXED GROUP BY sigma, sample_rate, k"
    )
    charges = table("SELECT sigma, sample_rate, k, sum(count) FROM charges NOT INDEXED GROUP BY sigma, sample_rate, k")
    if groups != charges:
        raise LedgerCorrupt(
            f"ledger {path} is corrupt: its grouped history ({len(groups)} (σ, q, k) groups, "
            f"{sum(_as_count(r[3]) for r in groups)} queries) disagrees with its per-charge records "
            f"({len(charges)} groups, {sum(_as_count(r[3]) for r in charges)} queries); its ε cannot be "
            "trusted. Restore the file from a backup; do not delete it (that would reset the budget)"
        )


def _as_count(v: object) -> int:
    return v if isinstance(v, int) else 0


def _remove_stale_temps(path: Path) -> None:
    """Remove temporary files left by a :meth:`Ledger.create` of ``path`` that was killed.

    Only this ledger's own pattern (``.<name>.<32 hex>.tmp`` and SQLite's ``-journal`` of it),
    only regular files older than :data:`STALE_TMP_S`, and only when no live creator holds the
    flock every creator keeps on its file. Best effort: anything unexpected leaves the file.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.tmp(-journal)?")
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_TMP_S:
                continue
            owner_file = entry.path[: -len("-journal")] if entry.name.endswith("-journal") else entry.path
            fd = -1
            try:
                if os.path.exists(owner_file):
                    fd = os.open(owner_file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                    if fcntl is not None:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            continue  # a live creator owns it
                os.unlink(entry.path)
            finally:
                if fd >= 0:
                    os.close(fd)


def _release_live(key: tuple[int, int] | None, conn: sqlite3.Connection) -> None:
    """Close a connection opened by :meth:`Ledger.open` and drop it from :data:`_LIVE`."""
    with _LIVE_LOCK:
        conn.close()
        if key is not None and _LIVE.get(key, 0) > 0:
            _LIVE[key] -= 1
            if not _LIVE[key]:
                del _LIVE[key]


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
        raise LedgerError(f"ledger {path} is truncated ({size} bytes, header says {pages} pages of {page_size})")
