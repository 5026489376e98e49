#!/usr/bin/env python3
"""A server that reloads itself in place, the way Puma's USR2 hot restart
does, for `handover run --reload-signal USR2 --reload-ready notify`.

Its sockets come from LISTEN_FDS (fds 3..). On SIGUSR2 it sends RELOADING=1
(with MONOTONIC_USEC=) to NOTIFY_SOCKET, stops accepting (connections wait in
the accept queue), finishes the requests in flight (the next request on a
keep-alive connection is answered with `Connection: close`), then re-executes
itself: same pid, same sockets, a new image that boots and sends READY=1 (the
systemd Type=notify-reload contract). Every answer's body is `pid=<pid>` and
`boot=<n>` (1 for the first image, 2 after one reload, ...). SIGTERM drains
and exits.

What a boot after a reload does is read from `$SERVER_MARK_DIR/inplace-mode`
(once: the file is then set back to `ok`):
- `ok` (or no file): boots and sends READY=1;
- `fail`: says on stderr that the configuration is broken and exits 1 (a
  hot restart into a broken release);
- `hang`: serves, but never sends READY=1.
"""
import os
import select
import signal
import socket
import sys
import threading
import time

GRACE = 1.0
BOOT = int(os.environ.get("INPLACE_BOOT", "1"))


class Flag:
    """Set from a signal handler: no lock (see server.py)."""

    def __init__(self):
        self.value = False

    def set(self):
        self.value = True

    def is_set(self):
        return self.value


stopping = Flag()  # SIGTERM: drain and exit
reloading = Flag()  # SIGUSR2: drain and re-execute
lock = threading.Lock()
active = set()


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


def draining():
    return stopping.is_set() or reloading.is_set()


def serve(conn):
    conn.settimeout(0.1)
    buf = b""
    idle_since = time.monotonic()
    try:
        while True:
            if b"\r\n\r\n" not in buf:
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    if draining() and not buf and time.monotonic() - idle_since > GRACE:
                        return
                    continue
                if not data:
                    return
                buf += data
                continue
            head, buf = buf.split(b"\r\n\r\n", 1)
            close = draining() or b"connection: close" in head.lower()
            body = ("pid=%d\nboot=%d\n" % (os.getpid(), BOOT)).encode()
            conn.sendall(
                (
                    "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n"
                    % (len(body), "Connection: close\r\n" if close else "")
                ).encode()
                + body
            )
            if close:
                return
            idle_since = time.monotonic()
    except OSError:
        pass
    finally:
        conn.close()
        with lock:
            active.discard(threading.current_thread())


def mode():
    """This boot's mode, read once."""
    d = os.environ.get("SERVER_MARK_DIR")
    if not d or BOOT == 1:
        return "ok"
    path = os.path.join(d, "inplace-mode")
    try:
        with open(path) as f:
            m = f.read().strip()
    except OSError:
        return "ok"
    with open(path, "w") as f:
        f.write("ok")
    return m or "ok"


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        sys.exit("inplace.py: LISTEN_PID is not this process; start me under handover run")
    n = int(os.environ.get("LISTEN_FDS", "0"))
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    for s in socks:
        s.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGUSR2, lambda *_: reloading.set())
    m = mode()
    if m == "fail":
        sys.stderr.write(
            "inplace.py: config error: unknown setting 'wrokers' (config/server.rb line 3); "
            "not starting\n"
        )
        sys.stderr.flush()
        os._exit(1)
    if m != "hang":
        notify("READY=1\nSTATUS=serving boot %d" % BOOT)
    while not draining():
        try:
            ready, _, _ = select.select(socks, [], [], 0.1)
        except InterruptedError:
            continue
        for s in ready:
            if draining():
                break
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                continue
            conn.setblocking(True)
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            with lock:
                active.add(t)
            t.start()
    if reloading.is_set() and not stopping.is_set():
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading" % usec)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if not active:
                break
        time.sleep(0.02)
    if reloading.is_set() and not stopping.is_set():
        for s in socks:
            os.set_inheritable(s.fileno(), True)
        env = dict(os.environ, INPLACE_BOOT=str(BOOT + 1))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)], env)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)
