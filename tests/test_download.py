"""selfsup.download and `selfsup data download`, offline: a small Tiny-ImageNet-shaped zip served
from a local HTTP server (127.0.0.1, an ephemeral port), downloaded with its hash, converted, read back."""

import hashlib
import http.server
import threading

import numpy as np
import pytest

from image_trees import make_tiny_tree, zip_tree
from selfsup import cli, data, download, imagefolder
from selfsup.data import DataError


class Server:
    """Serves ``routes`` {path: bytes}; ``lie_about_length`` {path: n} declares n bytes but sends the body and
    hangs up (a dropped connection). Counts the requests it answers."""

    def __init__(self):
        self.routes, self.lie_about_length, self.requests = {}, {}, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404, "File not found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(server.lie_about_length.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv(download.URL_ENV, raising=False)
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    s = Server()
    yield s
    s.close()


@pytest.fixture
def tiny_zip(tmp_path):
    """(the zip's bytes, "md5:<its md5>", the tree it was made from)"""
    tree = make_tiny_tree(tmp_path / "src" / "tiny-imagenet-200")
    payload = zip_tree(tree, tmp_path / "src" / "tiny-imagenet-200.zip").read_bytes()
    return payload, "md5:" + hashlib.md5(payload).hexdigest(), tree


def test_download_converts_and_caches(server, tiny_zip, tmp_path):
    payload, md5, tree = tiny_zip
    server.routes["/tiny.zip"] = payload
    cache = tmp_path / "cache"
    summary = download.tiny_imagenet(
        tmp_path / "out",
        ["n03", "n01"],
        ["n04"],
        url=server.url + "/tiny.zip",
        known_hash=md5,
        cache=cache,
        progress=False,
    )
    assert summary["layout"] == "tinyimagenet" and (summary["train"], summary["val"], summary["ood"]) == (6, 4, 2)
    assert summary["archive"] == str(cache / "tiny-imagenet-200.zip")
    assert (cache / "tiny-imagenet-200.zip").read_bytes() == payload and [p.name for p in cache.iterdir()] == [
        "tiny-imagenet-200.zip"
    ]
    # What was downloaded converts exactly as the tree it was zipped from.
    imagefolder.convert(tree, tmp_path / "direct", ["n03", "n01"], ["n04"])
    got, want = data.load_dataset(tmp_path / "out"), data.load_dataset(tmp_path / "direct")
    for name in ("train", "val", "ood"):
        np.testing.assert_array_equal(getattr(got, name).images, getattr(want, name).images)
        np.testing.assert_array_equal(getattr(got, name).labels, getattr(want, name).labels)
        assert getattr(got, name).class_names == getattr(want, name).class_names
    assert got.train.class_names == ["ice cream", "goldfish"]
    # A second conversion comes from the cache: no request.
    assert server.requests == 1
    download.tiny_imagenet(
        tmp_path / "again", "2", "1", url=server.url + "/tiny.zip", known_hash=md5, cache=cache, progress=False
    )
    assert server.requests == 1 and len(data.load_dataset(tmp_path / "again").ood) == 2


def test_a_cached_file_that_does_not_match_is_fetched_again(server, tiny_zip, tmp_path):
    payload, md5, _ = tiny_zip
    server.routes["/tiny.zip"] = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-imagenet-200.zip").write_bytes(payload[: len(payload) // 2])  # an old, interrupted copy
    download.tiny_imagenet(
        tmp_path / "out", "n01", "n02", url=server.url + "/tiny.zip", known_hash=md5, cache=cache, progress=False
    )
    assert server.requests == 1 and (cache / "tiny-imagenet-200.zip").read_bytes() == payload


