"""Opening a user's file safely: regular files only, one clear line for every way it can fail.

A FIFO opened for reading blocks until someone writes to it, and /dev/zero never ends, so the
file is opened non-blocking and its type checked on the open descriptor (no race between a check
and the open) before a byte is read.
"""
import errno
import os
import stat

from .errors import MixerError

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


def _kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path, what="file"):
    """A binary file object for path, opened read-only, or a MixerError that names path and the reason.

    what: the kind of file expected, for the messages ("image", "safetensors file").
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MixerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MixerError(f"{path}: is a directory, not a {what}") from None
    except PermissionError:
        raise MixerError(f"{path}: permission denied; make the {what} readable (chmod, or its owner)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MixerError(f"{path}: symbolic link loop (too many levels of links)") from None
        raise MixerError(f"{path}: cannot open it ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise MixerError(f"{path}: is {_kind(mode)}, not a {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: back to ordinary reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
