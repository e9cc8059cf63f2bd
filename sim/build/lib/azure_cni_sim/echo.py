"""A tiny HTTP server that answers every request with the address it came from.

It stands for the on-premises host, the internet host and the Azure wireserver / instance
metadata endpoints in the simulated VNet: ``GET /`` answers ``{"seen": "<client address>",
"host": "<name>"}``, which is how tests and the demo show whether traffic was masqueraded.

Run as ``python -m azure_cni_sim.echo --name onprem --port 80 [--port 32526]`` inside a netns.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


def _handler(name: str) -> type[BaseHTTPRequestHandler]:
    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"seen": self.client_address[0], "host": name}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.info("event=echo_request host=%s client=%s %s", name, self.client_address[0],
                     format % args)

    return Echo


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="0.0.0.0")  # noqa: S104 - inside its own netns
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    servers = [ThreadingHTTPServer((args.bind, port), _handler(args.name)) for port in args.port]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    log.info("event=echo_listening host=%s ports=%s", args.name, args.port)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
