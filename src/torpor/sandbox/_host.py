"""Host-side primitives the sandbox stands on: privileges, mounts, directory trees."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .._config import Settings
from .._errors import SandboxError

__all__ = [
    "become_subreaper",
    "copy_tree",
    "has_sys_admin",
    "hidden_paths",
    "mount",
    "mounts_under",
    "prepare_root_layer",
    "remove_directory",
    "require_privileges",
    "tree_bytes",
    "unmount_all",
    "visible_paths",
]

_MNT_DETACH = 2
_PR_SET_CHILD_SUBREAPER = 36
_CAP_SYS_ADMIN = 21
_libc = ctypes.CDLL(None, use_errno=True)

# The sandbox's /dev: these nodes, as a directory of its root layer rather than a tmpfs, so
# that CRIU has no tmpfs to archive on every dump and unpack on every restore.
_DEVICES = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0)]  # fmt: skip
_DEV_LINKS = [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]  # fmt: skip


def has_sys_admin() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (mounts, namespaces, CRIU all need it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def require_privileges(sandbox_id: str) -> None:
    """Raise a SandboxError that says what to do unless this process may run sandboxes."""
    if not has_sys_admin():
        raise SandboxError(
            sandbox_id,
            f"this process (uid {os.geteuid()}) lacks CAP_SYS_ADMIN, which sandboxes need for "
            "their mounts and namespaces and CRIU needs to checkpoint and restore",
            "run torpor as root (in a container: --privileged, or at least --cap-add "
            "SYS_ADMIN,SYS_PTRACE,CHECKPOINT_RESTORE); `torpor doctor` checks this",
        )


# What a sandbox does not see of its base root. Directories listed here are replaced by empty
# ones (of the same owner and mode), files by whiteouts, unless a path the sandbox must read
# (its Python, its code, a shared path) lies below: then only the other entries are hidden.
_HIDDEN = (
    "root", "home",  # users' files: keys, tokens, shell histories, other projects
    "etc/shadow", "etc/shadow-", "etc/gshadow", "etc/gshadow-", "etc/ssh", "etc/ssl/private",
    "etc/sudoers", "etc/sudoers.d", "etc/security/opasswd",
    "run",  # daemons' sockets (PostgreSQL's, D-Bus's), pid files
    "var/backups", "var/log", "var/mail", "var/spool", "var/tmp",
)  # fmt: skip
# /var/lib holds services' data (databases: PostgreSQL's, MySQL's...): all of it is hidden
# but the package managers' state, which programs such as pip and dpkg-query read.
_VAR_LIB_VISIBLE = ("apt", "dpkg", "misc", "python", "ucf")
# Hidden directories that stay as empty ones (programs expect them); others just vanish.
_EMPTIED = {"root", "home", "run", "var/backups", "var/lib", "var/log", "var/mail", "var/spool",
            "var/tmp"}  # fmt: skip


def hidden_paths() -> list[str]:
    """The host paths a sandbox launched by this process must not see, besides `_HIDDEN`:
    torpor's home (the store, keys, blobs, other sandboxes), and the store's SQLite file and
    blob directory when they live elsewhere, as this process's environment configures them."""
    settings = Settings.from_env()
    paths = [str(settings.home)]
    database = settings.database_url
    if database.startswith("sqlite://") and len(database) > len("sqlite://"):
        db = database[len("sqlite://") :].split("?")[0]
        paths += [db, db + "-wal", db + "-shm", db + "-journal"]
    if settings.blob_url.startswith("file://"):
        paths.append(settings.blob_url[len("file://") :])
    return paths


