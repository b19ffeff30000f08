"""Images by URL (numpy_mixer.fetch) from hostile servers: a trickle, a malformed or cut-off response, an odd
URL, a DNS resolver that never answers. Each ends in one line naming the URL, within the deadline, never a hang
or an http.client traceback."""
import contextlib
import itertools
import socket
import threading
import time
import urllib.parse

import pytest

from numpy_mixer import fetch as fetch_module
from numpy_mixer.errors import MixerError
from numpy_mixer.fetch import fetch

TRICKLE_S = 10  # a trickling server gives up after this long: without the deadline the test fails, not hangs


@contextlib.contextmanager
def raw_server(answer, requests=None):
    """A server on 127.0.0.1 (threads) that reads each request (appended to requests, if given), then calls
    answer(connection, stop) and closes the connection; stop is set when the test ends. Yields a URL on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def talk(connection):
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:  # the whole request: closing on unread bytes would reset
                data = connection.recv(65536)
                if not data:
                    return
                request += data
            if requests is not None:
                requests.append(request)
            try:
                answer(connection, stop)
            except OSError:  # the client gave up
                pass

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=talk, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/image.png"
    finally:
        stop.set()
        listener.close()


def trickle(head, body):
    """An answer that sends head, then body one byte every 0.1 s (for TRICKLE_S at most)."""
    def answer(connection, stop):
        connection.sendall(head)
        end = time.monotonic() + TRICKLE_S
        for byte in body:
            if stop.is_set() or time.monotonic() > end:
                return
            connection.sendall(bytes([byte]))
            time.sleep(0.1)
    return answer


def sends(data):
    return lambda connection, stop: connection.sendall(data)


def one_line_error(url, seconds):
    """The MixerError that fetch(url) raises, checked to be one line naming the URL, within `seconds`."""
    start = time.monotonic()
    with pytest.raises(MixerError) as e:
        fetch(url)
    took = time.monotonic() - start
    message = str(e.value)
    assert message.startswith(f"{url}: ") and len(message.splitlines()) == 1 and "\r" not in message, message
    assert took < seconds, f"{took:.1f} s: {message}"
    return message


@pytest.mark.parametrize("head, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n", bytes(1000)),  # the body, without a length
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", bytes(1000)),  # the body, with one
    (b"", b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 1000),  # the status line and headers
], ids=["body", "body-with-length", "headers"])
def test_a_trickling_server_stops_at_the_deadline(head, body, monkeypatch):
    """A byte every 0.1 s never trips the per-read timeout; the deadline for the whole fetch stops it."""
    monkeypatch.setattr(fetch_module, "DEADLINE_S", 1.0)
    with raw_server(trickle(head, body)) as url:
        message = one_line_error(url, seconds=4)
    assert "took longer than 1 s" in message


def test_the_deadline_spans_redirects(monkeypatch):
    """Each hop answers quickly but slowly enough together: the deadline is the whole fetch's."""
    monkeypatch.setattr(fetch_module, "DEADLINE_S", 1.0)

    hops = itertools.count()

    def redirect(connection, stop):  # 0.3 s a hop, to a new path each time (not a loop): 3 s for urllib's 10
        time.sleep(0.3)
        connection.sendall(f"HTTP/1.1 302 Found\r\nLocation: /{next(hops)}\r\nContent-Length: 0\r\n\r\n".encode())

    with raw_server(redirect) as url:
        assert "took longer than 1 s" in one_line_error(url, seconds=4)


