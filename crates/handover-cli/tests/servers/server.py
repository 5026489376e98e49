#!/usr/bin/env python3
"""A plain HTTP/1.1 server in another language, for `handover run`.

It knows nothing of handover: it speaks only the environment protocols,
LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES (its sockets are fds 3..) and
NOTIFY_SOCKET (it sends READY=1 when it serves). On SIGTERM it drains: stops
accepting (queued connections stay for the next generation), answers the
next request on each keep-alive connection with `Connection: close`, closes
connections idle for longer than GRACE seconds, and exits when all are done.

Every answer's body is `pid=<its pid>` and a newline; the header X-Fd-Names
says which names it received. SIGUSR1 writes a file `usr1-<pid>` into
$SERVER_MARK_DIR (to check handover forwards signals).

For fault tests:
- `GET /status/N` answers with status N (for readiness probes).
- `GET /slow?ms=N` appends a line to `$SERVER_MARK_DIR/slow-<pid>` when the
  request arrives (so a test knows it is in flight), then answers after N ms.
- SERVER_START_DELAY_MS=N: wait N ms before serving (and before READY=1), like
  a server that loads its application first; the old generation answers on
  the shared socket meanwhile (what a readiness probe must not be fooled by).
- SERVER_CRASH_AFTER_READY_MS=N: after READY=1 the server accepts connections
  for N ms without answering any, writes how many it accepted to
  `$SERVER_MARK_DIR/held-<pid>`, says so on stderr and exits with code 4 (a
  generation that crashes right after it became ready; the connections it
  held are the only ones that may fail).
"""
import os
import select
import signal
import socket
import sys
import threading
import time

GRACE = float(os.environ.get("SERVER_IDLE_GRACE", "1.0"))
class Flag:
    """Set from a signal handler, so it must not take a lock: a handler runs
    between bytecodes of the main thread, possibly while that thread waits for
    a lock a daemon thread holds (threading.Event.set() deadlocked that way)."""

    def __init__(self):
        self.value = False

    def set(self):
        self.value = True

    def is_set(self):
        return self.value


draining = Flag()
lock = threading.Lock()
active = set()


def listen_fds():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("server.py: LISTEN_PID is not this process; start me under handover run")
    n = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    return names, [socket.socket(fileno=3 + i) for i in range(n)]


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(message.encode(), path)
    finally:
        s.close()


def serve(conn, fdnames):
    conn.settimeout(0.1)
    buf = b""
    idle_since = time.monotonic()
    try:
        while True:
            if b"\r\n\r\n" not in buf:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    if draining.is_set() and not buf and time.monotonic() - idle_since > GRACE:
                        return
                    continue
                if not data:
                    return
                buf += data
                continue
            head, buf = buf.split(b"\r\n\r\n", 1)
            slow_ms = slow_request_ms(head)
            if slow_ms is not None:
                mark("slow-%d" % os.getpid(), "1\n")
                time.sleep(slow_ms / 1000.0)
            close = draining.is_set() or b"connection: close" in head.lower()
            body = ("pid=%d\n" % os.getpid()).encode()
            headers = "HTTP/1.1 %s\r\nContent-Length: %d\r\nX-Fd-Names: %s\r\n%s\r\n" % (
                status_line(head),
                len(body),
                fdnames,
                "Connection: close\r\n" if close else "",
            )
            conn.sendall(headers.encode() + body)
            if close:
                return
            idle_since = time.monotonic()
    except OSError:
        pass
    finally:
        conn.close()
        with lock:
            active.discard(threading.current_thread())


def status_line(head):
    """`200 OK`, or `N Status N` for a request line `GET /status/N ...`."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) >= 2 and parts[1].startswith(b"/status/"):
        code = parts[1][len(b"/status/"):].decode("ascii", "replace")
        if code.isdigit() and len(code) == 3:
            return "%s %s" % (code, {"503": "Service Unavailable", "404": "Not Found"}.get(code, "Status"))
    return "200 OK"


def slow_request_ms(head):
    """N for a request line `GET /slow?ms=N ...`, else None."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) < 2 or not parts[1].startswith(b"/slow"):
        return None
    for field in parts[1].partition(b"?")[2].split(b"&"):
        if field.startswith(b"ms="):
            try:
                return int(field[3:])
            except ValueError:
                pass
    return 1000


def mark(name, text):
    """Appends `text` to the file `name` in $SERVER_MARK_DIR (if set)."""
    d = os.environ.get("SERVER_MARK_DIR")
    if d:
        with lock:
            with open(os.path.join(d, name), "a") as f:
                f.write(text)


def crash_after_ready(socks, ms):
    """Accepts for `ms` milliseconds without answering, records the count,
    then exits with an error: the connections held here are lost."""
    held = []
    deadline = time.monotonic() + ms / 1000.0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            ready, _, _ = select.select(socks, [], [], min(left, 0.05))
        except InterruptedError:
            continue
        for s in ready:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                continue
            held.append(conn)
    mark("held-%d" % os.getpid(), "%d\n" % len(held))
    sys.stderr.write(
        "server.py: crashing on purpose right after READY=1, holding %d connection(s)\n" % len(held)
    )
    sys.stderr.flush()
    os._exit(4)


def on_usr1(signum, frame):
    d = os.environ.get("SERVER_MARK_DIR")
    if d:
        open(os.path.join(d, "usr1-%d" % os.getpid()), "w").close()


def main():
    names, socks = listen_fds()
    fdnames = ":".join(names)
    for s in socks:
        # O_NONBLOCK is shared by every generation holding the socket; all
        # generations of this server use it the same way.
        s.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: draining.set())
    signal.signal(signal.SIGUSR1, on_usr1)
    start_delay_ms = os.environ.get("SERVER_START_DELAY_MS")
    if start_delay_ms:
        time.sleep(int(start_delay_ms) / 1000.0)
    notify("READY=1\nSTATUS=serving")
    crash_ms = os.environ.get("SERVER_CRASH_AFTER_READY_MS")
    if crash_ms:
        crash_after_ready(socks, int(crash_ms))
    while not draining.is_set():
        try:
            ready, _, _ = select.select(socks, [], [], 0.1)
        except InterruptedError:
            continue
        for s in ready:
            if draining.is_set():
                break
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            t = threading.Thread(target=serve, args=(conn, fdnames), daemon=True)
            with lock:
                active.add(t)
            t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if not active:
                break
        time.sleep(0.02)


if __name__ == "__main__":
    main()
    # Exit without interpreter finalization: daemon threads frozen there
    # while holding a lock could block it forever.
    sys.stdout.flush()
    os._exit(0)
