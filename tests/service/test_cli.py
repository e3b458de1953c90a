"""`privdiff keys add|list|revoke` and `privdiff serve`'s checks before the port opens."""

from __future__ import annotations

from privdiff.cli import main
from privdiff.service.keys import KeyStore


def test_keys_add_prints_the_key_once_list_hides_it_revoke_stops_it(tmp_path, capsys):
    keys = tmp_path / "keys.db"
    assert main(["keys", "add", "alice", "--role", "admin", "--epsilon-quota", "2.5", "--keys", str(keys)]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("pdk_") and "shown once" in err
    assert main(["keys", "list", "--keys", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "admin" in listing and "2.5" in listing and key.split("_")[2] not in listing
    store = KeyStore(keys)
    assert store.verify(key).name == "alice"
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert main(["keys", "revoke", "alice", "--keys", str(keys)]) == 0
    assert store.verify(key) is None


def test_keys_bad_input_is_one_line_with_the_documented_exit_code(tmp_path, capsys):
    keys = tmp_path / "keys.db"
    assert main(["keys", "add", "bob", "--role", "root", "--keys", str(keys)]) == 2
    assert "role" in capsys.readouterr().err
    assert main(["keys", "add", "bob", "--epsilon-quota", "-1", "--keys", str(keys)]) == 2
    assert main(["keys", "add", "bob", "--keys", str(keys)]) == 0
    capsys.readouterr()
    assert main(["keys", "add", "bob", "--keys", str(keys)]) == 2  # name taken
    assert main(["keys", "revoke", "nobody", "--keys", str(keys)]) == 1
    assert main(["keys", "list", "--keys", str(tmp_path / "missing.db")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(line.startswith("error: ") for line in err.splitlines())


def test_serve_refuses_bad_setup_before_opening_a_port(tmp_path, capsys):
    from privdiff.accounting import Ledger

    ledger = tmp_path / "budget.db"
    Ledger.create(ledger, epsilon=1.0, delta=1e-5).close()
    keys = tmp_path / "keys.db"
    KeyStore(keys, create=True).close()
    base = ["serve", "--index", str(tmp_path), "--keys", str(keys)]
    assert main(base + ["--ledger", str(tmp_path / "none.db")]) == 4
    assert main(base + ["--ledger", str(ledger), "--port", "70000"]) == 2
    assert main(base + ["--ledger", str(ledger), "--max-images", "0"]) == 2
    assert main(["serve", "--index", str(tmp_path), "--ledger", str(ledger), "--keys", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 4 and "Traceback" not in err
