"""Learning-rate (and other hyperparameter) schedules: plain callables ``schedule(step) ->
float``, where ``step`` is the number of completed steps (``buffers.step``), so the first
update uses ``schedule(0)``.

Each is the closed form of its ``torch.optim.lr_scheduler`` counterpart (``tests/
test_schedules.py`` compares them over 1000 steps; torch computes most of them recursively, so
they agree to rounding, checked at 1e-12 relative):

=================================  ================================================
fastopt                            torch.optim.lr_scheduler
=================================  ================================================
``constant(value)``                (no scheduler)
``linear_warmup(value, steps,      ``LinearLR(start_factor, 1.0, total_iters=steps)``
start_factor)``
``step_decay(value, step_size,     ``StepLR(step_size, gamma)``
gamma)``
``multi_step(value, milestones,    ``MultiStepLR(milestones, gamma)``
gamma)``
``exponential(value, gamma)``      ``ExponentialLR(gamma)``
``cosine(value, total, floor,      ``CosineAnnealingLR(T_max, eta_min)``, after a
warmup)``                          ``LinearLR`` warmup (``SequentialLR``) if ``warmup``;
                                   torch's rises again after ``T_max``, fastopt's
                                   stays at ``floor``
``polynomial(value, total,         ``PolynomialLR(total_iters, power)``
power)``
``one_cycle(max_value, total,      ``OneCycleLR`` (cosine annealing, two phases)
pct_start, div_factor,
final_div_factor)``
``warmup_stable_decay(value,       linear warmup, constant, linear decay to ``floor``
warmup, stable, decay, floor)``    (``SequentialLR`` of ``LinearLR``, ``ConstantLR``,
                                   ``LinearLR``)
=================================  ================================================

Every schedule validates its arguments when it is built (``TypeError`` / ``ValueError`` naming
the argument, as the step functions do) and returns Python floats.
"""
import bisect
import math
import numbers

from ._core import check_real as _real

__all__ = ["constant", "linear_warmup", "step_decay", "multi_step", "exponential", "cosine",
           "polynomial", "one_cycle", "warmup_stable_decay", "Schedule"]


def _count(name, x, low=1):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {x!r}")
    return int(x)


class Schedule:
    """A named schedule: ``schedule(step)`` gives the value for the update that follows
    ``step`` completed steps."""

    def __init__(self, name, fn, **params):
        self.name, self._fn, self.params = name, fn, params

    def __call__(self, step):
        step = _count("step", step, low=0)
        return float(self._fn(step))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def __reduce__(self):
        # pickle (multiprocessing, saved configs): this module's schedules are made again
        # from their arguments; a schedule of the caller's own function pickles that function
        if self.name in __all__ and self.name != "Schedule":
            return (_make, (self.name, dict(self.params)))
        return (_custom, (self.name, self._fn, dict(self.params)))


def _make(name, params):
    return globals()[name](**params)


def _custom(name, fn, params):
    return Schedule(name, fn, **params)


def constant(value):
    value = _real("value", value)
    return Schedule("constant", lambda t: value, value=value)


def linear_warmup(value, steps, start_factor=1.0 / 3):
    """``value * (start_factor + (1 - start_factor) * min(t, steps) / steps)``."""
    value = _real("value", value)
    steps = _count("steps", steps)
    start_factor = _real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)

    def fn(t):
        return value * (start_factor + (1.0 - start_factor) * min(t, steps) / steps)
    return Schedule("linear_warmup", fn, value=value, steps=steps, start_factor=start_factor)


