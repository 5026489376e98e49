"""gunicorn settings for zero-downtime reloads under `handover run`.
See README.md for why each one is here."""

# No `bind`: with LISTEN_FDS set, gunicorn serves the sockets handover passes
# (fds 3..) and binds nothing itself. (A `bind` would be ignored.)

# Load the application in the master before it says READY=1. gunicorn sends
# READY=1 as soon as its master has started, before the workers exist: with
# the app preloaded, a broken app fails the new generation before it claims
# to be ready (handover then keeps the old one), and the workers only fork.
preload_app = True

# Threads give keep-alive connections (sync workers close every connection
# after one response). gthread workers that are asked to stop keep their
# idle keep-alive connections open a moment for a request already on its way.
worker_class = "gthread"
workers = 2
threads = 4
keepalive = 5

# SIGTERM (handover's stop signal) is gunicorn's graceful stop: workers
# finish their requests within graceful_timeout. Keep it below handover's
# --stop-timeout, which SIGKILLs what is left.
graceful_timeout = 25

# Logs to stderr, where handover copies them (and keeps the last lines of a
# generation that fails to start for the reload's error message).
accesslog = None
errorlog = "-"
loglevel = "warning"
