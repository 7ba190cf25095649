"""Tests for the ONNX cache of dpdeepsets.inception_onnx, with a stand-in exporter.

The real export (seconds) and ONNX Runtime's features are tested in tests/unit/test_metrics.py;
here ``export_onnx`` writes a few known bytes, so the cache's rules are checked quickly:
the name follows the source and the exporter, a good file is reused, a corrupted,
truncated or unchecksummed one is re-exported, and a failed export leaves nothing behind.
"""

import hashlib

import pytest

from dpdeepsets import inception_onnx

SHA1 = "a" * 40


@pytest.fixture
def exports(monkeypatch):
    """Replace the exporter by one that writes b'onnx-N' for its N-th call; count the calls."""
    calls = []

    def fake_export(source, dest):
        calls.append((source, dest))
        with open(dest, "wb") as fh:
            fh.write(f"onnx-{len(calls)}".encode())

    monkeypatch.setattr(inception_onnx, "export_onnx", fake_export)
    return calls


def test_name_holds_source_sha1_exporter_and_opset(tmp_path, monkeypatch):
    path = inception_onnx.onnx_cache_path(tmp_path, SHA1)
    assert path.parent == tmp_path and path.suffix == ".onnx"
    assert SHA1 in path.name and f"opset{inception_onnx.OPSET}" in path.name and "torch" in path.name
    assert inception_onnx.onnx_cache_path(tmp_path, "b" * 40) != path
    monkeypatch.setattr(inception_onnx, "OPSET", inception_onnx.OPSET + 1)
    assert inception_onnx.onnx_cache_path(tmp_path, SHA1) != path


def test_first_use_exports_then_reuses(tmp_path, exports):
    cache = tmp_path / "cache" / "inception"  # made on first use
    data = inception_onnx.cached_onnx_model("src.pt", cache, SHA1)
    assert data == b"onnx-1" and len(exports) == 1
    path = inception_onnx.onnx_cache_path(cache, SHA1)
    assert path.read_bytes() == data
    recorded = path.with_name(path.name + ".sha256").read_text()
    assert recorded == f"{hashlib.sha256(data).hexdigest()}  {path.name}\n"  # sha256sum format
    assert inception_onnx.cached_onnx_model("src.pt", cache, SHA1) == data
    assert len(exports) == 1
    # only the file, its checksum and the lock: no temporary left over
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [path.name, path.name + ".sha256", path.name + ".lock"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_checksum", "empty_checksum"])
def test_damaged_cache_is_exported_again(tmp_path, exports, damage):
    inception_onnx.cached_onnx_model("src.pt", tmp_path, SHA1)
    path = inception_onnx.onnx_cache_path(tmp_path, SHA1)
    checksum = path.with_name(path.name + ".sha256")
    if damage == "flip":
        path.write_bytes(b"onnx-X")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:3])
    elif damage == "no_checksum":
        checksum.unlink()
    else:
        checksum.write_text("")
    assert inception_onnx.cached_onnx_model("src.pt", tmp_path, SHA1) == b"onnx-2"
    assert len(exports) == 2
    assert path.read_bytes() == b"onnx-2"
    assert checksum.read_text().split()[0] == hashlib.sha256(b"onnx-2").hexdigest()


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    def broken_export(source, dest):
        with open(dest, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("exporter died")

    monkeypatch.setattr(inception_onnx, "export_onnx", broken_export)
    with pytest.raises(RuntimeError, match="exporter died"):
        inception_onnx.cached_onnx_model("src.pt", tmp_path, SHA1)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
