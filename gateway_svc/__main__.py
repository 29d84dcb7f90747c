"""python -m gateway_svc --router HOST:PORT --port 5000"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway_svc.app import GatewayServer
from gateway_svc.config import GatewayConfig
from moerm.config import parse_config
from moerm.processes import die_with_parent
from moerm.server import setup_logging


async def serve(config: GatewayConfig) -> None:
    """uvicorn in the foreground (it handles SIGINT/SIGTERM: drain, then stop)."""
    running = GatewayServer(config)
    task = asyncio.create_task(running.server.serve())
    while not running.server.started and not task.done():
        await asyncio.sleep(0.02)
    if config.port_file and running.server.started:
        Path(config.port_file).write_text(str(running.port))
    await task


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # started by `moerm up`: stop when it dies, however it dies
    config = parse_config(GatewayConfig, argv, prog="gateway_svc")
    setup_logging(config.log_level)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main(sys.argv[1:])
