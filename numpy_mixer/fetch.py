"""Images by URL, as timm's model card opens its example: urlopen, with a timeout and a size cap.

    data = fetch("https://example.com/cat.jpg")   # the bytes, or a one-line MixerError

numpy_mixer.preprocess.load_image opens the bytes as it opens a file: the same decompression-bomb and
aspect-ratio checks on the declared size before any pixel is decoded.

Only the standard library (urllib): the bytes are read in chunks and the download stops at MAX_BYTES,
so a huge or endless response costs at most that much memory. urlopen's timeout bounds each socket
operation only (a server that sends a byte every few seconds never trips it), so every read from the
server (status line, headers, body, redirects included) also waits no later than a deadline DEADLINE_S
after the fetch began. So does each host's DNS lookup, which has no timeout at all (socket.getaddrinfo):
it runs on a thread of its own, left behind if the resolver has not answered by the deadline.
"""
import functools
import http.client
import io
import socket
import threading
import time
import urllib.error
import urllib.request

from .errors import MixerError

TIMEOUT_S = 10.0  # per network operation (connect, each read), as urlopen's timeout
DEADLINE_S = 60.0  # for the whole fetch, redirects included: MAX_BYTES at about 1 MB/s
MAX_BYTES = 50_000_000  # 50 MB: far above any photo
_CHUNK = 1 << 16
_SCHEMES = ("http://", "https://")


def is_url(img):
    """True for a str starting with http:// or https:// (case-insensitive)."""
    return isinstance(img, str) and img[:8].lower().startswith(_SCHEMES)


def fetch(url, timeout=TIMEOUT_S, max_bytes=MAX_BYTES):
    """The body of an http(s) URL as bytes, or a MixerError naming the URL and what to do."""
    deadline_s = DEADLINE_S  # read now, not at import: tests make it short
    deadline = time.monotonic() + deadline_s
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "numpy-mixer"})  # http://[::1: ValueError
        with _opener(deadline).open(request, timeout=timeout) as response:
            expected = response.length  # http.client's reading of Content-Length: None if absent or chunked
            if expected is not None and expected > max_bytes:
                raise _too_large(url, max_bytes)
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # no (or a false) Content-Length: stop at the cap
                    raise _too_large(url, max_bytes)
                chunks.append(chunk)
            if expected is not None and size < expected:  # http.client reads a cut-off body as the end
                raise _cut_short(url, f"{size:,} of the {expected:,} bytes announced")
    except _LookupPastDeadline as e:
        raise MixerError(f"{url}: the DNS lookup of {e.host} had no answer within the download's {deadline_s:g} s "
                         "- check the network and its DNS settings, or download the image and pass the file") from None
    except _PastDeadline:
        raise MixerError(f"{url}: the download took longer than {deadline_s:g} s (too slow a server or network) "
                         "- try again later, or download the image and pass the file") from None
    except urllib.error.HTTPError as e:
        raise MixerError(f"{url}: the server answered HTTP {e.code} {_one_line(e.reason)} - check the URL, "
                         "or download the image and pass the file") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, OSError):
            reason = e.reason.strerror or _one_line(e.reason) or type(e.reason).__name__
            raise MixerError(f"{url}: cannot fetch the image ({reason}; offline?) - check the network, "
                             "or download the image and pass the file") from None
        # no host (http:///a.png), or a redirect to ftp:
        raise MixerError(f"{url}: cannot fetch the image ({_one_line(e.reason)}) - check the URL, or download "
                         "the image and pass the file") from None
    except (TimeoutError, socket.timeout):
        raise MixerError(f"{url}: no answer within {timeout:g} s - try again, or download the image "
                         "and pass the file") from None
    except http.client.IncompleteRead as e:  # a chunked body cut off or malformed
        raise _cut_short(url, _one_line(e)) from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        # connection reset, a malformed URL (bad port, a space) or response (status line, a header over
        # 64 KB, over 100 headers)
        raise MixerError(f"{url}: cannot fetch the image ({type(e).__name__}: {_one_line(e)}) - check the URL, "
                         "or download the image and pass the file") from None
    return b"".join(chunks)


def _too_large(url, max_bytes):
    return MixerError(f"{url}: the response is larger than {max_bytes:,} bytes - this is not a photo; "
                      "download it yourself if you are sure")


def _cut_short(url, what):
    return MixerError(f"{url}: the connection closed before the whole response came ({what}) - try again, "
                      "or download the image and pass the file")


def _one_line(text):
    """Text from the server (a reason phrase, an exception's message) on one line."""
    return " ".join(str(text).split())


# --- the deadline: no read from the server waits past it ----------------------------------------------

class _PastDeadline(Exception):
    """The fetch's deadline passed while waiting for the server (not an OSError: nothing wraps it)."""


