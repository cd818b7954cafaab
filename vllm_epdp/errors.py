"""The one exception type users see.

An ``EpdpError`` carries a single line that says what is wrong and what to do
about it. The CLI prints it as ``vllm-epdp: <message>`` on stderr and exits with
``exit_code`` (2: usage or environment problem, 1: a check failed, e.g. a patch
conflicts). Anything else escaping the CLI is a bug in vllm-epdp.
"""


class EpdpError(Exception):
    """A user-facing error: one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        # Keep it one line whatever the caller passed (e.g. git's stderr).
        super().__init__(" ".join(message.split("\n")).strip())
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return self.args[0]


class CheckFailed(EpdpError):
    """The tree is fine to look at, but the series does not apply/revert."""

    exit_code = 1
