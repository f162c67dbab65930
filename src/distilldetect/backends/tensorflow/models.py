"""The model zoo in Keras: the same teachers and students as :mod:`distilldetect.backends.torch.models`.

Every builder has the name, arguments, layer structure and trainable-parameter count of its
PyTorch twin, takes images as numpy stores them, ``(n, h, w, c)`` or ``(n, h, w)`` for
grayscale, and ends in a softmax. The layers reproduce the PyTorch computations exactly (a torch
``padding=1`` stride-2 convolution is a ``ZeroPadding2D(1)`` followed by a ``'valid'``
convolution, batch normalisation uses torch's ``epsilon=1e-5`` and momentum ``0.1``), and each
Keras layer is named after the PyTorch module it mirrors (``blocks.3.conv1`` →
``blocks_3_conv1``), so weights can be carried from one framework to the other.

Only built-in Keras layers are used: the models save to the ``.keras`` format and load back with
``safe_mode=True`` anywhere, without this package. Each model records its builder and arguments
in ``model.builder_config`` (a JSON-able dict; saved beside the model by
:mod:`distilldetect.backends.tensorflow.io`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import layers

from ..zoo_args import check_builder_args

__all__ = [
    "BUILDERS",
    "build",
    "resnet",
    "distilled_model_cifar10",
    "cnn_classifier",
    "mlp",
]


def _parse_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    raise ValueError(f"input_shape must be (h, w) or (h, w, c), got {input_shape!r}")


def _image_input(input_shape: Sequence[int]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The model input and the same batch as ``(n, h, w, c)`` images."""
    h, w, c = _parse_input_shape(input_shape)
    inputs = keras.Input(shape=tuple(int(s) for s in input_shape), name="images")
    x = inputs
    if len(tuple(input_shape)) == 2:
        x = layers.Reshape((h, w, 1), name="add_channel")(x)
    return inputs, x


def _with_config(model: keras.Model, name: str, kwargs: dict[str, Any]) -> keras.Model:
    model.builder_config = {"name": name, "kwargs": dict(kwargs)}
    return model


