"""The generated code in moerm/v1 must be exactly what protoc makes of proto/.

Fails when a .proto is edited without regenerating (or generated code is edited
by hand). Regenerate with::

    python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/moerm/v1/*.proto
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def _generated_files(folder: Path) -> dict[str, Path]:
    return {path.name: path for pattern in GENERATED for path in folder.glob(pattern)}


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(REPO)) for p in (REPO / "proto" / "moerm" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    fresh = _generated_files(tmp_path / "moerm" / "v1")
    committed = _generated_files(REPO / "moerm" / "v1")
    assert len(fresh) == 3 * len(protos)
    assert sorted(committed) == sorted(fresh), "generated files differ from those committed in moerm/v1"
    stale = [name for name in sorted(fresh) if fresh[name].read_bytes() != committed[name].read_bytes()]
    assert not stale, f"moerm/v1 is stale, regenerate from proto/: {stale}"
