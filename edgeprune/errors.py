"""The one exception type that the CLI turns into a single line on stderr and exit code 2."""


class EdgepruneError(Exception):
    """A user-facing error: bad input, unsupported model, failed check.

    The message must make sense on its own, on one line, without a traceback.
    """


class TraceError(EdgepruneError):
    """The dependency-graph tracer could not follow the model's forward pass."""
