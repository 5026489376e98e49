"""The WSGI application (a Flask or Django app works the same)."""

import os


def app(environ, start_response):
    body = f"pid={os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
