"""Thin edge around `apparmor_parser`: compile-check generated profiles (blocking I/O).

Always compiles against the kernel-features file pinned in the package (`-M`), never the
host's: without it, on a host with no AppArmor kernel, `--Werror=rule-not-enforced` fails
on abstractions/base, and with the parser's built-in default ABI network rules are
silently dropped. `--warn/--Werror=rule-not-enforced` turn any rule the kernel would not
enforce (fine-grained unix, dbus) into an error instead of a silent no-op.

Call from threads or an executor (subprocess.run blocks); never from the event loop.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from varmor.profile import NODE_LOCAL_INCLUDE, node_local_include

DEFAULT_PARSER = "/sbin/apparmor_parser"
# Devices used for the node-local include when compile-checking away from a node.
SAMPLE_DISK_DEVICES = ("nvme0n1", "nvme0n1p1", "sda", "sda1", "vda", "vda1")
COMPILE_FLAGS = ("-Q", "-K", "--warn=rule-not-enforced", "--Werror=rule-not-enforced")


class ParserNotFoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    message: str


def find_parser() -> str:
    found = shutil.which("apparmor_parser") or (DEFAULT_PARSER if Path(DEFAULT_PARSER).exists() else None)
    if not found:
        raise ParserNotFoundError("apparmor_parser not found (install the 'apparmor' package)")
    return found


def features_file() -> Path:
    """The pinned kernel-features file (a copy of Debian's apparmor-features, which the
    Debian 6.1 kernel's own features are a compatible superset of)."""
    path = Path(str(resources.files("varmor").joinpath("data", "apparmor-features")))
    if not path.is_file():
        raise FileNotFoundError(f"pinned AppArmor features file missing: {path}")
    return path


def compile_command(files: Sequence[Path | str], include_dirs: Sequence[Path | str] = ()) -> list[str]:
    cmd = [find_parser(), "--config-file", "/dev/null", *COMPILE_FLAGS]
    cmd += ["-M", str(features_file())]
    for directory in include_dirs:
        cmd += ["-I", str(directory)]
    return cmd + [str(f) for f in files]


def write_sample_include(directory: Path) -> Path:
    """Write `<directory>/varmor/node-local` with sample devices; returns `directory`."""
    target = directory / NODE_LOCAL_INCLUDE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(node_local_include(SAMPLE_DISK_DEVICES))
    return directory


def _run(files: Sequence[Path], include_dirs: Sequence[Path | str], timeout: float) -> tuple[int, str]:
    proc = subprocess.run(
        compile_command(files, include_dirs),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, (proc.stderr + proc.stdout).strip()


def _blame(stderr: str, path: Path) -> str:
    """The parser's lines about one file (it names files by path)."""
    return "\n".join(line for line in stderr.splitlines() if str(path) in line)


def compile_check(
    texts: Mapping[str, str],
    include_dirs: Sequence[Path | str] | None = None,
    *,
    timeout: float = 120.0,
) -> dict[str, CompileResult]:
    """Compile each profile text (keyed by any name) under the pinned ABI, in as few
    parser runs as possible. When a batch fails, the files the parser names are failed
    with its messages and the rest are re-checked, so every failure lands on the right
    profile. `include_dirs` defaults to a directory holding a sample node-local include."""
    results: dict[str, CompileResult] = {}
    with tempfile.TemporaryDirectory(prefix="varmor-compile-") as tmp:
        root = Path(tmp)
        dirs: Sequence[Path | str] = include_dirs if include_dirs is not None else [write_sample_include(root / "inc")]
        paths: dict[Path, str] = {}
        for i, (name, text) in enumerate(texts.items()):
            path = root / f"p{i:05d}.aa"
            path.write_text(text)
            paths[path] = name
        pending = list(paths)
        while pending:
            rc, output = _run(pending, dirs, timeout)
            if rc == 0:
                results.update({paths[p]: CompileResult(True, "") for p in pending})
                break
            blamed = [p for p in pending if str(p) in output]
            if not blamed:
                # Output names no file (e.g. an include error): fall back to one by one.
                for p in pending:
                    rc1, out1 = _run([p], dirs, timeout)
                    results[paths[p]] = CompileResult(rc1 == 0, _rename(out1, p, paths[p]))
                break
            for p in blamed:
                message = _blame(output, p)
                if len(blamed) > 1:
                    # Parallel compiles can interleave lines: re-check alone to be exact.
                    rc1, message = _run([p], dirs, timeout)
                    if rc1 == 0:
                        results[paths[p]] = CompileResult(True, "")
                        continue
                results[paths[p]] = CompileResult(False, _rename(message, p, paths[p]))
            pending = [p for p in pending if p not in blamed]
    return {name: results[name] for name in texts}


def _rename(message: str, path: Path, name: str) -> str:
    return message.replace(str(path), name).strip()
