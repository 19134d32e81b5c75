"""The compiled entry points pass MindSpore's phase name down their cell tree only when it changes."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from pangu_zoo.models.graphs import GraphCell
from pangu_zoo.runtime import use_graph_mode


class CountingLeaf(nn.Cell):
    """x * w, counting the phase names it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.w = ms.Parameter(ms.Tensor(np.float32(2.0)), name="w")
        self.__dict__["phases"] = []

    @property
    def compile_phase(self):
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value):
        self.phases.append(value)
        self._compile_phase = value

    def construct(self, x):
        return ops.mul(x, self.w)


class Top(GraphCell):
    def __init__(self, leaf) -> None:
        super().__init__()
        self.leaf = leaf

    def construct(self, x):
        return self.leaf(x) + 1


def test_phase_walk_runs_once_per_new_phase_and_results_stay_right():
    use_graph_mode()
    leaf = CountingLeaf()
    top, other = Top(leaf), Top(leaf)  # two graphs over one shared cell, as the cache graphs share the backbone
    one, three = np.ones((1, 2), np.float32), np.ones((3, 2), np.float32)
    for _ in range(4):
        np.testing.assert_array_equal(top(ms.Tensor(one)).asnumpy(), np.full((1, 2), 3.0))
    assert len(leaf.phases) == 1  # repeated calls of a compiled shape walk nothing
    np.testing.assert_array_equal(other(ms.Tensor(one)).asnumpy(), np.full((1, 2), 3.0))
    np.testing.assert_array_equal(top(ms.Tensor(three)).asnumpy(), np.full((3, 2), 3.0))  # a new shape: compiled
    assert len(leaf.phases) == 3
    assert leaf.phases[-1] == top.compile_phase  # the graph being compiled passed its name down
    leaf.w.set_data(ms.Tensor(np.float32(5.0)))  # parameters are read at run time, not frozen in
    np.testing.assert_array_equal(top(ms.Tensor(one)).asnumpy(), np.full((1, 2), 6.0))
