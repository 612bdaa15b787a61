"""Model packages: save/open round trip, refusal paths, zip packages, catalogue downloads over loopback."""
from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from BraTSMambaLib.errors import BraTSInputError, ModelPackageError
from BraTSMambaLib.inference import catalogue
from BraTSMambaLib.inference.package import open_package, save_package
from BraTSMambaLib.nets import build_model, get_spec

PATCH = (32, 32, 32)


def tiny_state(name: str = "segmamba", seed: int = 0, **extra) -> tuple[dict, dict]:
    kw = {k: v for k, v in get_spec(name).tiny.items() if k != "patch_size"}
    kw.update(extra)
    torch.manual_seed(seed)
    return build_model(name, patch_size=PATCH, deep_supervision=False, **kw).state_dict(), kw


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    sd, kw = tiny_state()
    return save_package(tmp_path_factory.mktemp("pkg") / "tiny", "segmamba", [sd, tiny_state(seed=1)[0]],
                        patch_size=PATCH, overrides=kw, training={"data": "none (random init)", "epochs": 0})


def copy_of(package: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(package, dst)
    return dst


def test_round_trip_loads_every_fold_strictly(package):
    pkg = open_package(package)
    assert pkg.network_name == "segmamba" and len(pkg.weight_files) == 2
    meta = json.loads((package / "model.json").read_text())
    assert set(meta["files"]) == {"weights/fold_0.safetensors", "weights/fold_1.safetensors"}
    assert meta["label_convention"] == "2021" and meta["output_regions"] == ["WT", "TC", "ET"]
    nets = pkg.build_networks("cpu")
    sd0, _ = tiny_state(seed=0)
    assert all(torch.equal(nets[0].state_dict()[k], v) for k, v in sd0.items())
    assert not torch.equal(nets[0].state_dict()[next(iter(sd0))], nets[1].state_dict()[next(iter(sd0))])


def test_checksum_mismatch_is_refused(package, tmp_path):
    p = copy_of(package, tmp_path)
    w = p / "weights" / "fold_1.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    w.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="fold_1.safetensors checksum mismatch"):
        open_package(p)


def test_truncated_file_is_refused(package, tmp_path):
    p = copy_of(package, tmp_path)
    w = p / "weights" / "fold_0.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelPackageError, match="fold_0.safetensors is truncated"):
        open_package(p)


def test_corrupt_weights_with_matching_checksum_are_refused(package, tmp_path):
    """A file that passes its (re-computed) checksum but is not a weights file is still refused."""
    p = copy_of(package, tmp_path)
    w = p / "weights" / "fold_0.safetensors"
    w.write_bytes(b"not a safetensors file at all" * 10)
    meta = json.loads((p / "model.json").read_text())
    meta["files"]["weights/fold_0.safetensors"] = {"sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
                                                   "size": w.stat().st_size}
    (p / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match="cannot be read as weights"):
        open_package(p).load_state_dicts()


def test_other_architecture_is_refused_naming_keys(tmp_path):
    sd, _ = tiny_state("segmamba")
    kw = {k: v for k, v in get_spec("umambabot").tiny.items() if k != "patch_size"}
    p = save_package(tmp_path / "wrong", "umambabot", [sd], patch_size=PATCH, overrides=kw)
    with pytest.raises(ModelPackageError, match=r"weights do not fit umambabot: \d+ missing keys .* unexpected keys"):
        open_package(p).build_networks()


def test_other_configuration_is_refused_with_shapes(tmp_path):
    sd, kw = tiny_state("segmamba")
    wider = dict(kw, feat_size=tuple(2 * f for f in kw["feat_size"]))
    p = save_package(tmp_path / "wider", "segmamba", [sd], patch_size=PATCH, overrides=wider)
    with pytest.raises(ModelPackageError, match="shape mismatches"):
        open_package(p).build_networks()


def test_torch_state_dict_is_read_weights_only(package, tmp_path):
    p = copy_of(package, tmp_path)
    sd, _ = tiny_state(seed=0)
    torch.save({"network_weights": sd}, p / "weights" / "fold_0.pt")
    meta = json.loads((p / "model.json").read_text())
    meta["weights"] = ["weights/fold_0.pt"]
    meta["files"] = {"weights/fold_0.pt": {"sha256": hashlib.sha256((p / "weights/fold_0.pt").read_bytes()).hexdigest()}}
    (p / "model.json").write_text(json.dumps(meta))
    net = open_package(p).build_networks()[0]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_bad_model_json_and_missing_files(package, tmp_path):
    p = copy_of(package, tmp_path)
    (p / "weights" / "fold_1.safetensors").unlink()
    with pytest.raises(ModelPackageError, match="fold_1.safetensors is missing"):
        open_package(p)
    (p / "model.json").write_text("{not json")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        open_package(p)
    with pytest.raises(ModelPackageError, match="not found"):
        open_package(tmp_path / "nowhere")
    assert issubclass(ModelPackageError, BraTSInputError)


def test_existing_package_is_refused_and_nothing_partial_left(package, tmp_path):
    sd, kw = tiny_state()
    with pytest.raises(ModelPackageError, match="already exists"):
        save_package(package, "segmamba", [sd], patch_size=PATCH, overrides=kw)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_zip_package(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path / "cache"))
    sd, kw = tiny_state()
    z = save_package(tmp_path / "tiny.zip", "segmamba", [sd], patch_size=PATCH, overrides=kw, as_zip=True)
    pkg = open_package(z)
    assert pkg.source == z and (pkg.root / "model.json").is_file() and str(pkg.root).startswith(str(tmp_path / "cache"))
    pkg.build_networks()
    bad = tmp_path / "cut.zip"
    bad.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    with pytest.raises(ModelPackageError, match="tiny|zip|cut"):
        open_package(bad)