def _conv(
    x: keras.KerasTensor,
    filters: int,
    kernel: int,
    stride: int,
    padding: int,
    name: str,
    use_bias: bool = True,
) -> keras.KerasTensor:
    """A convolution computing exactly torch's ``Conv2d(..., stride, padding)`` (symmetric zeros)."""
    if padding and not (stride == 1 and kernel % 2 == 1 and padding == kernel // 2):
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        mode = "valid"
    else:
        mode = "same" if padding else "valid"
    return layers.Conv2D(
        filters, kernel, strides=stride, padding=mode, use_bias=use_bias, name=name
    )(x)


def _batch_norm(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    # torch's BatchNorm2d defaults: eps 1e-5, running-average momentum 0.1 (Keras: 0.9)
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)(x)


# ------------------------------------------------------------------------------------- ResNet
def resnet(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    num_blocks: int = 3,
    widths: Sequence[int] = (16, 32, 64),
) -> keras.Model:
    """CIFAR ResNet with ``6 * num_blocks + 2`` layers (ResNet-20 for 3 blocks, ~0.27 M parameters).

    3x3 stem convolution, stages of basic blocks (the first block of every stage after the first
    halves the resolution), global average pooling, softmax.

    Examples
    --------
    >>> resnet().count_params() > 250_000
    True
    """
    kwargs = {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "num_blocks": num_blocks,
        "widths": list(widths),
    }
    inputs, x = _image_input(input_shape)
    x = _conv(x, widths[0], 3, 1, 1, "stem_0", use_bias=False)
    x = _batch_norm(x, "stem_1")
    x = layers.ReLU(name="stem_2")(x)
    cin = widths[0]
    i = 0
    for stage, width in enumerate(widths):
        for b in range(num_blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            prefix = f"blocks_{i}"
            out = _conv(x, width, 3, stride, 1, f"{prefix}_conv1", use_bias=False)
            out = layers.ReLU(name=f"{prefix}_relu1")(_batch_norm(out, f"{prefix}_bn1"))
            out = _conv(out, width, 3, 1, 1, f"{prefix}_conv2", use_bias=False)
            out = _batch_norm(out, f"{prefix}_bn2")
            shortcut = x
            if stride != 1 or cin != width:
                shortcut = _conv(x, width, 1, stride, 0, f"{prefix}_shortcut_0", use_bias=False)
                shortcut = _batch_norm(shortcut, f"{prefix}_shortcut_1")
            x = layers.ReLU(name=f"{prefix}_relu2")(
                layers.Add(name=f"{prefix}_add")([out, shortcut])
            )
            cin = width
            i += 1
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="head")(x)
    return _with_config(keras.Model(inputs, outputs, name="resnet"), "resnet", kwargs)


# ---------------------------------------------------------------------- the seed's student
def distilled_model_cifar10(
    input_shape: Sequence[int] | keras.Model = (32, 32, 3),
    num_classes: int = 10,
    nb_conv_layers: int = 3,
    nb_filters1: int = 256,
    nb_dense: int = 40,
    kernel1: int = 4,
    kernel2: int = 4,
    kernel3: int = 4,
    l1: float = 1e-5,
) -> keras.Model:
    """The seed study's student: Conv(nb_filters1, k1, s2) → Conv(/2, k2, s2, relu) → Conv(/4, k3, s2, relu)
    → Flatten → Dense(nb_dense) → Dense(num_classes, softmax), 'same' padding, L1(1e-5) on conv 2-3.

    A ``keras.Sequential`` model as in the seed; about 0.71 M parameters with the defaults on
    32x32x3. As in the seed, the first argument may be the classifier (``distilled_model_cifar10(clf)``):
    its input shape and number of classes are then used. The L1 penalties are Keras kernel regularisers, so they appear in ``model.losses``
    and are added to the training loss.

    Examples
    --------
    >>> distilled_model_cifar10().output_shape
    (None, 10)
    """
    if isinstance(input_shape, keras.Model):  # the seed's call: distilled_model_cifar10(clf)
        clf = input_shape
        input_shape = tuple(int(v) for v in clf.input_shape[1:])
        num_classes = int(clf.output_shape[-1])
    kwargs = {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "nb_conv_layers": nb_conv_layers,
        "nb_filters1": nb_filters1,
        "nb_dense": nb_dense,
        "kernel1": kernel1,
        "kernel2": kernel2,
        "kernel3": kernel3,
        "l1": l1,
    }
    if nb_conv_layers not in (1, 2, 3):
        raise ValueError(f"nb_conv_layers must be 1, 2 or 3, got {nb_conv_layers}")
    h, w, c = _parse_input_shape(input_shape)
    filters = [int(nb_filters1), int(nb_filters1 / 2), int(nb_filters1 / 4)][:nb_conv_layers]
    kernels = [kernel1, kernel2, kernel3][:nb_conv_layers]
    stack: list[layers.Layer] = [layers.InputLayer(shape=tuple(int(s) for s in input_shape))]
    if len(tuple(input_shape)) == 2:
        stack.append(layers.Reshape((h, w, 1), name="add_channel"))
    for i, (f, k) in enumerate(zip(filters, kernels, strict=True)):
        regularizer = keras.regularizers.L1(float(l1)) if (i > 0 and l1) else None
        stack.append(
            layers.Conv2D(
                f,
                k,
                strides=2,
                padding="same",
                # the first convolution is linear in the seed's model
                activation="relu" if i > 0 else None,
                kernel_regularizer=regularizer,
                name=f"convs_{i}",
            )
        )
    stack.append(layers.Flatten(name="flatten"))
    stack.append(layers.Dense(nb_dense, name="dense"))
    stack.append(layers.Dense(num_classes, activation="softmax", name="out"))
    model = keras.Sequential(stack, name="distilled_model_cifar10")
    return _with_config(model, "distilled_model_cifar10", kwargs)


# ------------------------------------------------------------------ a plain CNN classifier
def cnn_classifier(
    input_shape: Sequence[int] = (28, 28),
    num_classes: int = 10,
    filters: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    dense: Sequence[int] = (128,),
    dropout: float = 0.25,
    batch_norm: bool = False,
) -> keras.Model:
    """A small CNN classifier (the study's Fashion-MNIST teacher; also usable as a student).

    Conv-(BatchNorm)-ReLU-MaxPool blocks, then dense layers with dropout, softmax output. The
    flattened features are in channels-last order (PyTorch's twin flattens channels-first: carry
    the first dense kernel across with a row permutation).

    Examples
    --------
    >>> cnn_classifier().output_shape
    (None, 10)
    """
    kwargs = {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "filters": list(filters),
        "kernel_size": kernel_size,
        "dense": list(dense),
        "dropout": dropout,
        "batch_norm": batch_norm,
    }
    inputs, x = _image_input(input_shape)
    j = 0
    for f in filters:
        x = _conv(x, f, kernel_size, 1, kernel_size // 2, f"features_{j}")
        j += 1
        if batch_norm:
            x = _batch_norm(x, f"features_{j}")
            j += 1
        x = layers.ReLU(name=f"features_{j}")(x)
        x = layers.MaxPooling2D(2, name=f"features_{j + 1}")(x)
        j += 2
    x = layers.Flatten(name="head_0")(x)
    j = 1
    for d in dense:
        x = layers.Dropout(dropout, name=f"head_{j}")(x)
        x = layers.Dense(d, activation="relu", name=f"head_{j + 1}")(x)
        j += 3
    x = layers.Dropout(dropout, name=f"head_{j}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=f"head_{j + 1}")(x)
    model = keras.Model(inputs, outputs, name="cnn_classifier")
    return _with_config(model, "cnn_classifier", kwargs)


# -------------------------------------------------------------------------------- an MLP
def mlp(
    input_shape: Sequence[int] = (28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (64,),
    dropout: float = 0.0,
) -> keras.Model:
    """A multilayer perceptron on flattened inputs, softmax output.

    Examples
    --------
    >>> mlp((8, 8), 10, (16,)).count_params()
    1210
    """
    kwargs = {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "hidden": list(hidden),
        "dropout": dropout,
    }
    inputs = keras.Input(shape=tuple(int(s) for s in input_shape), name="inputs")
    x = layers.Flatten(name="flatten")(inputs)
    j = 0
    for h in hidden:
        x = layers.Dense(h, activation="relu", name=f"net_{j}")(x)
        j += 2
        if dropout:
            x = layers.Dropout(dropout, name=f"net_{j}")(x)
            j += 1
    outputs = layers.Dense(num_classes, activation="softmax", name=f"net_{j}")(x)
    return _with_config(keras.Model(inputs, outputs, name="mlp"), "mlp", kwargs)


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "resnet": resnet,
    "distilled_model_cifar10": distilled_model_cifar10,
    "cnn_classifier": cnn_classifier,
    "mlp": mlp,
}


def build(name: str, **kwargs: Any) -> keras.Model:
    """Build a zoo model by name with keyword arguments (as stored in ``builder_config``).

    Examples
    --------
    >>> build("mlp", input_shape=[4], num_classes=2, hidden=[3]).builder_config["name"]
    'mlp'
    """
    check_builder_args(name, kwargs)
    return BUILDERS[name](**kwargs)


def _reseed(config: Any, rng: Any) -> Any:
    """A layer config whose serialised objects with a fixed ``seed`` (initializers) get one
    drawn from ``rng`` instead."""
    if isinstance(config, list):
        return [_reseed(v, rng) for v in config]
    if not isinstance(config, dict):
        return config
    out = {k: _reseed(v, rng) for k, v in config.items()}
    inner = out.get("config")
    if "class_name" in out and isinstance(inner, dict) and inner.get("seed") is not None:
        out["config"] = {**inner, "seed": int(rng.integers(2**31 - 1))}
    return out


def fresh_copy(model: Any, seed: int) -> Any:
    """A new model of ``model``'s architecture with weights drawn afresh from ``seed``.

    A zoo model is rebuilt from its ``builder_config``; any other model is cloned by Keras'
    ``clone_model`` (new layers, new weights from their initializers) after
    ``keras.utils.set_random_seed(seed)`` (which seeds Python's, NumPy's and TensorFlow's
    global generators); initializers with a fixed seed of their own get seeds drawn from
    ``seed``, so different seeds always give different weights. ``model`` is not touched.

    Raises
    ------
    ValueError
        If Keras cannot clone the model (a subclassed model without ``get_config``, say).

    Examples
    --------
    >>> import numpy as np
    >>> net = keras.Sequential([keras.Input((4,)), layers.Dense(3)])
    >>> a, b = fresh_copy(net, 0), fresh_copy(net, 0)
    >>> bool(np.array_equal(a.get_weights()[0], b.get_weights()[0]))
    True
    >>> bool(np.array_equal(a.get_weights()[0], net.get_weights()[0]))
    False
    """
    import numpy as np

    from .runtime import _keras_module

    config = getattr(model, "builder_config", None)
    keras.utils.set_random_seed(int(seed))
    if isinstance(config, dict) and config.get("name") in BUILDERS:
        return build(config["name"], **dict(config.get("kwargs", {})))
    rng = np.random.default_rng(int(seed))

    def reseeded(layer: Any) -> Any:  # initializers with a seed of their own draw from ours
        return layer.__class__.from_config(_reseed(layer.get_config(), rng))

    try:
        return _keras_module(model).models.clone_model(model, clone_function=reseeded)
    except Exception as err:  # noqa: BLE001 - Keras raises many types here
        raise ValueError(
            f"cannot copy the architecture of {type(model).__name__} ({type(err).__name__}: "
            f"{err}); build the students with your own code instead"
        ) from err
