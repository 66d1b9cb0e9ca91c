"""The blog's network on a flat parameter arena.

A multi-layer perceptron ``784-100-100-100-100-10`` (by default) with ReLU, He initialization
(``std = sqrt(2 / fan_in)``, zero biases) and softmax cross-entropy, as the blog's
``MultiLayerNet(input_size=784, hidden_size_list=[100] * 4, output_size=10)``.

Weights ``W1..Wn`` and biases ``b1..bn`` are views of one :class:`fastopt.FlatParams` arena:
the forward pass reads them, the backward pass writes the gradients into ``self.grads`` views
in place (``np.matmul(..., out=)``), and an optimizer steps the whole arena with one fused
call. Activation workspaces are allocated once per batch size; no parameter-sized array is
allocated per step.
"""
import numpy as np

from .flat import FlatParams

BLOG_SIZES = (784, 100, 100, 100, 100, 10)


class MLP:
    """ReLU MLP with softmax cross-entropy on a :class:`FlatParams` arena.

    Args:
        sizes: layer widths, input first.
        dtype: float32 (default) or float64.
        seed: seed of the He initialization (``numpy.random.default_rng``).
    """

    def __init__(self, sizes=BLOG_SIZES, dtype=np.float32, seed=0):
        self.sizes = tuple(int(s) for s in sizes)
        self.dtype = np.dtype(dtype)
        self.n_layers = len(self.sizes) - 1
        shapes = {}
        for i in range(self.n_layers):
            shapes[f"W{i + 1}"] = (self.sizes[i], self.sizes[i + 1])
            shapes[f"b{i + 1}"] = (self.sizes[i + 1],)
        self.flat = FlatParams(shapes, dtype=self.dtype)
        rng = np.random.default_rng(seed)
        for i in range(self.n_layers):
            fan_in = self.sizes[i]
            w = rng.standard_normal((fan_in, self.sizes[i + 1])) * np.sqrt(2.0 / fan_in)
            self.flat.params[f"W{i + 1}"][...] = w
        self._ws = {}

    # --------------------------------------------------------------- views
    @property
    def params(self):
        return self.flat.params

    @property
    def grads(self):
        return self.flat.grads

    def copy(self):
        """An identical network (same weights) with its own arena."""
        other = MLP.__new__(MLP)
        other.sizes, other.dtype, other.n_layers = self.sizes, self.dtype, self.n_layers
        other.flat = FlatParams(dict(self.flat.params), dtype=self.dtype)
        other._ws = {}
        return other

    # --------------------------------------------------------------- passes
    def _workspace(self, batch):
        ws = self._ws.get(batch)
        if ws is None:
            dt = self.dtype
            ws = {"z": [np.empty((batch, s), dt) for s in self.sizes[1:]],
                  "a": [np.empty((batch, s), dt) for s in self.sizes[1:-1]],
                  "d": [np.empty((batch, s), dt) for s in self.sizes[1:]]}
            self._ws[batch] = ws
        return ws

    def _forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        ws = self._workspace(len(x))
        p = self.flat.params
        a = x
        for i in range(self.n_layers):
            z = ws["z"][i]
            np.matmul(a, p[f"W{i + 1}"], out=z)
            z += p[f"b{i + 1}"]
            if i < self.n_layers - 1:
                a = np.maximum(z, 0, out=ws["a"][i])
        # softmax of the logits, in place of the last z
        z = ws["z"][-1]
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return x, ws

    @staticmethod
    def _cross_entropy(y, t):
        # the blog's cross_entropy_error: -sum(log(y[i, t_i] + 1e-7)) / batch
        return float(-np.sum(np.log(y[np.arange(len(t)), t] + 1e-7)) / len(t))

    def predict(self, x):
        """Class probabilities (a view of a workspace: copy it to keep it)."""
        return self._forward(x)[1]["z"][-1]

    def loss(self, x, t):
        """Mean softmax cross-entropy of labels ``t`` (class indices)."""
        return self._cross_entropy(self.predict(x), t)

    def accuracy(self, x, t, batch=1000):
        correct = 0
        for s in range(0, len(x), batch):
            correct += int(np.sum(self.predict(x[s:s + batch]).argmax(axis=1)
                                  == t[s:s + batch]))
        return correct / len(x)

    def gradient(self, x, t):
        """Forward and backward pass: writes every gradient into ``self.grads`` in place
        and returns the loss (before any update)."""
        x, ws = self._forward(x)
        p, g = self.flat.params, self.flat.grads
        batch = len(t)
        y = ws["z"][-1]
        loss = self._cross_entropy(y, t)
        d = ws["d"][-1]
        np.copyto(d, y)
        d[np.arange(batch), t] -= 1
        d /= batch
        for i in range(self.n_layers - 1, -1, -1):
            a_prev = x if i == 0 else ws["a"][i - 1]
            np.matmul(a_prev.T, d, out=g[f"W{i + 1}"])
            np.sum(d, axis=0, out=g[f"b{i + 1}"])
            if i > 0:
                d_prev = ws["d"][i - 1]
                np.matmul(d, p[f"W{i + 1}"].T, out=d_prev)
                d_prev[ws["z"][i - 1] <= 0] = 0
                d = d_prev
        return loss