@pytest.mark.parametrize("answer, words", [
    (b"garbage\r\n\r\n", "BadStatusLine: garbage"),
    (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", "LineTooLong"),  # over http.client's 64 KB
    (b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", "more than 100 headers"),
    (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:port/\r\nContent-Length: 0\r\n\r\n", "nonnumeric port"),
    (b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/a.png\r\nContent-Length: 0\r\n\r\n", "unknown url type: ftp"),
    (b"HTTP/1.1 404 Not\rFound\r\nContent-Length: 0\r\n\r\n", "HTTP 404 Not Found"),  # a reason phrase on one line
    (b"HTTP/1.1 302 Found\r\nLocation: /image.png\r\nContent-Length: 0\r\n\r\n", "infinite loop. The last"),
], ids=["status-line", "long-header", "many-headers", "redirect-bad-port", "redirect-to-ftp", "reason-with-cr",
        "redirect-loop"])  # urllib's reason for a redirect loop has three lines
def test_a_malformed_response_is_one_line(answer, words):
    with raw_server(sends(answer)) as url:
        assert words in one_line_error(url, seconds=5)


@pytest.mark.parametrize("answer, words", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + bytes(10), "10 of the 1,000 bytes announced"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + bytes(10), "IncompleteRead"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "IncompleteRead"),  # not a chunk size
], ids=["content-length", "chunked", "bad-chunk-size"])
def test_a_response_cut_short_is_one_line_not_a_truncated_image(answer, words):
    """The server closes mid-body: an error, not the first bytes of an image taken for the whole."""
    with raw_server(sends(answer)) as url:
        message = one_line_error(url, seconds=5)
    assert "closed before the whole response came" in message and words in message


def test_a_server_that_closes_without_answering_is_one_line():
    with raw_server(lambda connection, stop: None) as url:
        assert "Remote end closed connection" in one_line_error(url, seconds=5)


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:port/image.png", "nonnumeric port"),
    ("http://127.0.0.1:1/an image.png", "control characters"),
    ("http://[::1/image.png", "Invalid IPv6 URL"),
    ("http:///image.png", "no host given"),
])
def test_an_odd_url_is_one_line(url, words):
    assert words in one_line_error(url, seconds=5)


def test_a_whole_response_still_comes_whole():
    body = bytes(range(256)) * 1000
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with raw_server(sends(head + body)) as url:
        assert fetch(url) == body
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    with raw_server(sends(chunked)) as url:
        assert fetch(url) == b"hello world"


# --- the DNS lookup: socket.getaddrinfo has no timeout of its own ---------------------------------------------

def resolver(monkeypatch, names):
    """socket.getaddrinfo with a stand-in resolver for the hosts in names: names[host]() gives the address
    to look up instead (127.0.0.1), or raises as a failed lookup does. Other hosts are looked up as usual.
    Returns the names of the threads the lookups of those hosts ran on."""
    real, threads = socket.getaddrinfo, []

    def getaddrinfo(host, *args, **kwargs):
        if host in names:
            threads.append(threading.current_thread().name)
            host = names[host]()
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return threads


def test_a_dns_lookup_that_hangs_stops_at_the_deadline(monkeypatch):
    """A resolver that never answers is left behind at the deadline; one that fails says so, as before."""
    monkeypatch.setattr(fetch_module, "DEADLINE_S", 1.0)
    release = threading.Event()

    def hangs():
        release.wait(TRICKLE_S)  # without the deadline the test fails after this, not hangs
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def no_such_host():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver(monkeypatch, {"hangs.invalid": hangs, "nowhere.invalid": no_such_host})
    try:
        message = one_line_error("http://hangs.invalid/image.png", seconds=4)
    finally:
        release.set()  # the resolver's thread, left behind, ends too
    assert "the DNS lookup of hangs.invalid had no answer within the download's 1 s" in message, message
    assert "Name or service not known; offline?" in one_line_error("http://nowhere.invalid/image.png", seconds=4)


def test_a_host_name_is_looked_up_and_still_sent_as_the_host(monkeypatch):
    """The connection goes to the address the name resolves to; the Host header names the host, not the address."""
    threads = resolver(monkeypatch, {"images.test": lambda: "127.0.0.1"})
    body, requests = bytes(range(256)) * 100, []
    with raw_server(sends(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body),
                    requests) as url:
        port = urllib.parse.urlsplit(url).port
        assert fetch(f"http://images.test:{port}/image.png") == body
    assert f"\r\nHost: images.test:{port}\r\n".encode() in requests[0], requests
    assert threads == ["numpy-mixer-dns"], threads  # looked up by fetch's own, deadline-bound, lookup


def test_https_still_sends_the_host_name_for_tls(monkeypatch):
    """The TLS server name (SNI, in the ClientHello) is the URL's host, not the address it resolved to."""
    resolver(monkeypatch, {"images.test": lambda: "127.0.0.1"})
    hello = []

    def serve(listener):
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(5)
            hello.append(connection.recv(65536))  # then close: the handshake fails, one line

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        one_line_error(f"https://images.test:{listener.getsockname()[1]}/image.png", seconds=5)
        thread.join(5)
    assert hello and b"images.test" in hello[0], hello
