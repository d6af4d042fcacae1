"""Output files written whole or not at all: `replacing`, which every writer of the apps', the
NoW evaluation's and the demo's files (and `wavefront.write`) goes through, most of them as
`open_replacing` (the temporary file opened)."""
from __future__ import annotations

import contextlib
import os
import re
import secrets


@contextlib.contextmanager
def replacing(path: str):
    """Yields a temporary name beside `path` to write its content to, and moves that file to
    `path` (os.replace: atomic within a folder) when the block ends without an error, so `path`
    is never half written (a full disk, an error or a crash mid-write): it is the complete new
    file or what was there before.

    The temporary name is `.<stem>.tmp-<8 hex><ext>` in path's folder (made if missing):
    hidden, and with path's extension, from which cv2 and imageio choose the format (np.save and
    np.savez add theirs to a name without it); the stem is cut so that the name fits the file
    system's limit wherever `path` does (14 characters more: a 240-character name was refused). On an error the temporary file is removed and
    the error passes on, an OSError about the temporary file renamed to be about `path`; only a
    killed process can leave the temporary file behind, never a partial `path`. As a write in
    place would, a `path` that is a symbolic link has the file it points to replaced (the link
    stays), and a file that is replaced keeps its permission bits.
    """
    target = os.path.realpath(path)  # through a symbolic link, as open(path, 'w') writes
    folder, name = os.path.split(target)
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    room = _name_max(folder) - len(".") - len(".tmp-") - 8 - len(ext)
    tmp = os.path.join(folder, f".{stem[:max(room, 1)]}.tmp-{secrets.token_hex(4)}{ext}")
    try:
        yield tmp
        if os.path.exists(target):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename == tmp:  # e.g. open(tmp) in a folder made read-only
            e.filename, e.filename2 = path, None
        raise


def _name_max(folder: str) -> int:
    """The longest file name the folder's file system takes (255 where it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no such limit
        return 255


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `replacing`'s temporary names (which a killed process can
    leave behind), so that a walk of the outputs can leave it out."""
    return re.fullmatch(r"\..*\.tmp-[0-9a-f]{8}[^/]*", name) is not None


@contextlib.contextmanager
def open_replacing(path: str, mode: str = "w", **open_kwargs):
    """`replacing(path)` with its temporary file opened (`open(tmp, mode, **open_kwargs)`): yields
    the file object, which is closed before the file is moved to `path`."""
    with replacing(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
