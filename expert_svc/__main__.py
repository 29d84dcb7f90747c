"""python -m expert_svc --bundle DIR --task NAME [--port N]"""

from __future__ import annotations

import asyncio
import os
import sys

from expert_svc.app import build_expert
from expert_svc.config import ExpertConfig
from moerm.config import parse_config
from moerm.memory import keep_freed_memory
from moerm.processes import die_with_parent
from moerm.server import run_until_signalled, setup_logging


async def serve(config: ExpertConfig) -> None:
    app = build_expert(config)
    app.metrics.serve(config.host, config.metrics_port)
    try:
        await run_until_signalled(
            app.server,
            grace_s=config.grace_s,
            port_file=config.port_file or None,
            warm_up=app.load,
            on_stop=app.batcher.stop,
        )
    finally:
        app.metrics.stop()


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # started by `moerm up`: stop when it dies, however it dies
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_config(ExpertConfig, argv, prog="expert_svc")
    setup_logging(config.log_level)
    keep_freed_memory()
    asyncio.run(serve(config))


if __name__ == "__main__":
    main(sys.argv[1:])
