"""Test and benchmark information about each optimizer, kept apart from the runtime specs
(torch keeps its ``OptimizerInfo`` records outside ``torch.optim`` for the same reason).

An :class:`OptimizerInfo` says which option combinations the registry-driven tests step
(``option_grid``), which hyperparameter combinations must be refused and how (``bad_inputs``,
beyond the per-hyperparameter ranges every :class:`~fastopt._spec.Hyper` already generates),
settings that solve the convergence problems (``tuned``), the torch peer (``torch``: ``hp ->
(torch.optim class name, or a dotted name such as "pytorch_optimizer.Lion", kwargs[,
attributes to set on the peer instance])`` or ``None`` where torch has no such formula), the
hyperparameter values under which that peer computes this optimizer's formula
(``peer_settings``: the benchmarks' workloads and the parity test use them), the blog's
class (``blog``: ``(class name in fastopt.blog, equivalent step kwargs)``) and the optax peer
(``optax``: ``hp -> (optax function name, kwargs)``, or a string saying why optax has no such
formula for these settings). Every field is optional: an optimizer with no entry, or with no
torch, optax or blog peer, is tested and benchmarked with what it has.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class BadInput:
    """A hyperparameter combination that must raise ``error`` matching ``match``.

    ``state`` names the options used to allocate the buffers (``Buffers.zeros`` keywords)."""
    kwargs: dict
    error: type
    match: str
    state: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
    option_grid: dict = dataclasses.field(default_factory=dict)
    bad_inputs: tuple = ()
    tuned: dict = dataclasses.field(default_factory=dict)
    torch: object = None
    blog: tuple = None
    no_rosenbrock: str = None      # why the Rosenbrock convergence test does not apply
    # float32 ulp bound of CUDA-simulator vs CPU results (the simulator runs math.sqrt in
    # float64, so chains of square roots round differently from a GPU's sqrtf)
    simulator_ulp: int = 2
    peer_settings: dict = dataclasses.field(default_factory=dict)
    optax: object = None


def _plain(hp, *names):
    """A reason string when one of the options ``names`` (weight decay, maximize, ...) is
    set: the optax peers below are mapped for the plain update only (what the benchmarks'
    workloads run); ``None`` when none is set."""
    on = [n for n in names if hp.get(n)]
    return f"no optax mapping here with {', '.join(on)} set" if on else None


def _optax_adam(hp):
    why = _plain(hp, "amsgrad", "maximize", "eps_hat") or (
        _plain(hp, "weight_decay") if not hp["decoupled_weight_decay"] else None)
    if why:
        return why
    kw = dict(learning_rate=hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])
    if hp["decoupled_weight_decay"]:
        return "adamw", dict(kw, weight_decay=hp["weight_decay"])
    return "adam", kw


def _adam_torch(hp):
    if hp["eps_hat"]:
        return None
    return ("AdamW" if hp["decoupled_weight_decay"] else "Adam",
            dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                 weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"],
                 maximize=hp["maximize"]))


INFO = {
    "adam": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], decoupled_weight_decay=[False, True],
                         amsgrad=[False, True], maximize=[False, True], eps_hat=[False, True]),
        bad_inputs=(BadInput(dict(amsgrad=True), ValueError, "max_exp_avg_sq"),),
        tuned=dict(lr=0.01),
        torch=_adam_torch,
        optax=_optax_adam,
        blog=("Adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7, eps_hat=True)),
    ),
    "rmsprop": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], momentum=[0.0, 0.9],
                         centered=[False, True], maximize=[False, True]),
        bad_inputs=(BadInput(dict(centered=True), ValueError, "grad_avg"),
                    BadInput(dict(momentum=0.9), ValueError, "momentum_buffer")),
        tuned=dict(lr=0.0005, momentum=0.9),
        torch=lambda hp: ("RMSprop", dict(lr=hp["lr"], alpha=hp["alpha"], eps=hp["eps"],
                                          weight_decay=hp["weight_decay"],
                                          momentum=hp["momentum"], centered=hp["centered"],
                                          maximize=hp["maximize"])),
        blog=("RMSprop", dict(lr=0.01, alpha=0.99, eps=1e-8)),
        # eps_in_sqrt=False: eps after the square root, as torch and fastopt
        optax=lambda hp: _plain(hp, "weight_decay", "momentum", "centered", "maximize") or (
            "rmsprop", dict(learning_rate=hp["lr"], decay=hp["alpha"], eps=hp["eps"],
                            eps_in_sqrt=False)),
    ),
    "momentum": OptimizerInfo(
        option_grid=dict(momentum=[0.0, 0.9]),
        tuned=dict(lr=0.001, momentum=0.9),
        blog=("Momentum", dict(lr=0.01, momentum=0.9)),
        # optax's trace t = g + momentum * t, update -lr * t: the blog's v = -lr * t
        optax=lambda hp: ("sgd", dict(learning_rate=hp["lr"],
                                      momentum=hp["momentum"] or None)),
    ),
    "sgd": OptimizerInfo(
        option_grid=dict(momentum=[0.0, 0.9], dampening=[0.0, 0.5], weight_decay=[0.0, 0.01],
                         nesterov=[False, True], maximize=[False, True]),
        bad_inputs=(
            BadInput(dict(momentum=0.9), ValueError, "momentum_buffer"),
            BadInput(dict(nesterov=True), ValueError, "nesterov=True requires momentum > 0"),
            BadInput(dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError,
                     "dampening == 0", state=dict(momentum=0.9)),
        ),
        tuned=dict(lr=0.001, momentum=0.9),
        torch=lambda hp: ("SGD", dict(lr=hp["lr"], momentum=hp["momentum"],
                                      dampening=hp["dampening"],
                                      weight_decay=hp["weight_decay"], nesterov=hp["nesterov"],
                                      maximize=hp["maximize"])),
        blog=("mini_SGD", dict(lr=0.01)),
        optax=lambda hp: _plain(hp, "weight_decay", "dampening", "maximize") or (
            "sgd", dict(learning_rate=hp["lr"], momentum=hp["momentum"] or None,
                        nesterov=hp["nesterov"])),
    ),
    "adagrad": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], lr_decay=[0.0, 0.01],
                         initial_accumulator_value=[0.0, 0.1], maximize=[False, True]),
        tuned=dict(lr=0.5),
        torch=lambda hp: ("Adagrad", dict(lr=hp["lr"], lr_decay=hp["lr_decay"],
                                          weight_decay=hp["weight_decay"],
                                          initial_accumulator_value=hp[
                                              "initial_accumulator_value"],
                                          eps=hp["eps"], maximize=hp["maximize"])),
        optax=lambda hp: "optax's adagrad adds eps under the square root (torch and "
                         "fastopt: after it)",
    ),
    "adadelta": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], maximize=[False, True]),
        tuned=dict(lr=1.0, rho=0.9),
        simulator_ulp=8,
        no_rosenbrock="Adadelta (torch's formula) does not reach (1, 1) in 20,000 steps with "
                      "any setting tried (lr 0.3-50, rho 0.9-0.9999, eps 1e-6-1e-2: stalls "
                      "in the valley or diverges)",
        torch=lambda hp: ("Adadelta", dict(lr=hp["lr"], rho=hp["rho"], eps=hp["eps"],
                                           weight_decay=hp["weight_decay"],
                                           maximize=hp["maximize"])),
        optax=lambda hp: _plain(hp, "weight_decay", "maximize") or (
            "adadelta", dict(learning_rate=hp["lr"], rho=hp["rho"], eps=hp["eps"])),
    ),
    "adamax": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], maximize=[False, True]),
        tuned=dict(lr=0.02),
        torch=lambda hp: ("Adamax", dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                         eps=hp["eps"], weight_decay=hp["weight_decay"],
                                         maximize=hp["maximize"])),
        optax=lambda hp: _plain(hp, "weight_decay", "maximize") or (
            "adamax", dict(learning_rate=hp["lr"], b1=hp["beta1"], b2=hp["beta2"],
                           eps=hp["eps"])),
    ),
    "nadam": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], decoupled_weight_decay=[False, True],
                         maximize=[False, True]),
        tuned=dict(lr=0.002),
        torch=lambda hp: ("NAdam", dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                        eps=hp["eps"], weight_decay=hp["weight_decay"],
                                        momentum_decay=hp["momentum_decay"],
                                        decoupled_weight_decay=hp["decoupled_weight_decay"],
                                        maximize=hp["maximize"])),
        optax=lambda hp: "optax's nadam has no momentum-decay schedule (torch's and "
                         "fastopt's mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay)))",
    ),
    "radam": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.01], decoupled_weight_decay=[False, True],
                         maximize=[False, True]),
        tuned=dict(lr=0.002),
        torch=lambda hp: ("RAdam", dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                        eps=hp["eps"], weight_decay=hp["weight_decay"],
                                        decoupled_weight_decay=hp["decoupled_weight_decay"],
                                        maximize=hp["maximize"])),
        optax=lambda hp: _plain(hp, "weight_decay", "maximize") or (
            "radam", dict(learning_rate=hp["lr"], b1=hp["beta1"], b2=hp["beta2"],
                          eps=hp["eps"], threshold=5.0)),
    ),
    "nesterov": OptimizerInfo(
        tuned=dict(lr=0.0005, momentum=0.9),
        blog=None,
        optax=lambda hp: "fastopt's Nesterov is the textbook's (p += momentum**2 * v_new - "
                         "(1 + momentum) * lr * g), not optax's nesterov SGD",
    ),
    "lion": OptimizerInfo(
        option_grid=dict(weight_decay=[0.0, 0.1], maximize=[False, True]),
        tuned=dict(lr=0.001),
        # not in torch.optim: pytorch-optimizer's Lion (the same update, decoupled decay)
        torch=lambda hp: ("pytorch_optimizer.Lion",
                          dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                               weight_decay=hp["weight_decay"], weight_decouple=True,
                               maximize=hp["maximize"])),
        optax=lambda hp: _plain(hp, "maximize") or (
            "lion", dict(learning_rate=hp["lr"], b1=hp["beta1"], b2=hp["beta2"],
                         weight_decay=hp["weight_decay"])),
    ),
}

def _lamb_torch(hp):
    # pytorch-optimizer's Lamb: v is never bias-corrected (m only, through lr / (1 - beta1**t),
    # unless adam_debias=True: then neither, as bias_correction=False here), eps is also added
    # to ||r||, and the weight norm is clamped to Lamb.clamp = 10 (lifted: the paper has none)
    if hp["bias_correction"] or hp["trust_eps"] != hp["eps"]:
        return None
    return ("pytorch_optimizer.Lamb",
            dict(lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                 weight_decay=hp["weight_decay"], weight_decouple=False, adam_debias=True,
                 maximize=hp["maximize"]),
            dict(clamp=float("inf")))


def _lamb_optax(hp):
    # optax.lamb bias-corrects both moments and adds nothing to the update's norm in the
    # trust ratio: fastopt's LAMB with bias_correction=True and trust_eps=0
    if not hp["bias_correction"] or hp["trust_eps"] != 0:
        return ("optax's lamb always bias-corrects its moments and adds no eps to the "
                "update's norm (fastopt: bias_correction=True, trust_eps=0; the benchmarks' "
                "LAMB has pytorch-optimizer's settings)")
    return _plain(hp, "weight_decay", "maximize") or (
        "lamb", dict(learning_rate=hp["lr"], b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"],
                     weight_decay=0.0))


INFO["lamb"] = OptimizerInfo(
    option_grid=dict(weight_decay=[0.0, 0.01], bias_correction=[True, False],
                     maximize=[False, True]),
    # the step's length is lr * ||p||: small enough to settle in Rosenbrock's valley
    tuned=dict(lr=0.0015),
    torch=_lamb_torch,
    peer_settings=dict(bias_correction=False, trust_eps=1e-6),
    optax=_lamb_optax,
)

_EMPTY = OptimizerInfo()


def peer_class(name):
    """The torch-side peer class named by an ``OptimizerInfo.torch`` entry: ``"Adam"`` is
    ``torch.optim.Adam``; a dotted name (``"pytorch_optimizer.Lion"``) is imported from its
    package (ImportError when that is not installed)."""
    import importlib
    if "." in name:
        module, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    import torch
    return getattr(torch.optim, name)


def info(spec_or_name):
    """The :class:`OptimizerInfo` of an optimizer (an empty one if it has none)."""
    name = getattr(spec_or_name, "name", spec_or_name)
    return INFO.get(name, _EMPTY)


def option_combinations(spec):
    """Every combination of the optimizer's ``option_grid`` values that passes validation
    (``[{}]`` when it has no grid: the defaults)."""
    import itertools
    grid = info(spec).option_grid
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        kw = dict(spec.defaults)
        kw.update(zip(names, values))
        try:
            spec.validate(kw)
        except (TypeError, ValueError):
            continue
        out.append({n: kw[n] for n in names})
    return out


def blog_lr(spec):
    """The learning rate the benchmarks use: the blog class's, else the spec's default."""
    blog = info(spec).blog
    return blog[1]["lr"] if blog else spec.defaults["lr"]
