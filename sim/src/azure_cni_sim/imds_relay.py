"""169.254.169.254 in the VNet fabric: every VM asks the same address and gets its own data.

On Azure a VM reaches the instance metadata service at 169.254.169.254 and the answer is
about that VM. In the simulation the fabric namespace holds 169.254.169.254 (``vnet.py``);
this relay listens there on port 80 (its socket is created inside the fabric namespace, as a
portal's is) and forwards each request to the emulator's per-VM path
(``/vms/<vm>/metadata/...``) on the machine's loopback. It picks the VM by the request's
source address: a VM's own traffic to 169.254.169.254 leaves with its primary address and
the fabric does no NAT, so the source is the VM. Anything else gets a 403.

Nothing is routed: the VM reaches the fabric as it reaches every VNet address, and only this
process, in the machine's namespace, talks to the emulator.

Run as ``python -m azure_cni_sim.imds_relay --netns FABRIC --target 127.0.0.1:PORT
--vm 198.18.0.4=vm0 [--vm ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence

import aiohttp
from aiohttp import web

from azure_cni_sim.portal import listen_in_netns
from azure_cni_sim.vnet import IMDS

log = logging.getLogger(__name__)

#: request headers IMDS reads; nothing else is passed on (no X-Forwarded-For: IMDS refuses it)
FORWARDED_HEADERS = ("Metadata", "Accept")


def relay_app(target: str, vms: Mapping[str, str]) -> web.Application:
    """Forward each request to ``http://<target>/vms/<vm of its source address>/...``."""
    session: aiohttp.ClientSession | None = None

    async def forward(request: web.Request) -> web.Response:
        nonlocal session
        vm = vms.get(request.remote or "")
        if vm is None:
            return web.json_response({"error": f"no VM has the address {request.remote}"},
                                     status=403)
        if session is None:
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        async with session.request(request.method, f"http://{target}/vms/{vm}{request.path_qs}",
                                   headers=headers, data=await request.read(),
                                   allow_redirects=False) as upstream:
            body = await upstream.read()
            log.info("event=imds_relayed vm=%s path=%s status=%d", vm, request.path,
                     upstream.status)
            return web.Response(body=body, status=upstream.status,
                                content_type=upstream.content_type)

    async def close(_: web.Application) -> None:
        if session is not None:
            await session.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(close)
    return app


async def serve(netns: str, target: str, vms: Mapping[str, str], port: int = 80) -> None:
    runner = web.AppRunner(relay_app(target, vms), access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, listen_in_netns(netns, port, host=IMDS)).start()
    log.info("event=imds_relay_listening netns=%s address=%s:%d target=%s vms=%d", netns, IMDS,
             port, target, len(vms))
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--netns", required=True, help="the fabric namespace")
    parser.add_argument("--target", required=True, help="the emulator's IMDS, HOST:PORT")
    parser.add_argument("--vm", action="append", default=[], metavar="ADDRESS=NAME",
                        help="a VM's primary address and its name in the emulator")
    args = parser.parse_args(argv)
    vms = dict(spec.split("=", 1) for spec in args.vm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def run() -> None:
        task = asyncio.create_task(serve(args.netns, args.target, vms))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