class _LookupPastDeadline(_PastDeadline):
    """The fetch's deadline passed while waiting for the DNS lookup of host."""

    def __init__(self, host):
        super().__init__(host)
        self.host = host


def _opener(deadline):
    """urlopen's handlers for http and https, redirects and proxies included, each read bounded by the
    deadline; no ftp:, file: or data: (a redirect there is 'unknown url type')."""
    opener = urllib.request.OpenerDirector()
    handlers = [urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTPHandler(deadline),
                urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                urllib.request.HTTPErrorProcessor()]
    if hasattr(urllib.request, "HTTPSHandler"):  # Python built with ssl
        handlers.append(_HTTPSHandler(deadline))
    for handler in handlers:
        opener.add_handler(handler)
    return opener


class _DeadlineHandlerMixin:
    """An http(s) handler whose connections read by the deadline."""

    def __init__(self, deadline, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(functools.partial(_connection, http_class, self.deadline), req, **kwargs)


class _HTTPHandler(_DeadlineHandlerMixin, urllib.request.HTTPHandler):
    pass


if hasattr(urllib.request, "HTTPSHandler"):
    class _HTTPSHandler(_DeadlineHandlerMixin, urllib.request.HTTPSHandler):
        pass


def _connection(http_class, deadline, host, **kwargs):
    """An http.client connection whose address lookup (_connect) and responses (and proxy tunnels, read
    through _DeadlineReader) end by the deadline; none is opened past it (a redirect, say)."""
    if time.monotonic() >= deadline:
        raise _PastDeadline()
    connection = http_class(host, **kwargs)
    # http.client's own hook for making the socket (socket.create_connection); the Host header and the
    # TLS server name still come from connection.host, the name, not the address it resolved to
    connection._create_connection = functools.partial(_connect, deadline)
    connection.response_class = functools.partial(_DeadlineResponse, deadline=deadline,
                                                  timeout=connection.timeout)
    return connection


def _connect(deadline, address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None):
    """socket.create_connection(address, timeout, source_address), with the lookup of the host and each
    connect ending by the deadline (_lookup); each address it gives is tried in turn, the last one's
    error raised."""
    host, port = address
    error = OSError(f"no address for {host}")
    for family, kind, proto, _, sockaddr in _lookup(host, port, deadline):
        wait = _wait_for(deadline, timeout)
        sock = None
        try:
            sock = socket.socket(family, kind, proto)  # an address family this host lacks: the next address
            sock.settimeout(wait)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            sock.settimeout(socket.getdefaulttimeout() if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout)
            return sock
        except OSError as e:
            if sock is not None:
                sock.close()
            error = e
    raise error


def _wait_for(deadline, timeout):
    """The socket timeout for the next wait: what is left until the deadline, at most timeout (None or
    socket's default-timeout marker: no cap of its own); _PastDeadline when nothing is left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _PastDeadline()
    if timeout is None or timeout is socket._GLOBAL_DEFAULT_TIMEOUT:
        return left
    return min(timeout, left)


def _lookup(host, port, deadline):
    """socket.getaddrinfo(host, port) for TCP, waited for until the deadline: the resolver has no timeout
    we can set, so it runs on a daemon thread, left behind if it has not answered by then."""
    answer = []

    def look_up():
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as e:  # socket.gaierror (no such host, offline), UnicodeError (a bad name): raised below
            answer.append(e)

    thread = threading.Thread(target=look_up, name="numpy-mixer-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not answer:
        raise _LookupPastDeadline(host)
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline, timeout, **kwargs):
        super().__init__(_DeadlineSocket(sock, deadline, timeout), *args, **kwargs)


class _DeadlineSocket:
    """The one thing HTTPResponse asks of its socket, makefile("rb"), through _DeadlineReader."""

    def __init__(self, sock, deadline, timeout):
        self.sock, self.deadline, self.timeout = sock, deadline, timeout

    def makefile(self, mode="rb"):
        raw = self.sock.makefile(mode, buffering=0)  # the socket's own reader: the socket stays open while it is
        return io.BufferedReader(_DeadlineReader(raw, self.sock, self.deadline, self.timeout))


class _DeadlineReader(io.RawIOBase):
    """A socket's reader whose every wait ends by the deadline: a buffered read(n) waits for n bytes over
    many socket reads, each within the per-operation timeout, so the deadline is checked at each one."""

    def __init__(self, raw, sock, deadline, timeout):
        self.raw, self.sock, self.deadline, self.timeout = raw, sock, deadline, timeout

    def readable(self):
        return True

    def readinto(self, b):
        self.sock.settimeout(_wait_for(self.deadline, self.timeout))
        try:
            return self.raw.readinto(b)
        except (TimeoutError, socket.timeout):
            if time.monotonic() >= self.deadline:
                raise _PastDeadline() from None
            raise

    def close(self):
        self.raw.close()
        super().close()
