"""Process-wide MindSpore settings the package relies on.

Models run as compiled graphs in GRAPH_MODE. (`@jit` on a cell in PyNative mode would be faster to set up,
but in MindSpore 2.10 it freezes parameter values at compile time, so loaded or trained weights would
be ignored.) Functional ops called outside cells still run eagerly.
"""

from __future__ import annotations

import mindspore as ms

# the compiler's default call-depth limit (1000) is exceeded by the training graphs of 30+ layer models
RECURSION_LIMIT = 10000


def use_graph_mode() -> None:
    """Switch MindSpore to GRAPH_MODE (once; a no-op when it is already set)."""
    if ms.get_context("mode") != ms.GRAPH_MODE:
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_recursion_limit(RECURSION_LIMIT)
