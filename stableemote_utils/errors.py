"""The one exception type the course raises for problems a user can fix."""


class StableEmoteError(RuntimeError):
    """A problem with the user's input or environment, with a message that says what to do.

    The command line prints the message alone (no traceback) and exits with status 2.
    """
