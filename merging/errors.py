"""One exception family, so callers (CLI, UI) can show a clear message instead of a traceback."""


class MergescopeError(ValueError):
    """Bad input or an unusable model pair. The message says what is wrong and where."""


class CheckpointError(MergescopeError):
    """A safetensors file or folder that cannot be read: missing, corrupt, or inconsistent."""


class LayoutError(MergescopeError):
    """The VLM and the donor cannot be mapped onto each other (e.g. tensor shapes disagree)."""


class PlanError(MergescopeError):
    """A merge plan that does not validate: unknown component or method, α out of range, ..."""
