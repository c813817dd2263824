"""The errors of commands run on a node, apart from the SSH layer that raises them: the GPU
parsers (and a GPU check run on a bare machine, bench/gpu_check.sh) import them without
asyncssh."""

from __future__ import annotations


class SshError(Exception):
    """Something could not be done on a node; the message is one line naming the node."""


class CommandTimedOut(SshError):
    """A command or transfer ran past its time; what a streamed command printed until then is
    kept in ``stdout`` and ``stderr``."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class CommandFailed(SshError):
    """A command ran to its end and exited non-zero: what it printed is kept for the caller.

    Callers that must tell the tool's own refusals from other failures (nvidia-smi's "not a
    valid field" answer, for one) read ``exit_status``, ``stdout`` and ``stderr``.
    """

    def __init__(self, node: str, command: str, exit_status: int, stdout: str, stderr: str) -> None:
        self.node = node
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{node}: `{command}` exited {exit_status}: {_detail(stdout, stderr)}")


def _detail(stdout: str, stderr: str) -> str:
    """The line that says why a command failed: stderr's last, else stdout's first."""
    err = [line.strip() for line in stderr.splitlines() if line.strip()]
    if err:
        return err[-1]
    out = [line.strip() for line in stdout.splitlines() if line.strip()]
    return out[0] if out else "no output"
