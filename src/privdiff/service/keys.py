"""API keys of ``privdiff serve``: a SQLite file holding only salted hashes, roles, quotas, revocation.

A key reads ``pdk_<id>_<secret>``: ``id`` (12 hex) is public and finds the row, ``secret`` (32
random bytes, URL-safe base64) is shown once by ``privdiff keys add`` and never stored. The row
keeps ``scrypt(secret, salt)`` with a per-key random salt (RFC 7914 parameters N = 2^14, r = 8,
p = 1: ~50 ms per check, so a stolen keys file cannot be brute-forced cheaply); a presented key is
compared with :func:`hmac.compare_digest` (constant time). The server remembers a verified key
only as a SHA-256 of the whole key in memory, so it does not pay scrypt on every request, and
still re-reads the row (revocation) each time.

The same file holds the service's idempotency records (:class:`IdempotencyStore`): one row per
(key id, Idempotency-Key) with the stored response, so a retry is answered from disk, also after a
restart.

A key's ε quota is a sub-budget kept in its own :class:`~privdiff.accounting.Ledger` file
(``<keys file>.ledgers/<id>.db``) with the dataset ledger's δ and accountant (created on first
use by the server, when those are known): the same accountant, the same atomic check-and-charge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from privdiff.errors import InvalidParameter, PrivdiffError, check_positive

ROLES = ("user", "admin")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_KEY_RE = re.compile(r"^pdk_(?P<id>[0-9a-f]{12})_(?P<secret>[A-Za-z0-9_-]{43})$")
#: scrypt cost (RFC 7914 §2's interactive-login recommendation, N = 2^14).
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    epsilon_quota REAL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    request_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
"""


class KeyStoreError(PrivdiffError):
    """The keys file cannot be used (missing, not a keys file) or a key name/id is unknown."""


@dataclass(frozen=True)
class KeyInfo:
    """A key's public record (never the secret or its hash)."""

    id: str
    name: str
    role: str
    epsilon_quota: float | None
    created: float
    revoked: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # an idempotency record is durable once written
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class KeyStore:
    """The keys file. Safe to share between threads (one connection under a lock) and processes."""

    def __init__(self, path: str | os.PathLike, *, create: bool = False):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise KeyStoreError(f"keys file {self.path} does not exist (create one with `privdiff keys add`)")
        if create and not self.path.parent.is_dir():
            raise KeyStoreError(f"cannot create keys file {self.path}: directory {self.path.parent} does not exist")
        try:
            self.conn = _connect(self.path)
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"{self.path} is not a privdiff keys file: {exc}") from None
        # The file holds salted hashes and stored images: readable by the owner only.
        os.chmod(self.path, 0o600)
        self.lock = threading.RLock()
        self._verified: dict[bytes, str] = {}

    def close(self) -> None:
        self.conn.close()

    @property
    def ledger_dir(self) -> Path:
        """Where the per-key quota ledgers live."""
        return self.path.with_name(self.path.name + ".ledgers")

    # ------------------------------------------------------------------ administration
    def add(self, name: str, role: str = "user", epsilon_quota: float | None = None) -> tuple[str, KeyInfo]:
        """Create a key; returns (the full key, shown once, and its record)."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidParameter("name", name, "1-64 characters of letters, digits, '_', '.', '@', '-'")
        if role not in ROLES:
            raise InvalidParameter("role", role, "'user' or 'admin'")
        if epsilon_quota is not None:
            epsilon_quota = check_positive("epsilon_quota", epsilon_quota)
        key_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        created = time.time()
        with self.lock:
            try:
                self.conn.execute(
                    "INSERT INTO keys(id, name, role, salt, hash, epsilon_quota, created) VALUES (?,?,?,?,?,?,?)",
                    (key_id, name, role, salt, _hash(secret, salt), epsilon_quota, created),
                )
            except sqlite3.IntegrityError:
                raise InvalidParameter("name", name, "a name not used by another key") from None
        return f"pdk_{key_id}_{secret}", KeyInfo(key_id, name, role, epsilon_quota, created, None)

    def list(self) -> list[KeyInfo]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT id, name, role, epsilon_quota, created, revoked FROM keys ORDER BY created"
            ).fetchall()
        return [KeyInfo(*r) for r in rows]

    def revoke(self, name_or_id: str) -> KeyInfo:
        """Revoke by name or id (idempotent); the key stops working on its next request."""
        with self.lock:
            row = self.conn.execute("SELECT id FROM keys WHERE name = ? OR id = ?", (name_or_id, name_or_id)).fetchone()
            if row is None:
                raise KeyStoreError(f"no key named {name_or_id!r} in {self.path}")
            self.conn.execute("UPDATE keys SET revoked = coalesce(revoked, ?) WHERE id = ?", (time.time(), row[0]))
        return self.get(row[0])

    def get(self, key_id: str) -> KeyInfo | None:
        with self.lock:
            row = self.conn.execute(
                "SELECT id, name, role, epsilon_quota, created, revoked FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
        return KeyInfo(*row) if row else None

    # ------------------------------------------------------------------ authentication
    def verify(self, key: str) -> KeyInfo | None:
        """The key's record if ``key`` is a valid, unrevoked key; else None."""
        if not isinstance(key, str):
            return None
        m = _KEY_RE.match(key)
        if not m:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        with self.lock:
            row = self.conn.execute(
                "SELECT id, name, role, epsilon_quota, created, revoked, salt, hash FROM keys WHERE id = ?",
                (m.group("id"),),
            ).fetchone()
            known = self._verified.get(digest)
        if row is None or row[5] is not None:
            return None
        if known != row[0]:
            if not hmac.compare_digest(_hash(m.group("secret"), row[6]), row[7]):
                return None
            with self.lock:
                self._verified[digest] = row[0]
        return KeyInfo(*row[:6])


