"""Opening a user's file safely: regular files only, one clear line for every way it can fail; and
writing a file whole or not at all (written_whole).

A FIFO opened for reading blocks until someone writes to it, and /dev/zero never ends, so the
file is opened non-blocking and its type checked on the open descriptor (no race between a check
and the open) before a byte is read.
"""
import contextlib
import errno
import os
import secrets
import stat

from .errors import MixerError

_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]


@contextlib.contextmanager
def written_whole(path):
    """with written_whole(path) as tmp: write the file at tmp; when the block ends without an error, tmp
    takes path's name, else it is removed: a full disk or ^C never leaves half a file under the name,
    and a reader never sees one. tmp sits in path's folder (a rename within one file system), and path
    ends with the permissions of any new file (0o666 less the umask), whatever the writer gave tmp
    (safetensors writes its files 0o600) or the file it replaces had."""
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(100):  # a fresh name, made with O_EXCL (mkstemp would make the file private, 0o600)
        tmp = os.path.join(folder, f".numpy-mixer-{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as e:  # no such folder, no permission, a read-only file system ...
            raise MixerError(f"{path}: cannot write in {folder} ({e.strerror or e})") from None
    else:
        raise MixerError(f"{folder}: cannot make a temporary file name there")
    try:
        new_file_mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask, read without changing it
        yield tmp
        os.chmod(tmp, new_file_mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _a(what):
    return ("an " if what[:1].lower() in "aeiou" else "a ") + what


def open_regular(path, what="file"):
    """A binary file object for path, opened read-only, or a MixerError that names path and the reason.

    what: the kind of file expected, for the messages ("image", "safetensors file").
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MixerError(f"{path}: no such file - check the path") from None
    except IsADirectoryError:
        raise MixerError(f"{path}: is a directory, not {_a(what)}") from None
    except PermissionError:
        raise MixerError(f"{path}: permission denied; make the {what} readable (chmod, or its owner)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MixerError(f"{path}: symbolic link loop (too many levels of links)") from None
        raise MixerError(f"{path}: cannot open it ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise MixerError(f"{path}: is {_kind(mode)}, not {_a(what)}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: back to ordinary reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path, what="file", hint=""):
    """Nothing if path is a regular file (links followed), else a MixerError: the path, what it is, then hint.

    Only stat, never open: a FIFO would block. hint says what to do, e.g. " (--weights takes a .safetensors file)".
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MixerError(f"{path}: no such file{hint}") from None
    except (OSError, ValueError) as e:  # permission, a symlink loop, a NUL in the name ...
        reason = getattr(e, "strerror", None) or str(e)
        raise MixerError(f"{path}: cannot open ({reason}) - check the path and its permissions") from None
    if not stat.S_ISREG(mode):
        raise MixerError(f"{path}: is {_kind(mode)}, not {_a(what)}{hint}")


def _is_regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def image_extensions():
    """The file extensions Pillow can open: {".jpg", ".png", ...}"""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def image_files(paths, recursive=False):
    """[(image, None) to read, or (path, MixerError) that cannot be], in the order given: each folder replaced
    by the image files in it, sorted (with recursive, in its subfolders too, depth first); http(s) URLs kept
    as they are. Only regular files are listed (a FIFO would block forever), and macOS's AppleDouble
    companions (._name.jpg) are left out of folders."""
    from .fetch import is_url

    extensions = None
    items = []
    for path in paths:
        if is_url(path):
            items.append((path, None))
            continue
        path = os.fspath(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            items.append((path, MixerError(f"{path}: no such file - check the path")))
            continue
        except (OSError, ValueError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            items.append((path, MixerError(f"{path}: cannot open ({reason}) - check the path and its permissions")))
            continue
        if stat.S_ISREG(mode):
            items.append((path, None))
        elif stat.S_ISDIR(mode):
            extensions = extensions or image_extensions()
            try:
                inside = _folder_images(path, extensions, recursive)
            except OSError as e:
                items.append((path, MixerError(f"{path}: cannot list the folder ({e.strerror}) - check its permissions")))
                continue
            if not inside:
                items.append((path, MixerError(f"{path}: folder has no image files (looked for "
                                               f"{', '.join(sorted(extensions)[:6])}, ...) - pass image files")))
            items.extend((image, None) for image in inside)
        else:
            items.append((path, MixerError(f"{path}: is {_kind(mode)}, not an image file - pass an image file")))
    return items


def _folder_images(folder, extensions, recursive):
    """The image files in folder (and below it, with recursive), sorted by name, folders after their files."""
    names = sorted(os.listdir(folder))  # an unreadable top folder raises, a subfolder is skipped
    found = [os.path.join(folder, n) for n in names
             if os.path.splitext(n)[1].lower() in extensions and not n.startswith("._")
             and _is_regular(os.path.join(folder, n))]
    if recursive:
        for n in names:
            sub = os.path.join(folder, n)
            if os.path.isdir(sub) and not os.path.islink(sub):  # as os.walk: links to folders not followed
                try:
                    found.extend(_folder_images(sub, extensions, True))
                except OSError:
                    pass
    return found
