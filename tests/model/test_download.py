"""`gpt2-serve download` against a loopback HTTP server serving a tiny but real OpenAI-layout model."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.cli.main import main
from app.model import hparams
from app.model.download import FILES, DownloadError, download_model
from app.model.hparams import HParams
from app.model.random_init import random_params
from app.tokenizer.bundled import bundled_bpe_files

TINY = HParams(n_vocab=50257, n_ctx=16, n_embd=8, n_head=2, n_layer=2)
DATA = "model.ckpt.data-00000-of-00001"


def bpe_file(name: str) -> bytes:
    encoder_json, vocab_bpe = bundled_bpe_files()
    return {"encoder.json": encoder_json, "vocab.bpe": vocab_bpe}[name].read_bytes()


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; ``log`` records (method, path, Range)."""

    root: Path
    cut: dict[str, int] = field(default_factory=dict)  # file name -> bytes sent before hanging up, once
    fail: dict[str, int] = field(default_factory=dict)  # file name -> HTTP status of its first GET
    ignore_range: bool = False
    short_range: bool = False  # a 206 carries only half of what was asked for
    log: list[tuple[str, str, str | None]] = field(default_factory=list)

    def gets(self, name: str) -> list[str | None]:
        return [rng for method, path, rng in self.log if method == "GET" and path.endswith(f"/{name}")]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ServerWithState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.serve(body=False)

    def do_GET(self) -> None:
        self.serve(body=True)

    def serve(self, *, body: bool) -> None:
        state = self.server.state
        requested = self.headers.get("Range")
        state.log.append((self.command, self.path, requested))
        path = (state.root / self.path.lstrip("/")).resolve()
        if not (path.is_relative_to(state.root) and path.is_file()):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        failure = state.fail.pop(path.name, None) if self.command == "GET" else None
        if failure is not None:
            self.send_response(failure)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        start, status = 0, 200
        if requested and not state.ignore_range:
            start, status = int(requested.removeprefix("bytes=").rstrip("-")), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        payload = data[start:]
        if status == 206 and state.short_range:
            payload = payload[: len(payload) // 2]
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(payload) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        cut = state.cut.pop(path.name, None) if self.command == "GET" else None
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.close_connection = True
            return
        self.wfile.write(payload)


class ServerWithState(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState):
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real OpenAI-layout folder (random weights) with TINY's hyperparameters."""
    from app.model.formats.openai_tf import write_openai_model
    from app.tokenizer.load import gpt2_tokenizer_files

    folder = tmp_path_factory.mktemp("source") / "tiny"
    return write_openai_model(folder, TINY, random_params(TINY, seed=0), tokenizer=gpt2_tokenizer_files())


@pytest.fixture
def root(tmp_path: Path, tiny_model: Path) -> Path:
    """A server root holding the tiny model as ``models/124M/`` (a copy each test may spoil)."""
    root = tmp_path / "served"
    shutil.copytree(tiny_model, root / "models" / "124M")
    return root.resolve()


@pytest.fixture
def server(root: Path) -> Iterator[ServerWithState]:
    httpd = ServerWithState(ServerState(root))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def fetch(server: ServerWithState, dest: Path, size: str = "124M", **kw: object) -> Path:
    kw.setdefault("progress", False)
    kw.setdefault("expected", TINY)
    return download_model(size, dest, base_url=server.url, **kw)


def assert_same_files(folder: Path, source: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name


def test_full_download(server: ServerWithState, root: Path, tmp_path: Path, capsys) -> None:
    folder = fetch(server, tmp_path / "store", progress=True)
    assert folder == tmp_path / "store" / "124M"
    assert_same_files(folder, root / "models" / "124M")
    assert all(server.state.gets(name) == [None] for name in FILES)
    assert "encoder.json" in capsys.readouterr().err  # one tqdm bar per file


def test_old_name_lands_in_canonical_folder(server: ServerWithState, tmp_path: Path) -> None:
    assert fetch(server, tmp_path, size="117M") == tmp_path / "124M"
    assert not (tmp_path / "117M").exists()


def test_interrupted_download_resumes(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    server.state.cut[DATA] = 100_000
    folder = fetch(server, tmp_path)
    assert server.state.gets(DATA) == [None, "bytes=100000-"]
    assert (folder / DATA).read_bytes() == (root / "models" / "124M" / DATA).read_bytes()


def test_gives_up_after_retries_and_keeps_the_part(server: ServerWithState, tmp_path: Path) -> None:
    server.state.cut[DATA] = 5000
    with pytest.raises(DownloadError, match=rf"models/124M/{DATA}: download failed after 1 attempts"):
        fetch(server, tmp_path, retries=0)
    assert (tmp_path / "124M" / f"{DATA}.part").stat().st_size == 5000
    assert not (tmp_path / "124M" / DATA).exists()
    fetch(server, tmp_path)  # the next run picks up where this one stopped
    assert server.state.gets(DATA)[-1] == "bytes=5000-"


def test_server_error_is_retried(server: ServerWithState, tmp_path: Path) -> None:
    server.state.fail["hparams.json"] = 503
    fetch(server, tmp_path)
    assert server.state.gets("hparams.json") == [None, None]


def test_stale_part_from_a_previous_run_resumes(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    source = (root / "models" / "124M" / "encoder.json").read_bytes()
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "encoder.json.part").write_bytes(source[:12345])
    folder = fetch(server, tmp_path)
    assert server.state.gets("encoder.json") == ["bytes=12345-"]
    assert (folder / "encoder.json").read_bytes() == source
    assert not (folder / "encoder.json.part").exists()


def test_complete_part_is_just_renamed(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    source = (root / "models" / "124M" / "vocab.bpe").read_bytes()
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "vocab.bpe.part").write_bytes(source)
    fetch(server, tmp_path)  # the server answers 416 with the total, which matches
    assert (tmp_path / "124M" / "vocab.bpe").read_bytes() == source


def test_server_ignoring_range_restarts_from_zero(
    server: ServerWithState, root: Path, tmp_path: Path
) -> None:
    server.state.ignore_range = True
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "encoder.json.part").write_bytes(b"not the start of encoder.json")
    folder = fetch(server, tmp_path)
    assert server.state.gets("encoder.json") == ["bytes=29-"]  # asked, got a 200 instead
    assert_same_files(folder, root / "models" / "124M")


def test_missing_file_is_a_clear_404(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    (root / "models" / "124M" / "vocab.bpe").unlink()
    with pytest.raises(DownloadError) as err:
        fetch(server, tmp_path)
    assert str(err.value) == "server has no file models/124M/vocab.bpe (HTTP 404)"


def test_size_mismatch_is_detected(server: ServerWithState, tmp_path: Path) -> None:
    server.state.short_range = True  # the resumed body stops short of the announced total
    (tmp_path / "124M").mkdir()
    (tmp_path / "124M" / "encoder.json.part").write_bytes(bpe_file("encoder.json")[:1000])
    with pytest.raises(
        DownloadError,
        match=r"models/124M/encoder.json: size mismatch, got \d+ bytes but the server announced 1042301",
    ):
        fetch(server, tmp_path)
    assert not (tmp_path / "124M" / "encoder.json").exists()


def test_hash_mismatch_of_encoder_json(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    encoder = root / "models" / "124M" / "encoder.json"
    encoder.write_bytes(encoder.read_bytes().replace(b'"!": 0', b'"?": 0', 1))
    with pytest.raises(
        DownloadError, match=r"encoder.json: sha256 \w+\.\.\. is not GPT-2's \(196139668be6\.\.\.\)"
    ):
        fetch(server, tmp_path)


def test_tiny_model_is_not_the_124M_preset(server: ServerWithState, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"hparams.json: .* does not match the 124M hyperparameters"):
        fetch(server, tmp_path, expected=None)


def test_checkpoint_must_agree_with_hparams(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    wider = HParams(n_vocab=TINY.n_vocab, n_ctx=TINY.n_ctx, n_embd=16, n_head=2, n_layer=TINY.n_layer)
    (root / "models" / "124M" / "hparams.json").write_text(wider.to_json())
    with pytest.raises(DownloadError, match=r"model/wte has shape \[50257, 8\], expected \[50257, 16\]"):
        fetch(server, tmp_path, expected=wider)


def test_checkpoint_file_must_name_model_ckpt(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    (root / "models" / "124M" / "checkpoint").write_text('model_checkpoint_path: "model-1000"\n')
    with pytest.raises(DownloadError, match=r"checkpoint: does not name model.ckpt"):
        fetch(server, tmp_path)


def test_complete_files_are_not_downloaded_again(server: ServerWithState, root: Path, tmp_path: Path) -> None:
    fetch(server, tmp_path)
    (tmp_path / "124M" / "vocab.bpe").write_bytes(b"truncated")  # wrong size: fetched again
    server.state.log.clear()
    fetch(server, tmp_path)
    assert [(m, p.rsplit("/", 1)[1]) for m, p, _ in server.state.log if m == "GET"] == [("GET", "vocab.bpe")]
    assert sorted(p.rsplit("/", 1)[1] for m, p, _ in server.state.log if m == "HEAD") == sorted(FILES)
    assert_same_files(tmp_path / "124M", root / "models" / "124M")


def test_unknown_size_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        DownloadError, match=r"unknown GPT-2 size '999M'; known: 124M, 355M, 774M, 1558M, 117M, 345M"
    ):
        download_model("999M", tmp_path, base_url="http://127.0.0.1:9", progress=False)


def test_bad_base_url(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"base URL 'ftp://example' is not an http\(s\) URL"):
        download_model("124M", tmp_path, base_url="ftp://example", progress=False)


def test_cli_downloads(server: ServerWithState, root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(hparams.PRESETS, "124M", TINY)  # the CLI checks against the size's preset
    store = tmp_path / "store"
    code = main(["download", "124M", "--models-dir", str(store), "--base-url", server.url, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert str(store / "124M") in out
    assert err == ""
    assert_same_files(store / "124M", root / "models" / "124M")


def test_cli_failure_is_one_line_exit_2(server: ServerWithState, tmp_path: Path, capsys) -> None:
    code = main(
        ["download", "355M", "--models-dir", str(tmp_path), "--base-url", server.url, "--no-progress"]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert err == "gpt2-serve download: error: server has no file models/355M/checkpoint (HTTP 404)\n"
