"""``stackdemo-web`` / ``python -m stackdemo.web``."""

import argparse
import asyncio
import logging
import sys

from stackdemo.config import ConfigError, load_config
from stackdemo.web.server import serve

log = logging.getLogger("stackdemo.web")


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError("port must be 1-65535")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _raise_fd_limit(target: int = 65536) -> None:
    # Each client awaiting a result holds a socket, and systemd's default
    # soft limit is 1024; the hard limit is what the admin really allows.
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stackdemo-web",
        description="Tornado front that submits stackdemo tasks and awaits them. "
        "Reads the JSON file named by $STACKDEMO_CONFIG.",
    )
    parser.add_argument("--address", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument(
        "--port", type=_port, default=10001, help="default: %(default)s"
    )
    parser.add_argument(
        "--backlog",
        type=_positive,
        default=None,
        help="listen queue length; default: net.core.somaxconn",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default: %(default)s",
    )
    args = parser.parse_args(argv)
    # stderr only, no timestamps: journald records both.
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    _raise_fd_limit()
    try:
        asyncio.run(serve(config, args.address, args.port, args.backlog))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.address, args.port, exc)
        return 1
    return 0
