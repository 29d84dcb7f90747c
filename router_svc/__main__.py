"""python -m router_svc --bundle DIR --experts TASK=HOST:PORT,... --aggregator HOST:PORT"""

from __future__ import annotations

import asyncio
import os
import sys

from moerm.config import parse_config
from moerm.memory import keep_freed_memory
from moerm.processes import die_with_parent
from moerm.server import run_until_signalled, setup_logging
from router_svc.app import build_router
from router_svc.config import RouterConfig


async def serve(config: RouterConfig) -> None:
    app = build_router(config)
    app.metrics.serve(config.host, config.metrics_port)
    await run_until_signalled(
        app.server,
        grace_s=config.grace_s,
        port_file=config.port_file or None,
        warm_up=app.load,
        on_stop=app.close,  # stops the metrics server too
    )


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # started by `moerm up`: stop when it dies, however it dies
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_config(RouterConfig, argv, prog="router_svc")
    setup_logging(config.log_level)
    keep_freed_memory()  # the prompt embedder's batches
    asyncio.run(serve(config))


if __name__ == "__main__":
    main(sys.argv[1:])