def visible_paths(share: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """What a sandbox must still see below hidden paths: ``share``, this process's Python
    (prefix, executable, import path: the sandbox's runner is started from it) and the
    target of ``/etc/resolv.conf``."""
    paths = [*map(str, share), sys.prefix, sys.base_prefix, sys.exec_prefix, sys.executable]
    paths += [p for p in sys.path if p]
    paths.append("/etc/resolv.conf")
    return [os.path.realpath(p) for p in paths]


def prepare_root_layer(
    upper: Path, base: Path = Path("/"), keep: Sequence[str] = (),
    share: Sequence[str | os.PathLike[str]] = (), hide: Sequence[str | os.PathLike[str]] = (),
) -> None:  # fmt: skip
    """Give a new root layer its private ``/dev`` (device nodes only) and ``/tmp``, and hide
    what the sandbox must not see of ``base`` (`hidden_paths`).

    ``/dev`` is an opaque directory: overlayfs hides the base root's own below it. So is
    ``/tmp``, unless ``keep`` names entries of the base's ``/tmp`` the command needs (its
    Python environment, say, when the project lives under ``/tmp``): then every other
    entry present now is hidden by a whiteout instead, and the kept ones stay readable
    (copy-on-write: writes to them stay in the sandbox). ``share`` and this process's
    Python stay visible even below a hidden directory (`visible_paths`); ``hide`` adds
    paths to hide (the launcher's own TORPOR_HOME when its settings do not come from the
    environment).
    """
    dev = upper / "dev"
    for directory, mode in ((dev, 0o755), (dev / "shm", 0o1777), (upper / "tmp", 0o1777)):
        directory.mkdir()
        directory.chmod(mode)  # mkdir obeys the umask
    os.setxattr(dev, "trusted.overlay.opaque", b"y")
    if not keep:
        os.setxattr(upper / "tmp", "trusted.overlay.opaque", b"y")
    else:
        try:
            present = os.listdir(base / "tmp")
        except OSError:
            present = []
        for name in present:
            if name not in keep:
                os.mknod(upper / "tmp" / name, stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    for name, major, minor in _DEVICES:
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)
    for name, target in _DEV_LINKS:
        os.symlink(target, dev / name)
    visible = [p.lstrip("/") for p in visible_paths(share)]
    visible += [f"var/lib/{name}" for name in _VAR_LIB_VISIBLE]
    own = [str(upper.parent)]  # the sandbox's own directory (its layers, run/, workspace/)
    if upper.parent.parent.name == "sandboxes":
        own.append(str(upper.parent.parent))  # ... and the other sandboxes beside it
    for path in [*_HIDDEN, "var/lib", *hidden_paths(), *map(str, hide), *own]:
        rel = os.path.normpath(path).lstrip("/")
        _hide(upper, base, rel, visible, empty_dir=path in _EMPTIED)


def _hide(upper: Path, base: Path, rel: str, visible: list[str], empty_dir: bool) -> None:
    """Hide ``base/rel`` in the root layer ``upper``, but for the ``visible`` paths below it.

    A directory with nothing visible below becomes an empty opaque directory when
    ``empty_dir`` (programs expect /root or /run to exist) and a whiteout otherwise; one
    with visible paths below is kept, with its other entries hidden one by one.
    """
    lower = base / rel
    if not rel or not os.path.lexists(lower) or _hidden_already(upper, base, rel):
        return
    below = [v for v in visible if v == rel or v.startswith(rel + "/")]
    if rel in below:
        return
    _mirror_parents(upper, base, rel, traverse=bool(below))
    target = upper / rel
    if os.path.lexists(target):
        return  # made already (/dev, /tmp)
    st = os.lstat(lower)
    if below and stat.S_ISDIR(st.st_mode):
        _mirror_dir(lower, target, traverse=True)
        _hide_entries(str(upper), str(base), rel, below)
    elif empty_dir and stat.S_ISDIR(st.st_mode):
        _mirror_dir(lower, target, traverse=False)
        os.setxattr(target, "trusted.overlay.opaque", b"y")
    else:
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))  # a whiteout


def _hide_entries(upper: str, base: str, rel: str, visible: list[str]) -> None:
    """Hide every entry of the directory ``rel`` (mirrored in ``upper`` already) but those
    on the way to ``visible`` paths, recursively. Strings, not Paths: /root may hold
    hundreds of entries, and this runs on every launch."""
    for name in os.listdir(f"{base}/{rel}"):
        path = f"{rel}/{name}"
        below = [v for v in visible if v == path or v.startswith(path + "/")]
        if path in below:
            continue
        lower, target = f"{base}/{path}", f"{upper}/{path}"
        if below and os.path.isdir(lower) and not os.path.islink(lower):
            _mirror_dir(Path(lower), Path(target), traverse=True)
            _hide_entries(upper, base, path, below)
        elif not below:
            os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))  # a whiteout


def _hidden_already(upper: Path, base: Path, rel: str) -> bool:
    """Whether an ancestor of ``rel`` is hidden in ``upper`` already (a whiteout or opaque
    directory), or is a symbolic link in ``base`` (/var/run: its target is hidden instead)."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        ancestor = "/".join(parts[:i])
        if os.path.islink(base / ancestor):
            return True
        try:
            st = os.lstat(upper / ancestor)
        except FileNotFoundError:
            continue
        if stat.S_ISCHR(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return True
        try:
            if os.getxattr(upper / ancestor, "trusted.overlay.opaque") == b"y":
                return True
        except OSError:
            pass
    return False


def _mirror_parents(upper: Path, base: Path, rel: str, traverse: bool) -> None:
    parts = rel.split("/")
    for i in range(1, len(parts)):
        ancestor = "/".join(parts[:i])
        if not os.path.lexists(upper / ancestor):
            _mirror_dir(base / ancestor, upper / ancestor, traverse)


def _mirror_dir(lower: Path, target: Path, traverse: bool) -> None:
    """A directory of the root layer with ``lower``'s owner and mode (which it then shows
    for the merged directory); with ``traverse``, searchable by all, so that the sandbox's
    command, which holds no CAP_DAC_OVERRIDE, reaches the visible paths below (a project
    in another user's home)."""
    st = os.stat(lower)
    target.mkdir(mode=0o700)
    os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, stat.S_IMODE(st.st_mode) | (0o111 if traverse else 0))