class IdempotencyStore:
    """Responses stored per (key id, Idempotency-Key) in the keys file.

    A request first *claims* its key (a row with no status, owned by this server instance), runs,
    then *completes* it with the response. A retry finds the completed row and gets the same
    response; one that finds a claimed row waits while the owner is alive, and takes the row over
    when the owner died (see :class:`~privdiff.service.app.Service`).
    """

    def __init__(self, keys: KeyStore):
        self._keys = keys

    def claim(self, key_id: str, idem_key: str, fingerprint: str, request_id: str, owner: str) -> dict | None:
        """Insert a claim; None if inserted, else the existing row as a dict."""
        with self._keys.lock:
            conn = self._keys.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT fingerprint, request_id, owner, status, body FROM idempotency "
                    "WHERE key_id = ? AND idem_key = ?",
                    (key_id, idem_key),
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO idempotency(key_id, idem_key, fingerprint, request_id, owner, created) "
                        "VALUES (?,?,?,?,?,?)",
                        (key_id, idem_key, fingerprint, request_id, owner, time.time()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if row is None:
            return None
        return {
            "fingerprint": row[0],
            "request_id": row[1],
            "owner": row[2],
            "status": row[3],
            "body": json.loads(row[4]) if row[4] is not None else None,
        }

    def take_over(self, key_id: str, idem_key: str, dead_owner: str, owner: str) -> bool:
        """Move a claim from a dead owner to ``owner``; False if someone else got there first."""
        with self._keys.lock:
            cur = self._keys.conn.execute(
                "UPDATE idempotency SET owner = ? WHERE key_id = ? AND idem_key = ? AND owner = ? AND status IS NULL",
                (owner, key_id, idem_key, dead_owner),
            )
        return cur.rowcount == 1

    def complete(self, key_id: str, idem_key: str, status: int, body: dict) -> None:
        with self._keys.lock:
            self._keys.conn.execute(
                "UPDATE idempotency SET status = ?, body = ? WHERE key_id = ? AND idem_key = ?",
                (int(status), json.dumps(body), key_id, idem_key),
            )

    def release(self, key_id: str, idem_key: str, owner: str) -> None:
        """Drop an unfinished claim (a transient refusal such as 503, which a retry should redo)."""
        with self._keys.lock:
            self._keys.conn.execute(
                "DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND owner = ? AND status IS NULL",
                (key_id, idem_key, owner),
            )
