"""A grouped step's rows that count their own steps (``fastopt.Groups``' ``steps_behind``).

Kept apart from ``_spec`` (which imports ``_core``) so that the backends can use it without an
import cycle.
"""


class Behind(dict):
    """The hyperparameters of a grouped step's row whose group counts ``behind`` fewer steps
    than its buffers (``fastopt.Groups``' ``steps_behind``): at the buffers' step ``t`` its
    scalars, options and reference step are those of step ``t - behind`` (:func:`own_step`).
    Made by the step driver after validation (``_step._Rows.at``); a plain dict otherwise."""
    __slots__ = ("behind",)

    def __init__(self, hp, behind):
        super().__init__(hp)
        self.behind = behind


def own_step(hp, t):
    """The step count the formulas of ``hp`` see at the buffers' step ``t``."""
    return t - hp.behind if type(hp) is Behind else t


def settled_step(rows):
    """The first step of the buffers from which every row of ``rows`` is past its own first
    step: the options (which depend on the step only through ``t == 1``) are then those of
    every later step; before it, each step's own (a plan cached by ``min(t, settled)``)."""
    return 2 + max((hp.behind for hp in rows if type(hp) is Behind), default=0)
