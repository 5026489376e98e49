"""An ASGI app served by uvicorn that restarts under `handover run` without
losing a request. See README.md for what each part is for."""

import os
import signal
import socket
import sys
import time

import uvicorn

DRAIN_GRACE = float(os.environ.get("DRAIN_GRACE", "2"))


def sd_notify(state: str) -> None:
    """The sd_notify protocol: one datagram to NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":  # abstract namespace
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(addr)
        s.sendall(state.encode())


def listen_sockets() -> list[socket.socket]:
    """The socket activation protocol: fds 3.. when LISTEN_PID is us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    n = int(os.environ.get("LISTEN_FDS", "0"))
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    # socket(fileno=) detects the family and type of each descriptor.
    return [socket.socket(fileno=3 + i) for i in range(n)]


async def app(scope, receive, send):
    """The application: plain ASGI (a FastAPI or Starlette app works the same)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"pid={os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Server(uvicorn.Server):
    """uvicorn.Server with readiness and a lossless keep-alive drain."""

    draining_since = None

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if not self.should_exit:
            # 3. Readiness: handover stops the old generation only after
            #    READY=1, so send it once the app has started.
            sd_notify("READY=1")

    def handle_exit(self, sig, frame):
        # 4. The first SIGTERM starts the drain instead of uvicorn's shutdown,
        #    which closes idle keep-alive connections at once (a request
        #    already on its way on one would meet a closed connection).
        if sig == signal.SIGTERM and self.draining_since is None:
            self.draining_since = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter):
        if self.draining_since is not None:
            # Stop accepting: closes our copy of the listening socket; it stays
            # open in handover and in the new generation, which accepts now.
            for server in self.servers:
                server.close()
            # 5. Grace: until every connection is gone, or DRAIN_GRACE has
            #    passed; then uvicorn's own shutdown closes what has been idle
            #    all along and finishes requests in progress.
            idle_long = time.monotonic() - self.draining_since >= DRAIN_GRACE
            if idle_long or not self.server_state.connections:
                return True
        return await super().on_tick(counter)


def drain_middleware(inner):
    """2. Draining: once stopping, every response says "Connection: close",
    so keep-alive clients reconnect (to the new generation)."""

    async def wrapped(scope, receive, send):
        async def send_closing(message):
            if message["type"] == "http.response.start" and server.draining_since is not None:
                message = dict(message, headers=[*message.get("headers", []), (b"connection", b"close")])
            await send(message)

        await inner(scope, receive, send_closing if scope["type"] == "http" else send)

    return wrapped


# 1. The listening socket comes from handover (LISTEN_FDS, fd 3): every
#    generation shares it.
sockets = listen_sockets()
if len(sockets) != 1:
    sys.exit("expected 1 listening socket in LISTEN_FDS: run me with `handover run --bind ...` "
             "(or a systemd .socket unit)")
server = Server(uvicorn.Config(drain_middleware(app), lifespan="on", log_level="warning"))
server.run(sockets=sockets)