def mount(sandbox_id: str, source: str, target: Path, fstype: str, data: str) -> None:
    """mount(2) with no flags; raises SandboxError naming the target."""
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, data.encode()):
        err = ctypes.get_errno()
        raise SandboxError(
            sandbox_id,
            f"cannot mount {fstype} on {target} ({data}): {os.strerror(err)}",
            "run as root on a kernel with overlayfs (`torpor doctor` checks both)",
        )


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    top = str(directory)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(directory: Path) -> None:
    """Unmount everything at or below ``directory``; busy mounts are detached lazily."""
    for point in mounts_under(directory):
        if _libc.umount2(point.encode(), 0):
            _libc.umount2(point.encode(), _MNT_DETACH)


def remove_directory(sandbox_id: str, directory: Path) -> None:
    """Unmount, then delete ``directory``; refuses to delete through a mount that stayed."""
    unmount_all(directory)
    left = mounts_under(directory)
    if left:
        # Deleting through a mount point would delete the mounted files (a workspace).
        raise SandboxError(
            sandbox_id,
            f"{left[0]} is still mounted, so {directory} was not deleted",
            f"unmount it (umount -l {left[0]}) and run `torpor doctor --cleanup`",
        )
    shutil.rmtree(directory, ignore_errors=True)


def become_subreaper() -> None:
    """Adopt orphaned descendants: a restored tree's parent (criu) exits at once, and only a
    subreaper can then wait for it; otherwise the machine's init would, slowly."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


# Trees up to this size are copied in-process (about 1 ms for a fresh sandbox's root layer);
# larger ones, or ones with hard links, by `cp -a` (5-10 ms just to start it).
_SMALL_TREE_ENTRIES = 2000
_SMALL_TREE_BYTES = 32 << 20


def copy_tree(sandbox_id: str, sources: list[Path], target: Path) -> None:
    """Copy like ``cp -a``: of ``sources`` into the existing directory ``target``, or of one
    source to ``target`` as a new name when ``target`` does not exist.

    Keeps owners, modes, times, device nodes, and the overlay's whiteouts and xattrs; shares
    blocks where the filesystem can (reflinks).
    """
    into = target.is_dir()
    pairs = [(src, target / src.name if into else target) for src in sources]
    try:
        if all(_is_small_tree(src) for src, _ in pairs):
            for src, dst in pairs:
                _copy_small_tree(src, dst)
            return
    except OSError as exc:
        raise SandboxError(
            sandbox_id, f"cannot copy {src} to {dst}: {exc}", "check free space and permissions"
        ) from None
    cmd = [
        "cp",
        "-a",
        "--reflink=auto",
        "--",
        *map(str, sources),
        f"{target}/" if into else str(target),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SandboxError(
            sandbox_id,
            f"cannot copy {', '.join(map(str, sources))} to {target}: {proc.stderr.strip()}",
            "check free space and permissions there",
        )


def _is_small_tree(root: Path) -> bool:
    entries, size = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            entries += 1
            size += st.st_size
            hard_linked = not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
            if hard_linked or entries > _SMALL_TREE_ENTRIES or size > _SMALL_TREE_BYTES:
                return False
    return True


def _copy_small_tree(src: Path, dst: Path) -> None:
    st = os.lstat(src)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dst, 0o700)
        for entry in os.scandir(src):
            _copy_small_tree(Path(entry.path), dst / entry.name)
    elif stat.S_ISREG(st.st_mode):
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            try:
                left = st.st_size
                while left > 0:
                    done = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                    if done == 0:
                        break
                    left -= done
            except OSError as exc:
                # Across filesystems (a restored sandbox's layers live in /dev/shm) the
                # kernel may refuse the in-kernel copy: copy through userspace instead.
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                fin.seek(0)
                fout.seek(0)
                fout.truncate()
                shutil.copyfileobj(fin, fout, 1 << 20)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    else:  # device nodes (the overlay's whiteouts are 0/0 character devices), fifos, sockets
        os.mknod(dst, st.st_mode, st.st_rdev)
    for name in os.listxattr(src, follow_symlinks=False):
        value = os.getxattr(src, name, follow_symlinks=False)
        os.setxattr(dst, name, value, follow_symlinks=False)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, mode)  # after chown, which clears set-uid bits
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def tree_bytes(directory: Path) -> int:
    """Apparent size of the regular files below ``directory``."""
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
