"""Images by URL, as timm's model card opens its example: urlopen, with a timeout and a size cap.

    data = fetch("https://example.com/cat.jpg")   # the bytes, or a one-line MixerError

numpy_mixer.preprocess.load_image opens the bytes as it opens a file: the same decompression-bomb and
aspect-ratio checks on the declared size before any pixel is decoded.

Only the standard library (urllib): the bytes are read in chunks and the download stops at MAX_BYTES,
so a huge or endless response costs at most that much memory.
"""
import socket
import urllib.error
import urllib.request

from .errors import MixerError

TIMEOUT_S = 10.0  # per network operation (connect, each read), as urlopen's timeout
MAX_BYTES = 50_000_000  # 50 MB: far above any photo
_CHUNK = 1 << 16
_SCHEMES = ("http://", "https://")


def is_url(img):
    """True for a str starting with http:// or https:// (case-insensitive)."""
    return isinstance(img, str) and img[:8].lower().startswith(_SCHEMES)


def fetch(url, timeout=TIMEOUT_S, max_bytes=MAX_BYTES):
    """The body of an http(s) URL as bytes, or a MixerError naming the URL and what to do."""
    request = urllib.request.Request(url, headers={"User-Agent": "numpy-mixer"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(url, max_bytes)
            chunks, size = [], 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # no (or a false) Content-Length: stop at the cap
                    raise _too_large(url, max_bytes)
                chunks.append(chunk)
    except urllib.error.HTTPError as e:
        raise MixerError(f"{url}: the server answered HTTP {e.code} {e.reason} - check the URL, "
                         "or download the image and pass the file") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise MixerError(f"{url}: cannot fetch the image ({reason}; offline?) - check the network, "
                         "or download the image and pass the file") from None
    except (TimeoutError, socket.timeout):
        raise MixerError(f"{url}: no answer within {timeout:g} s - try again, or download the image "
                         "and pass the file") from None
    except (OSError, ValueError) as e:  # connection reset, a malformed URL or response (http.client errors)
        raise MixerError(f"{url}: cannot fetch the image ({type(e).__name__}: {e}) - check the URL, "
                         "or download the image and pass the file") from None
    return b"".join(chunks)


def _too_large(url, max_bytes):
    return MixerError(f"{url}: the response is larger than {max_bytes:,} bytes - this is not a photo; "
                      "download it yourself if you are sure")