def _bad_download(server, payload, case):
    """Serve one bad download at /tiny.zip; return a fragment the error must contain."""
    if case == "corrupt":  # one byte changed in the middle
        body = bytearray(payload)
        body[len(body) // 2] ^= 0xFF
        server.routes["/tiny.zip"] = bytes(body)
        return "hash"
    if case == "short":  # a truncated file, served as complete
        server.routes["/tiny.zip"] = payload[: len(payload) // 2]
        return "hash"
    if case == "dropped":  # the connection drops before Content-Length bytes came
        server.routes["/tiny.zip"] = payload[: len(payload) // 2]
        server.lie_about_length["/tiny.zip"] = len(payload)
        return "download failed"
    if case == "missing":
        return "404"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["corrupt", "short", "dropped", "missing"])
def test_bad_download_is_one_line_exit_2_and_leaves_nothing(server, tiny_zip, tmp_path, capsys, case):
    payload, md5, _ = tiny_zip
    fragment = _bad_download(server, payload, case)
    cache, dest = tmp_path / "cache", tmp_path / "out"
    rc = cli.main(
        [
            "data",
            "download",
            "tiny-imagenet",
            str(dest),
            "--id-classes",
            "2",
            "--ood-classes",
            "1",
            "--url",
            server.url + "/tiny.zip",
            "--hash",
            md5,
            "--cache",
            str(cache),
            "--no-progress",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.startswith("selfsup: error: ") and err.count("\n") == 1 and fragment in err, err
    assert server.url in err
    assert not dest.exists()
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial or temporary file kept
    with pytest.raises(DataError):  # and nothing is accepted from the cache afterwards
        download.fetch(server.url + "/tiny.zip", md5, cache, progress=False)


def test_cli_download_with_env_url_and_cache(server, tiny_zip, tmp_path, capsys, monkeypatch):
    payload, md5, _ = tiny_zip
    server.routes["/mirror/tiny-imagenet-200.zip"] = payload
    monkeypatch.setenv(download.URL_ENV, server.url + "/mirror/tiny-imagenet-200.zip")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "envcache"))
    dest = tmp_path / "data" / "tin"
    rc = cli.main(
        [
            "data",
            "download",
            "tiny-imagenet",
            str(dest),
            "--id-classes",
            "n01,n02",
            "--ood-classes",
            "n03",
            "--hash",
            md5,
            "--size",
            "32",
            "--compress",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Tiny-ImageNet-200" in out and f"wrote {dest}" in out
    assert "100%" in err  # the download's progress bar, on stderr
    assert (tmp_path / "envcache" / "tiny-imagenet-200.zip").read_bytes() == payload
    ds = data.load_dataset(dest)
    assert ds.train.images.shape == (6, 32, 32, 3) and ds.ood.class_names == ["ice cream"]


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--url", "file:///tmp/tiny.zip"], "--url"),
        (["--hash", "md5:1234"], "--hash"),
        (["--size", "-5"], "--size"),
    ],
)
def test_bad_options_fail_before_downloading(server, tiny_zip, tmp_path, capsys, extra, fragment):
    payload, md5, _ = tiny_zip
    server.routes["/tiny.zip"] = payload
    args = [
        "data",
        "download",
        "tiny-imagenet",
        str(tmp_path / "out"),
        "--id-classes",
        "1",
        "--ood-classes",
        "1",
        "--url",
        server.url + "/tiny.zip",
        "--hash",
        md5,
        "--cache",
        str(tmp_path / "cache"),
    ]
    rc = cli.main(args + extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert server.requests == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_existing_dest_fails_before_downloading(server, tiny_zip, tmp_path):
    payload, md5, _ = tiny_zip
    server.routes["/tiny.zip"] = payload
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.npz").write_bytes(b"keep")
    with pytest.raises(DataError, match="already exists"):
        download.tiny_imagenet(
            tmp_path / "out",
            "1",
            "1",
            url=server.url + "/tiny.zip",
            known_hash=md5,
            cache=tmp_path / "cache",
            progress=False,
        )
    assert server.requests == 0 and (tmp_path / "out" / "train.npz").read_bytes() == b"keep"


def test_the_official_archive_is_pinned():
    assert download.TINY_IMAGENET_URL.endswith("/tiny-imagenet-200.zip")
    assert download.TINY_IMAGENET_HASH == "md5:90528d7ca1a48142e341f4ef8d21d0de"
