"""datasets/fetch.py: resumable, checksum-verified downloads over real HTTP; extraction of real zip and
RAR 4 archives, once; the messages a user gets offline."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from .conftest import RAR_TOOLS, load_recipe, needs_rar_tool, zip_bytes
from .rar4 import write_rar4

fetch = load_recipe("fetch")
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file with HTTP Range support (Python's SimpleHTTPRequestHandler has none)."""

    ranges: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        if self.path != "/file":
            self.send_error(404)
            return
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        if start >= len(PAYLOAD):
            self.send_error(416)
            return
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_and_verify(server, tmp_path):
    dest = fetch.download(f"{server}/file", tmp_path / "a.bin", md5=MD5)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()
    assert (tmp_path / "a.bin.verified").is_file()  # the next run does not hash 1 MiB again


def test_download_resumes_with_a_range_request(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:300_000])  # an interrupted earlier run
    RangeHandler.ranges.clear()
    fetch.download(f"{server}/file", tmp_path / "a.bin", md5=MD5)
    assert RangeHandler.ranges == ["bytes=300000-"]  # only the rest was asked for
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    # a partial file that is already complete: the server answers 416, the file is kept
    (tmp_path / "b.bin.part").write_bytes(PAYLOAD)
    assert fetch.download(f"{server}/file", tmp_path / "b.bin", md5=MD5).read_bytes() == PAYLOAD


def test_checksum_mismatch_never_leaves_the_file(server, tmp_path):
    with pytest.raises(fetch.FetchError, match="MD5 .* is not the published 0123"):
        fetch.download(f"{server}/file", tmp_path / "a.bin", md5="0123" * 8)
    assert not (tmp_path / "a.bin").exists() and (tmp_path / "a.bin.bad").is_file()
    (tmp_path / "c.bin").write_bytes(PAYLOAD[:-1])  # a damaged copy already on disk
    with pytest.raises(fetch.FetchError, match="damaged or another version"):
        fetch.ensure_archive(tmp_path / "c.bin", f"{server}/file", md5=MD5, allow_download=True)


def test_offline_message_says_what_to_fetch_and_where(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with-block ends: connections are refused
    url = f"http://127.0.0.1:{port}/UCF101.rar"
    with pytest.raises(fetch.FetchError) as err:
        fetch.download(url, tmp_path / "UCF101.rar")
    text = str(err.value)
    assert f"cannot download {url}" in text and str((tmp_path / "UCF101.rar").resolve()) in text
    assert "run the same command again" in text
    with pytest.raises(fetch.FetchError, match=r"does not exist\. Download http://x/y.zip and put it at"):
        fetch.ensure_archive(tmp_path / "y.zip", "http://x/y.zip", md5=None, allow_download=False)


def test_zip_extracted_once(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "splits.zip"
    archive.write_bytes(zip_bytes({"ucfTrainTestlist/": None, "ucfTrainTestlist/classInd.txt": b"1 Archery\n"}))
    out = fetch.extract(archive, tmp_path / "out")
    assert (out / "ucfTrainTestlist" / "classInd.txt").read_text() == "1 Archery\n"
    assert not list(out.glob(".extracting-*"))
    monkeypatch.setattr(fetch, "_extract_zip", lambda *a: pytest.fail("extracted twice"))
    fetch.extract(archive, tmp_path / "out")
    assert "already extracted" in capsys.readouterr().err


def test_damaged_zip_is_a_clear_error(tmp_path):
    data = bytearray(zip_bytes({"a.txt": b"hello " * 1000}))
    data[60:70] = b"\x00" * 10  # inside the compressed data: the CRC check fails on read
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(fetch.FetchError, match="extraction failed"):
        fetch.extract(tmp_path / "bad.zip", tmp_path / "out")
    (tmp_path / "page.rar").write_text("<html>404</html>")  # what a failed download often is
    with pytest.raises(fetch.FetchError, match="neither a zip nor a RAR"):
        fetch.extract(tmp_path / "page.rar", tmp_path / "out")


@needs_rar_tool
@pytest.mark.parametrize("tool", RAR_TOOLS)
def test_rar_extracted_with_the_tool(tmp_path, tool, capsys):
    archive = write_rar4(tmp_path / "v.rar", {"UCF-101": None, "UCF-101/Archery": None,
                                               "UCF-101/Archery/v_Archery_g01_c01.avi": b"A" * 5000,
                                               "UCF-101/Archery/v_Archery_g01_c02.avi": b"B" * 10})
    dest = tmp_path / "tmp"
    dest.mkdir()
    fetch._extract_rar(archive, dest, "v.rar", tool=tool)
    assert (dest / "UCF-101" / "Archery" / "v_Archery_g01_c01.avi").read_bytes() == b"A" * 5000
    assert (dest / "UCF-101" / "Archery" / "v_Archery_g01_c02.avi").read_bytes() == b"B" * 10
    assert ("does not check the CRCs" in capsys.readouterr().err) == (tool == "bsdtar")


@pytest.mark.skipif("unar" not in RAR_TOOLS, reason="unar is not installed")
def test_rar_with_a_bad_crc_is_refused_by_unar(tmp_path):
    archive = write_rar4(tmp_path / "v.rar", {"a.avi": b"hello world" * 100})
    data = bytearray(archive.read_bytes())
    data[data.find(b"hello world") + 3] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(fetch.FetchError, match=r"(?s)unar failed .*Wrong checksum"):
        fetch.extract(archive, tmp_path / "out")
    assert not list((tmp_path / "out").glob(".extracted-*"))  # no marker: the next run tries again


def test_no_rar_tool_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(fetch.FetchError, match="install one of unar"):
        fetch.find_rar_tool()


def test_write_list_paths_relative_to_the_list(tmp_path):
    video = tmp_path / "videos" / "a b.avi"
    assert fetch.write_list([(video, "x")], tmp_path / "lists" / "l.csv") == 1
    assert (tmp_path / "lists" / "l.csv").read_text().splitlines() == ["path,label", "../videos/a b.avi,x"]