def step_decay(value, step_size, gamma=0.1):
    """``value * gamma ** (t // step_size)``."""
    value = _real("value", value)
    step_size = _count("step_size", step_size)
    gamma = _real("gamma", gamma, low=0.0)
    return Schedule("step_decay", lambda t: value * gamma ** (t // step_size), value=value,
                    step_size=step_size, gamma=gamma)


def multi_step(value, milestones, gamma=0.1):
    """``value * gamma ** (number of milestones <= t)``."""
    value = _real("value", value)
    ms = sorted(_count("milestone", m) for m in milestones)
    gamma = _real("gamma", gamma, low=0.0)
    return Schedule("multi_step", lambda t: value * gamma ** bisect.bisect_right(ms, t),
                    value=value, milestones=ms, gamma=gamma)


def exponential(value, gamma):
    """``value * gamma ** t``."""
    value = _real("value", value)
    gamma = _real("gamma", gamma, low=0.0)
    return Schedule("exponential", lambda t: value * gamma ** t, value=value, gamma=gamma)


def cosine(value, total, floor=0.0, warmup=0, warmup_start_factor=1.0 / 3):
    """A linear warmup over ``warmup`` steps, then
    ``floor + (value - floor) * (1 + cos(pi * min(s, total) / total)) / 2`` with ``s`` the
    steps since the warmup ended (constant at ``floor`` after ``total``)."""
    value = _real("value", value)
    total = _count("total", total)
    floor = _real("floor", floor)
    warmup = _count("warmup", warmup, low=0)
    warmup_start_factor = _real("warmup_start_factor", warmup_start_factor, low=0.0, high=1.0,
                                low_open=True)
    ramp = linear_warmup(value, warmup, warmup_start_factor) if warmup else None

    def fn(t):
        if t < warmup:
            return ramp(t)
        s = min(t - warmup, total)
        return floor + (value - floor) * (1.0 + math.cos(math.pi * s / total)) / 2.0
    return Schedule("cosine", fn, value=value, total=total, floor=floor, warmup=warmup,
                    warmup_start_factor=warmup_start_factor)


def polynomial(value, total, power=1.0):
    """``value * (1 - min(t, total) / total) ** power``."""
    value = _real("value", value)
    total = _count("total", total)
    power = _real("power", power, low=0.0)
    return Schedule("polynomial", lambda t: value * (1.0 - min(t, total) / total) ** power,
                    value=value, total=total, power=power)


def one_cycle(max_value, total, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """torch's ``OneCycleLR`` (two phases, cosine annealing): from ``max_value /
    div_factor`` up to ``max_value`` over the first ``pct_start * total - 1`` steps, then down
    to ``max_value / div_factor / final_div_factor`` at step ``total - 1``."""
    max_value = _real("max_value", max_value)
    total = _count("total", total, low=2)
    pct_start = _real("pct_start", pct_start, low=0.0, high=1.0)
    div_factor = _real("div_factor", div_factor, low=0.0, low_open=True)
    final_div_factor = _real("final_div_factor", final_div_factor, low=0.0, low_open=True)
    initial = max_value / div_factor
    minimum = initial / final_div_factor
    up_end = float(pct_start * total) - 1
    down_end = float(total - 1)

    def anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def fn(t):
        if t <= up_end:
            return anneal(initial, max_value, t / up_end if up_end > 0 else 1.0)
        return anneal(max_value, minimum, min(1.0, (t - up_end) / (down_end - up_end)))
    return Schedule("one_cycle", fn, max_value=max_value, total=total, pct_start=pct_start,
                    div_factor=div_factor, final_div_factor=final_div_factor)


def warmup_stable_decay(value, warmup, stable, decay, floor=0.0, warmup_start_factor=1.0 / 3):
    """Linear warmup over ``warmup`` steps, ``value`` for ``stable`` steps, then a linear
    decay to ``floor`` over ``decay`` steps (``floor`` afterwards)."""
    value = _real("value", value)
    warmup = _count("warmup", warmup, low=0)
    stable = _count("stable", stable, low=0)
    decay = _count("decay", decay)
    floor = _real("floor", floor)
    warmup_start_factor = _real("warmup_start_factor", warmup_start_factor, low=0.0, high=1.0,
                                low_open=True)
    ramp = linear_warmup(value, warmup, warmup_start_factor) if warmup else None

    def fn(t):
        if t < warmup:
            return ramp(t)
        s = t - warmup - stable
        if s <= 0:
            return value
        return value + (floor - value) * min(s, decay) / decay
    return Schedule("warmup_stable_decay", fn, value=value, warmup=warmup, stable=stable,
                    decay=decay, floor=floor, warmup_start_factor=warmup_start_factor)
