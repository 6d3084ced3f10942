"""Users and groups by name, through NSS (so LDAP and SSSD accounts work like local ones).

Configuration names groups; the kernel gives numbers. Every part of the server that turns one
into the other comes here, so a missing name is handled the same way everywhere: a uid or gid
without a name is shown as its number and never matches a configured group name.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def group_names(gids: Iterable[int]) -> set[str]:
    """The names of `gids`; a gid without a name is left out (it cannot match a name)."""
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def groups_of(uid: int) -> set[str]:
    """The names of every group `uid` belongs to (its primary group included)."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return group_names(os.getgrouplist(entry.pw_name, entry.pw_gid))