# --- catalogue and downloads (loopback HTTP server with Range support) ----------------------------


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.requests = []
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_catalogue_download_resumes_and_verifies(tmp_path, monkeypatch, server):
    root, base = server
    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path / "cache"))
    sd, kw = tiny_state()
    z = save_package(root / "tiny.zip", "segmamba", [sd], patch_size=PATCH, overrides=kw, as_zip=True)
    data = z.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    res = tmp_path / "resources"
    res.mkdir()
    (res / "models.json").write_text(json.dumps({"models": [
        {"name": "tiny", "url": f"{base}/tiny.zip", "sha256": digest, "size": len(data), "network": "segmamba"},
        {"name": "bad", "url": f"{base}/tiny.zip", "sha256": "0" * 64, "size": len(data)},
    ]}))
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(res))
    # an interrupted earlier download left half the file
    part = tmp_path / "cache" / "downloads" / f"{digest}.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])
    pkg = catalogue.resolve_model("tiny", progress=False)
    assert _RangeHandler.requests == [f"bytes={len(data) // 2}-"]
    cached = tmp_path / "cache" / "downloads" / f"{digest}.zip"
    assert cached.read_bytes() == data and not part.exists()
    assert pkg.network_name == "segmamba"
    # cached: no second request; a registry name finds the catalogue package of that network
    catalogue.resolve_model("segmamba", progress=False)
    assert len(_RangeHandler.requests) == 1
    with pytest.raises(ModelPackageError, match="checksum mismatch"):
        catalogue.resolve_model("bad", progress=False)
    assert not list((tmp_path / "cache" / "downloads").glob("0000*"))
    with pytest.raises(ModelPackageError, match="known: bad, tiny"):
        catalogue.resolve_model("nonexistent", progress=False)


def test_unreachable_url_keeps_partial_download(tmp_path, monkeypatch, server):
    root, base = server
    monkeypatch.setenv("BRATSMAMBA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelPackageError, match="download failed"):
        catalogue.download(f"{base}/missing.zip", "a" * 64, 100, progress=False)


def test_demo_package_absent_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("BRATSMAMBA_RESOURCES", str(tmp_path))
    assert catalogue.demo_package_path() is None
    with pytest.raises(ModelPackageError, match="demo model package is not bundled"):
        catalogue.resolve_model(None)
