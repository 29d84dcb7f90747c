"""What the pods run besides the services: the init container's bundle check
(and fetch), the exec health probe (plaintext and mTLS against a real gRPC
server), and the light image's promise that the aggregator starts without torch."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import grpc
import pytest

from moerm.bundle import Bundle
from moerm.deploy import bundle_check, probe

# --- bundle check -------------------------------------------------------------------------------


def test_bundle_check_passes_and_names_the_version(minilm_bundle: Path, capsys) -> None:
    version = Bundle.load(minilm_bundle).version
    assert (
        bundle_check.main(["--bundle", str(minilm_bundle), "--expect-version", version, "--task", "code"])
        == 0
    )
    assert version in capsys.readouterr().out


def test_bundle_check_refuses_another_version(minilm_bundle: Path, capsys) -> None:
    assert bundle_check.main(["--bundle", str(minilm_bundle), "--expect-version", "0123456789abcdef"]) == 1
    error = capsys.readouterr().err
    assert "0123456789abcdef" in error and Bundle.load(minilm_bundle).version in error


def test_bundle_check_refuses_a_missing_task_and_a_corrupt_file(
    minilm_bundle: Path, tmp_path: Path, capsys
) -> None:
    assert bundle_check.main(["--bundle", str(minilm_bundle), "--task", "exam"]) == 1
    assert "no task 'exam'" in capsys.readouterr().err
    copy = tmp_path / "bundle"
    shutil.copytree(minilm_bundle, copy)
    heads = copy / "tasks" / "code" / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-1] + b"\0")
    assert bundle_check.main(["--bundle", str(copy)]) == 1
    assert "corrupt" in capsys.readouterr().err
    assert bundle_check.main(["--bundle", str(copy), "--no-verify"]) == 0  # version only


def test_bundle_fetched_from_an_archive(minilm_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(minilm_bundle, arcname="minilm-bundle")  # under one folder
    target = tmp_path / "mounted"
    target.mkdir()
    (target / "leftover").write_text("from an earlier fetch")
    version = Bundle.load(minilm_bundle).version
    args = ["--bundle", str(target), "--fetch", archive.as_uri(), "--expect-version", version]
    assert bundle_check.main(args) == 0
    assert Bundle.load(target).version == version and not (target / "leftover").exists()
    # A restarted init container finds the bundle there and does not fetch again.
    monkeypatch.setattr(bundle_check, "fetch", lambda *a, **k: pytest.fail("fetched again"))
    assert bundle_check.main(args) == 0


def test_bundle_fetch_failure_is_reported(tmp_path: Path, capsys) -> None:
    missing = (tmp_path / "nothing.tar.gz").as_uri()
    assert bundle_check.main(["--bundle", str(tmp_path / "b"), "--fetch", missing]) == 1
    assert "bundle fetch failed" in capsys.readouterr().err


# --- health probe ---------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for *.moerm.svc.cluster.local and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", "/CN=moerm test CA", cwd=folder)  # fmt: skip
    for name, san in (("server", "DNS:*.moerm.svc.cluster.local"), ("client", "DNS:moerm-router")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    return folder


async def _health_server(credentials=None):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer

    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = "127.0.0.1:0"
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, health, port


async def _probe(*args: str) -> int:
    """The probe as kubelet runs it: its own process."""
    import asyncio

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moerm.deploy.probe", *args, stderr=asyncio.subprocess.PIPE
    )
    await process.communicate()
    return process.returncode


async def test_probe_plaintext() -> None:
    from grpc_health.v1 import health_pb2

    server, health, port = await _health_server()
    try:
        assert await _probe("--address", f"127.0.0.1:{port}", "--plaintext") == 1  # NOT_SERVING: loading
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await _probe("--address", f"127.0.0.1:{port}", "--plaintext") == 0
    finally:
        await server.stop(None)
    assert await _probe("--address", f"127.0.0.1:{port}", "--plaintext", "--timeout", "1") == 1  # gone


async def test_probe_speaks_mtls(certificates: Path, monkeypatch) -> None:
    """A server that requires client certificates (what kubelet's gRPC probe cannot
    satisfy): the probe presents the pod's certificate from MOERM_TLS_*."""
    from grpc_health.v1 import health_pb2

    read = lambda name: (certificates / name).read_bytes()  # noqa: E731
    credentials = grpc.ssl_server_credentials(
        [(read("server.key"), read("server.crt"))], root_certificates=read("ca.crt"), require_client_auth=True
    )
    server, health, port = await _health_server(credentials)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    address = ["--address", f"127.0.0.1:{port}", "--timeout", "2"]
    name = ["--server-name", "moerm-expert-code.moerm.svc.cluster.local"]
    try:
        monkeypatch.delenv("MOERM_TLS_CERT", raising=False)
        assert await _probe(*address, "--plaintext") == 1
        monkeypatch.setenv("MOERM_TLS_CA", str(certificates / "ca.crt"))
        monkeypatch.setenv("MOERM_TLS_CERT", str(certificates / "client.crt"))
        monkeypatch.setenv("MOERM_TLS_KEY", str(certificates / "client.key"))
        assert await _probe(*address, *name) == 0
        assert await _probe(*address, "--server-name", "elsewhere.example") == 1  # name checked
    finally:
        await server.stop(None)


def test_probe_credentials_modes(monkeypatch, tmp_path: Path) -> None:
    args = argparse.Namespace(plaintext=True, public=False)
    assert probe.credentials(args) is None
    for part in ("CERT", "KEY", "CA"):
        monkeypatch.delenv(f"MOERM_TLS_{part}", raising=False)
    args.plaintext = False
    assert probe.credentials(args) is None  # no TLS configured: plaintext
    args.public = True
    assert probe.credentials(args) is not None


# --- images --------------------------------------------------------------------------------------


def test_aggregator_and_pod_tools_start_without_torch() -> None:
    """The light image has no torch: what runs in it must not import it."""
    code = (
        "import sys\n"
        "import aggregator_svc.__main__, aggregator_svc.app, moerm.deploy.bundle_check, moerm.deploy.probe\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_dockerfile_light_target_installs_no_model_code() -> None:
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    stages = {}
    for block in text.split("\nFROM ")[1:]:
        header, _, body = block.partition("\n")
        stages[header.split(" AS ")[-1].strip()] = body
    assert set(stages) == {"base", "light", "model"}
    assert "torch" not in stages["light"].replace("find_spec('torch') is not None", "")
    assert "[model]" not in stages["light"]
    for stage in ("light", "model"):
        assert "USER 10001:10001" in stages[stage]
