"""The one exception type that reaches the user as a readable line instead of a traceback."""


class MtbertError(Exception):
    """A problem the user can fix: a bad recipe key, a missing file, a malformed row.

    The message names what is wrong and where (file and line, or recipe key). The CLI prints it on
    one line and exits with status 2; nothing is written after it is raised.
    """


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (a library's may run to a page), or "" if it has none."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
