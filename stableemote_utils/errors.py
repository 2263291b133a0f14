"""The one exception type the course raises for problems a user can fix."""


class StableEmoteError(RuntimeError):
    """A problem with the user's input or environment, with a message that says what to do.

    The command line prints the message alone (no traceback) and exits with status 2. In a
    notebook, IPython shows it the same way: one line, ``StableEmoteError: <message>``, in
    place of a traceback through the course's helpers (IPython asks an exception for its
    own rendering through ``_render_traceback_``).
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]
