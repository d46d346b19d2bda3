"""ZeroGPU (Hugging Face Spaces' shared GPUs, Gradio SDK): every model call inside `spaces.GPU`.

On a ZeroGPU Space the `spaces` package runs each `@spaces.GPU` function in a worker process forked from
the app (the GPU is attached only there), pickling its arguments and result across; a worker may serve
several calls, or a fresh one may start from the app's own (original) weights. What Mergescope does
about it, all in `merging.run.worker`:
- every weight-touching job — put the donor in, re-apply the job's plan, run the forward pass — is one
  call of `on_gpu(...)` (the plan travels with every call; a worker that finds itself in a new process
  first returns its weights to the VLM's, `ModelWorker`'s process check, then applies the plan);
- jobs are picklable objects (`PairJob`), not closures; answers stream only off ZeroGPU (a call's
  result crosses back whole);
- model work is serialised by the model worker's single thread, and the answers cache stays in the app's
  process (the Answerer looks up and stores around the call), so a worker's exit loses nothing;
- sweeps and searches are capped on ZeroGPU as in a public demo (ui/explorer.py), one batch per call,
  so each call stays within `GPU_SECONDS`.
Without the `spaces` package, or off a ZeroGPU Space (the package's own check, SPACES_ZERO_GPU), `on_gpu`
is `spaces.GPU`'s no-op path or the function itself: nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

try:  # the optional extra of a ZeroGPU Space (pip install spaces)
    import spaces
except ImportError:  # pragma: no cover - installed with the test extras
    spaces = None

F = TypeVar("F", bound=Callable)
GPU_SECONDS = 60  # what one call may take (a batch of answers, one apply); ZeroGPU's default is 60 s
ON_ZEROGPU = spaces is not None and spaces.config.Config.zero_gpu


def on_gpu(fn: F) -> F:
    """`fn` wrapped by `spaces.GPU(duration=GPU_SECONDS)` when the package is importable (a no-op off a
    ZeroGPU Space: the package returns `fn` itself), else `fn`."""
    return spaces.GPU(duration=GPU_SECONDS)(fn) if spaces is not None else fn


@dataclass(frozen=True)
class PairJob:
    """A model job as plain data: `fn(engine.pair, *args)` — picklable where `fn` is a module-level
    function and `args` are (questions, PIL images, settings), unlike a closure."""

    fn: Callable[..., Any]
    args: tuple = ()

    def __call__(self, engine) -> Any:
        return self.fn(engine.pair, *self.args)
