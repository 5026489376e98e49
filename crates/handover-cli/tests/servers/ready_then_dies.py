#!/usr/bin/env python3
"""A generation that says it is ready and dies 300 ms later without ever
accepting a connection: gunicorn's master, reduced (it sends READY=1 before
its workers import the application; when they cannot, it exits). It writes
a Python-style traceback to stderr first, as such a master's workers do,
with the line that says why in the middle."""
import os
import socket
import sys
import time

path = os.environ.get("NOTIFY_SOCKET", "")
if path.startswith("@"):
    path = "\0" + path[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=booting workers", path)
s.close()
time.sleep(0.3)
sys.stderr.write(
    "[INFO] Booting worker with pid: %d\n"
    "[ERROR] Exception in worker process\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/app/current/app.py", line 3, in <module>\n'
    "    from handlers import hndler\n"
    "ImportError: cannot import name 'hndler' from 'handlers'\n" % os.getpid()
)
for i in range(30):
    sys.stderr.write("[DEBUG] shutting down worker thread %d\n" % i)
sys.stderr.write("[ERROR] Reason: Worker failed to boot.\n")
sys.stderr.flush()
sys.exit(3)
