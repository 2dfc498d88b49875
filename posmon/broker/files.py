"""Files the broker reads, written so that it never reads half of one or a secret leaks."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def write_atomically(
    path: Path, data: bytes, mode: int, *, owner: tuple[int, int] | None = None
) -> None:
    """Replace `path` with `data`: created under a temporary name in the same folder with
    its final mode (and owner) before a byte is written, flushed to disk, then renamed.

    A reader (mosquitto reloading on SIGHUP) sees the old file or the new one, and a secret
    is never readable by others, not even for a moment. The new file keeps the owner of
    the one it replaces unless `owner` (uid, gid) says otherwise: mosquitto re-reads its
    password and ACL files as the user it runs as, and a file that became root's 0600
    on re-provisioning would lock every client out at the next reload.
    """
    if owner is None and path.exists():
        stat = path.stat()
        owner = (stat.st_uid, stat.st_gid)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, *owner)
            except PermissionError:
                logger.warning(
                    "%s: cannot give it to uid %d gid %d (not root); it is now owned by uid %d",
                    path,
                    owner[0],
                    owner[1],
                    os.geteuid(),
                )
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
