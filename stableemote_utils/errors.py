"""The exception types the course raises for problems a user can fix, or that come from outside."""


class StableEmoteError(RuntimeError):
    """A problem with the user's input or environment, with a message that says what to do.

    The command line prints the message alone (no traceback) and exits with
    :attr:`exit_status` (2: the command was asked for something it cannot do). In a
    notebook, IPython shows it the same way: one line, ``StableEmoteError: <message>``, in
    place of a traceback through the course's helpers (IPython asks an exception for its
    own rendering through ``_render_traceback_``).
    """

    exit_status: int = 2

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class WriteFailedError(StableEmoteError):
    """A file could not be written (disk full, quota, read-only or vanished disk).

    Raised after the half-written file or folder has been removed; whatever was written
    before it (earlier checkpoints) is intact. The command line exits with status 1: the
    command was fine, the machine could not carry it out.
    """

    exit_status: int = 1

    def __init__(self, message: str, os_error: OSError) -> None:
        super().__init__(message)
        self.os_error = os_error  # what the system said (``errno``, ``strerror``)


class Terminated(KeyboardInterrupt):
    """SIGTERM asked the program to stop (a timeout, ``docker stop``, a batch scheduler).

    A kind of :class:`KeyboardInterrupt`, so whatever cleans up after Ctrl-C cleans up after
    it too; the command line exits with status 143 (128 + SIGTERM), as a shell reports a
    process that SIGTERM ended.
    """
