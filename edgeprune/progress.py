"""How a long step says what it is doing: ``progress(line)``, one line at a time (the CLI prints
each on stderr, the Python API logs them). Progress bars take counts instead: see
:data:`edgeprune.profile.runner.TimingProgress` and :data:`edgeprune.sensitivity.CutProgress`."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str], None]
