"""Giving up root: the user a server started as root becomes once its socket is bound.

A CGI host runs other people's programs; running them as root makes every script bug
a root compromise. Apache and lighttpd switch to their configured user after binding,
and ``http.server --cgi`` ran scripts as ``nobody``. ``drop_privileges`` does the same
for the whole server, before any worker or script exists: the process sets its
groups, then its gid, then its uid (in that order: after ``setuid`` the other two are
no longer allowed), and checks that root cannot be had back.

Dropping in the server rather than in each script's child keeps ``vfork`` spawning:
CPython falls back to a full ``fork`` when asked to change the uid in the child.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_USER", "drop_privileges"]

DEFAULT_USER: Final = "nobody"


def _lookup(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise ValueError(f"no such user: {name!r}") from None


def drop_privileges(name: str | None, log: Callable[[str], None]) -> str:
    """Become user ``name`` if started as root (``None``: ``nobody``); the user's name.

    ``root`` (or ``0``) keeps root, with a warning. Not started as root, ``name``
    must be None or the current user: only root can change user.

    Raises:
        ValueError: no such user.
        PermissionError: a change of user without root, or one that did not hold.
    """
    if os.geteuid() != 0:
        current = pwd.getpwuid(os.geteuid())
        if name is not None and _lookup(name).pw_uid != current.pw_uid:
            raise PermissionError(f"user {name!r}: only a server started as root can change user")
        return current.pw_name
    entry = _lookup(DEFAULT_USER if name is None else name)
    if entry.pw_uid == 0:
        log("cgikit: warning: running as root, and so are the CGI scripts (user root)")
        return entry.pw_name
    os.setgroups([])
    if entry.pw_name:
        os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    try:
        os.setuid(0)
    except PermissionError:
        return entry.pw_name
    raise PermissionError(f"could not give up root: setuid(0) works as {entry.pw_name!r}")
