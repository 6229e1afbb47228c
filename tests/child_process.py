"""Child processes for the crash tests: start one, read what it prints, SIGKILL it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

REPO = Path(__file__).resolve().parents[1]
DONE = "DONE"
"""What every child prints once its sagas have all ended."""


def sigkill(process: Process) -> None:
    """SIGKILL `process` unless it has ended, without reaping it.

    `Popen.kill` polls (waitpid) before signalling; when the child has just
    exited on its own that poll reaps it, and asyncio's watcher thread, blocked
    in its own waitpid, then reports exit code 255. `os.kill` on a zombie is
    harmless, and only the watcher reaps.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # already reaped
            os.kill(process.pid, signal.SIGKILL)


@dataclass
class Child:
    process: Process
    stderr_path: Path
    stdout: BufferedByteReceiveStream
    timeout: float
    """Bound on waiting for a line the child prints."""
    seen: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def expect(self, line: str) -> None:
        """Wait until the child prints `line` (fails with its stderr if it dies first)."""
        with anyio.fail_after(self.timeout):
            while line not in self.seen:
                try:
                    raw = await self.stdout.receive_until(b"\n", 4096)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    await self.process.wait()
                    pytest.fail(
                        f"child exited ({self.process.returncode}) before printing {line!r}; "
                        f"stdout {self.seen}, stderr:\n{self.stderr()[-4000:]}"
                    )
                self.seen.append(raw.decode().strip())

    async def kill(self) -> bool:
        """SIGKILL the child unless it already ended cleanly; return whether it was killed."""
        sigkill(self.process)
        code = await self.process.wait()
        assert code in (0, -signal.SIGKILL), f"child failed ({code}):\n{self.stderr()[-4000:]}"
        if code == 0:
            await self.expect(DONE)
        return code == -signal.SIGKILL


@asynccontextmanager
async def open_child(
    command: list[str], stderr_path: Path, *, timeout: float
) -> AsyncIterator[Child]:
    """Run `command` from the repository (stderr to `stderr_path`); kill it on exit."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            command, stdout=subprocess.PIPE, stderr=stderr, cwd=REPO, env=env
        )
        async with process:
            assert process.stdout is not None
            try:
                yield Child(
                    process, stderr_path, BufferedByteReceiveStream(process.stdout), timeout
                )
            finally:
                sigkill(process)
                with anyio.CancelScope(shield=True):
                    await process.wait()
