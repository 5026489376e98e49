#!/usr/bin/env python3
"""A tiny HTTP/1.1 server for handover's benchmarks, in plain Python 3.

It answers every request with ``pid=<pid>\\n``, so a load generator can see
which process served it.

Socket: the systemd socket-activation protocol (``LISTEN_PID`` equal to our
pid, ``LISTEN_FDS``, ``LISTEN_FDNAMES``; the socket named ``http``, else the
first one at fd 3), which is how ``handover run`` passes it. Without it,
``--bind HOST:PORT`` binds the port itself (the naive-restart benchmark).

Readiness: ``READY=1`` on ``NOTIFY_SOCKET`` (path or ``@abstract``) once it
accepts, when that variable is set.

SIGTERM (or SIGINT) drains without losing a request:

- it stops accepting at once (closes its copy of the listening socket; the
  supervisor keeps the socket open for the next generation); a connection
  it has already accepted is served, never dropped;
- a request that arrives on a keep-alive connection is answered, with
  ``Connection: close``, and the connection is closed after the response;
- a connection with no request in progress is closed only once it has been
  idle (no byte received) for ``--idle-grace`` seconds since draining began
  (default 2), so a client about to send its next request is not cut off;
- it exits when every connection is gone, or after ``--drain-timeout``
  seconds (default 30).

Usage: py_server.py [--bind HOST:PORT] [--idle-grace SECS] [--drain-timeout SECS]
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

MAX_HEAD = 64 * 1024


def listen_socket(bind):
    """The listening socket: inherited by socket activation, or bound."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        count = int(os.environ.get("LISTEN_FDS", "0"))
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)  # not for our own children
        if count >= 1:
            index = names.index("http") if "http" in names[:count] else 0
            sock = socket.socket(fileno=3 + index)
            sock.setblocking(False)
            return sock
    if not bind:
        sys.exit("py_server: no LISTEN_FDS socket and no --bind HOST:PORT")
    host, _, port = bind.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def notify_ready():
    path = os.environ.pop("NOTIFY_SOCKET", None)
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1\nSTATUS=serving", path)


class Server:
    def __init__(self, idle_grace):
        self.idle_grace = idle_grace
        self.draining = False
        self.drain_started = 0.0
        self.conns = set()
        # Accepted sockets whose transport is still being made.
        self.pending = 0
        self.all_gone = asyncio.Event()
        self.body = ("pid=%d\n" % os.getpid()).encode()

    def response(self, close):
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(self.body), b"Connection: close\r\n" if close else b"", self.body)
        )

    def forget(self, conn):
        self.conns.discard(conn)
        self.check_all_gone()

    def check_all_gone(self):
        if self.draining and not self.conns and not self.pending:
            self.all_gone.set()

    def accept(self, sock):
        """Accepts what is waiting (called when the socket is readable).

        Not asyncio's ``create_server``: its ``Server.close()`` makes the
        transports of connections it accepted but has not yet set up fail
        (``Server._attach`` asserts the server is open), and those
        connections are dropped unanswered, which clients see as resets.
        Here every accepted socket is counted until its protocol runs.
        """
        loop = asyncio.get_running_loop()
        for _ in range(100):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: try again on the next wake-up
            conn.setblocking(False)
            self.pending += 1
            task = loop.create_task(loop.connect_accepted_socket(lambda: Conn(self), conn))
            task.add_done_callback(lambda t, conn=conn: self.set_up(t, conn))

    def set_up(self, task, conn):
        self.pending -= 1
        if task.cancelled() or task.exception() is not None:
            conn.close()
        self.check_all_gone()

    def start_draining(self):
        loop = asyncio.get_running_loop()
        self.draining = True
        self.drain_started = loop.time()
        for conn in list(self.conns):
            conn.check_idle()
        self.check_all_gone()


class Conn(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.buf = bytearray()
        self.last_activity = self.loop.time()
        self.closing = False
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.server.conns.add(self)
        if self.server.draining:
            self.check_idle()

    def connection_lost(self, exc):
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.forget(self)

    def data_received(self, data):
        if self.closing:
            return
        self.last_activity = self.loop.time()
        self.buf += data
        while not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            length, wants_close = 0, False
            version = head[0].rsplit(" ", 1)[-1]
            keep_alive_10 = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    wants_close = "close" in value
                    keep_alive_10 = "keep-alive" in value
            if version == "HTTP/1.0" and not keep_alive_10:
                wants_close = True
            if len(self.buf) < end + 4 + length:
                return  # the body is still coming
            del self.buf[: end + 4 + length]
            close = wants_close or self.server.draining
            self.transport.write(self.server.response(close))
            self.last_activity = self.loop.time()
            if close:
                self.close()

    def close(self):
        self.closing = True
        self.transport.close()  # after the response is written

    def check_idle(self):
        """While draining: close once idle for the grace, with no request
        in progress (no byte of one received)."""
        if self.closing:
            return
        self.timer = None
        since = max(self.last_activity, self.server.drain_started)
        due = since + self.server.idle_grace
        if not self.buf and self.loop.time() >= due:
            self.close()
        else:
            self.timer = self.loop.call_at(max(due, self.loop.time() + 0.01), self.check_idle)


async def main():
    parser = argparse.ArgumentParser(description="tiny HTTP/1.1 benchmark server")
    parser.add_argument("--bind", help="HOST:PORT to bind when no socket is inherited")
    parser.add_argument("--idle-grace", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    args = parser.parse_args()

    sock = listen_socket(args.bind)
    loop = asyncio.get_running_loop()
    server = Server(args.idle_grace)
    loop.add_reader(sock.fileno(), server.accept, sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notify_ready()
    await stop.wait()
    # Stop accepting; our copy of the socket is closed, the supervisor's stays.
    loop.remove_reader(sock.fileno())
    sock.close()
    server.start_draining()
    try:
        await asyncio.wait_for(server.all_gone.wait(), args.drain_timeout)
    except asyncio.TimeoutError:
        for conn in list(server.conns):
            conn.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
