"""A tiny DP-RDM service environment (model, 32-row index, ledger, keys) for the service tests, and a
runner for real uvicorn servers in subprocesses (``python -m service.tiny serve ...``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"


def query_for(model_dir):
    from privdiff.accounting import DPRDMQuery
    from privdiff.rdm.pipeline import generation_defaults

    d = generation_defaults(model_dir)
    return DPRDMQuery(sigma=d["sigma"], sample_rate=d["sample_rate"], k=d["k"])


def budget_for(model_dir, queries: int, delta: float = 1e-3) -> float:
    """An ε budget that admits exactly ``queries`` queries of the model's default setting."""
    from privdiff.accounting import Ledger

    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"probe-{os.getpid()}-{time.monotonic_ns()}.db"
    book = Ledger.create(probe, epsilon=1e6, delta=delta)
    try:
        q = query_for(model_dir)
        lo, hi = book.preview(q, queries), book.preview(q, queries + 1)
    finally:
        book.close()
        probe.unlink()
    assert lo < hi
    return (lo + hi) / 2


def build_env(root: Path, model_dir: Path, *, queries: int = 1000) -> dict:
    """Index + ledger (admitting exactly ``queries``) + empty keys file under ``root``."""
    from privdiff.accounting import Ledger
    from privdiff.retrieval import build_index
    from privdiff.service.keys import KeyStore
    from rdm.conftest import TINY_SPACE, PixelProjectionEncoder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(32, 12, 12, 1), dtype=np.uint8)
    emb = PixelProjectionEncoder().encode_images(images)
    index = build_index(root / "index", emb, space_id=TINY_SPACE, source="tiny")
    ledger = root / "budget.db"
    Ledger.create(ledger, epsilon=budget_for(model_dir, queries), delta=1e-3).close()
    keys = root / "keys.db"
    KeyStore(keys, create=True).close()
    return {"model": model_dir, "index": index.path, "ledger": ledger, "keys": keys}


def patch_encoders(setattr=setattr) -> None:
    """The stand-in encoder instead of the real ones (nothing heavy loads).

    In the pytest process pass ``monkeypatch.setattr`` so the patch ends with the test: a lasting
    patch would hand the 12×12 stand-in to every later test that loads an encoder (the demo's)."""
    import privdiff.encoders as encoders
    from rdm.conftest import PixelProjectionEncoder

    setattr(encoders, "load_text_encoder", lambda name="default": PixelProjectionEncoder())
    setattr(encoders, "load_image_encoder", lambda name="default": PixelProjectionEncoder())


def make_app(env: dict, *, patch: bool = True, **settings):
    import warnings

    from privdiff.rdm.pipeline import make_pipeline
    from privdiff.service.app import ServiceSettings, create_app

    if patch:  # the server subprocess; in-process tests patch through monkeypatch (conftest)
        patch_encoders()

    def loader(book):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_pipeline(env["model"], mode="dp-rdm", index=env["index"], ledger=book)

    return create_app(ledger=env["ledger"], keys=env["keys"], loader=loader, settings=ServiceSettings(**settings))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on 127.0.0.1 in a subprocess (``start``, ``kill``, ``terminate``)."""

    def __init__(self, env: dict, log: Path, **settings):
        self.env, self.settings, self.log = env, settings, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 180.0) -> Server:
        import httpx

        spec = json.dumps({k: str(v) for k, v in self.env.items()} | {"settings": self.settings})
        pythonpath = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.tiny", spec, str(self.port)],
                cwd=TESTS,
                env=os.environ | {"PYTHONPATH": pythonpath},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {wait} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, wait: float = 60.0) -> int:
        self.proc.terminate()
        return self.proc.wait(wait)


def _main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    settings = spec.pop("settings")
    env = {k: Path(v) for k, v in spec.items()}
    from privdiff.service.app import serve

    serve(make_app(env, **settings), port=int(argv[1]), log_level="warning")


if __name__ == "__main__":
    _main(sys.argv[1:])
