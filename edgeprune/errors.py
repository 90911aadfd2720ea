"""The one exception type that the CLI turns into a single line on stderr and exit code 2."""


class EdgepruneError(Exception):
    """A user-facing error: bad input, unsupported model, failed check.

    The message must make sense on its own, on one line, without a traceback.
    """


class TraceError(EdgepruneError):
    """The dependency-graph tracer could not follow the model's forward pass."""


def describe(exc: BaseException, limit: int = 300) -> str:
    r"""An exception as one line: its type and the first line of its message (with the next one
    when the first only introduces it).

    >>> describe(RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch for fc.weight"))
    'RuntimeError: Error(s) in loading state_dict: size mismatch for fc.weight'
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reason = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} {lines[1]}"
    return f"{type(exc).__name__}: {reason}"[:limit]
