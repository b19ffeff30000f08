"""Helpers shared by the tests: a fresh interpreter on this checkout, and a web server on 127.0.0.1."""
import contextlib
import http.server
import os
import subprocess
import sys
import threading


def run_python(code, timeout=120):
    """Run code in a fresh interpreter (this checkout's numpy_mixer); return the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd="/")


@contextlib.contextmanager
def serve(files):
    """A web server on 127.0.0.1, in a thread, serving {"/path": bytes} (404 for any other path); yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
