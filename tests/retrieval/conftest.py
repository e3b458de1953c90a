"""Fixtures for the retrieval tests."""

import pytest

from ._helpers import RecordingLedger


@pytest.fixture
def recording_ledger():
    """A stand-in ledger that records every charge (the real SQLite ledger is used where it matters)."""
    return RecordingLedger()
