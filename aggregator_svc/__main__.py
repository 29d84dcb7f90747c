"""python -m aggregator_svc --bundle DIR [--port N]"""

from __future__ import annotations

import asyncio
import sys

from aggregator_svc.app import build_aggregator
from aggregator_svc.config import AggregatorConfig
from moerm.config import parse_config
from moerm.processes import die_with_parent
from moerm.server import run_until_signalled, setup_logging


async def serve(config: AggregatorConfig) -> None:
    # grpc.aio objects must be created inside the running event loop.
    app = build_aggregator(config)
    app.metrics.serve(config.host, config.metrics_port)
    try:
        await run_until_signalled(app.server, grace_s=config.grace_s, port_file=config.port_file or None)
    finally:
        app.metrics.stop()


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # started by `moerm up`: stop when it dies, however it dies
    config = parse_config(AggregatorConfig, argv, prog="aggregator_svc")
    setup_logging(config.log_level)
    asyncio.run(serve(config))


if __name__ == "__main__":
    main(sys.argv[1:])
