"""FlatParams: one contiguous parameter arena and one gradient arena, with named views."""
import numbers

import numpy as np


class FlatParams:
    """A flat parameter buffer and a flat gradient buffer of the same layout.

    Each named tensor is a zero-copy view of the arenas in its original shape, so model code
    reads weights from ``fp.params[name]`` and writes gradients into ``fp.grads[name]`` (in
    place, e.g. ``np.matmul(x.T, d, out=fp.grads["W1"])``), and an optimizer steps all of them
    with one fused call on ``fp.param`` / ``fp.grad``.

    Args:
        spec: dict ``name -> shape`` (tensors are zeroed) or ``name -> array`` (values are
            copied into the arena). Order is kept.
        dtype: float32 (default) or float64. With arrays and ``dtype=None`` the arrays'
            common float dtype is used.

    Example:
        >>> import numpy as np, fastopt
        >>> fp = fastopt.FlatParams({"W": (2, 3), "b": (3,)})
        >>> fp.param.shape, fp.params["W"].shape
        ((9,), (2, 3))
        >>> fp.params["b"][:] = 1.0; fp.param[-3:]
        array([1., 1., 1.], dtype=float32)

    ``copy.deepcopy`` and pickling keep the structure: the copy's tensors are views of the
    copy's arenas.
    """

    def __init__(self, spec, dtype=None):
        if not isinstance(spec, dict) or not spec:
            raise TypeError("FlatParams needs a non-empty dict of name -> shape or array")
        shapes, values = {}, {}
        for name, item in spec.items():
            if not isinstance(name, str):
                raise TypeError(f"FlatParams names must be strings, got {name!r}")
            if isinstance(item, np.ndarray):
                shapes[name] = item.shape
                values[name] = item
            else:
                shape = (item,) if isinstance(item, numbers.Integral) else tuple(item)
                if not all(isinstance(d, numbers.Integral) and d >= 0 for d in shape):
                    raise ValueError(f"FlatParams[{name!r}]: shape {item!r} must be a tuple "
                                     f"of non-negative ints")
                shapes[name] = tuple(int(d) for d in shape)
        if dtype is None:
            dtype = (np.result_type(*values.values()) if len(values) == len(shapes)
                     else np.float32)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"FlatParams dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self.layout = {}
        offset = 0
        for name, shape in shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            self.layout[name] = (offset, shape)
            offset += size
        self.size = offset
        self.param = np.zeros(offset, dtype)
        self.grad = np.zeros(offset, dtype)
        self.params = self._views(self.param)
        self.grads = self._views(self.grad)
        for name, value in values.items():
            self.params[name][...] = value

    def __getstate__(self):
        # copy.deepcopy and pickle copy arrays one by one, so a copied view would no longer be
        # a view of the copied arena: keep the arenas and the layout, make the views again
        return {k: v for k, v in self.__dict__.items() if k not in ("params", "grads")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.params = self._views(self.param)
        self.grads = self._views(self.grad)

    def _views(self, arena):
        return {name: arena[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
                for name, (off, shape) in self.layout.items()}

    def __getitem__(self, name):
        return self.params[name]

    def __iter__(self):
        return iter(self.layout)

    def __len__(self):
        return len(self.layout)

    def __repr__(self):
        return f"FlatParams({len(self.layout)} tensors, {self.size} elements, {self.dtype})"
