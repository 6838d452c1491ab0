"""Memory free for new use on this machine, as a process in a container sees it: Linux's ``MemAvailable``, within
the memory limit of this process's control group and of each group above it (cgroup v1 and v2).

A container's limit sits on its own group (Docker, Kubernetes, a Hugging Face Space), a service's on a group of
systemd's, sometimes on a parent of the group the process is in; the machine's ``MemAvailable`` knows none of them.
A group's free memory is its limit less what it uses, the file cache it could drop first (inactive files) not
counted as used, as ``docker stats`` counts it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def available_memory(proc: str | Path = "/proc") -> int | None:
    """Bytes free for new use: ``MemAvailable`` from ``proc``/meminfo, lowered to the smallest room left under a
    cgroup limit (``cgroup_free``); without ``/proc``, the free physical pages. None when nothing says; never
    raises."""
    proc = Path(proc)
    found = []
    try:
        with open(proc / "meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    limited = cgroup_free(proc)
    if limited is not None:
        found.append(limited)
    return max(0, min(found)) if found else None


def cgroup_free(proc: str | Path = "/proc") -> int | None:
    """The least room left under any memory limit of this process's groups and their ancestors, in every cgroup
    hierarchy mounted that has the memory controller; None where no limit is set or nothing can be read."""
    proc = Path(proc)
    try:
        groups = _groups(_read(proc / "self" / "cgroup"))
        mounts = _read(proc / "self" / "mountinfo")
    except OSError:
        return None
    room = []
    for version, root, mount_point in _memory_mounts(mounts):
        path = groups.get(version)
        if path is None:
            continue
        folder = mount_point
        if path == root or path.startswith(root.rstrip("/") + "/"):
            folder = mount_point / os.path.relpath(path, root)
        while True:
            left = _room(folder, version)
            if left is not None:
                room.append(left)
            if folder == mount_point or mount_point not in folder.parents:
                break
            folder = folder.parent
    return min(room) if room else None


def _read(path: Path) -> str:
    """A file of /proc or /sys as text; paths in it that are not UTF-8 (a mount point elsewhere) kept as bytes."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _groups(text: str) -> dict[int, str]:
    """This process's group per hierarchy version, from ``/proc/self/cgroup``: v2's ``0::path``, v1's memory line."""
    groups = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        number, controllers, path = parts
        if number == "0" and controllers == "":
            groups[2] = path
        elif "memory" in controllers.split(","):
            groups[1] = path
    return groups


def _memory_mounts(text: str) -> list[tuple[int, str, Path]]:
    """``(version, root in the hierarchy, mount point)`` of each cgroup hierarchy with the memory controller, from
    ``/proc/self/mountinfo`` (v2 is listed whatever its controllers: a group without memory files is skipped)."""
    found = []
    for line in text.splitlines():
        left, separator, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not separator or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), Path(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            found.append((2, root, mount_point))
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            found.append((1, root, mount_point))
    return found


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as a backslash and three octal digits."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _room(folder: Path, version: int) -> int | None:
    """Bytes left under ``folder``'s own limit (its inactive file cache counted as free), or None without one."""
    names = ("memory.max", "memory.current", "inactive_file")
    if version == 1:
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    try:
        limit = _read(folder / names[0]).strip()
        if not limit.isdigit() or int(limit) >= NO_LIMIT:
            return None
        used = int(_read(folder / names[1]))
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in _read(folder / "memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == names[2]:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(limit) - max(0, used - inactive))
