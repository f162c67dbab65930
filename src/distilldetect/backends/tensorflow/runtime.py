"""TensorFlow / Keras backend: batched inference to numpy, the student's training step, the loss in TF.

Handles Keras 3 models (``keras.Model``, which ``tf.keras.Model`` is from TensorFlow 2.16 on) and,
when the ``tf_keras`` package has been imported, legacy Keras 2 models (``tf_keras.Model``).
Importing this module imports TensorFlow; :func:`distilldetect.backends.framework_of` imports it
only once keras, tensorflow or tf_keras has been imported (no Keras model can exist before).

Forward passes run through a ``tf.function`` traced once per input shape (batch axis left free),
cached per model without keeping the model alive; the model is called with ``training=False``, so
dropout is off and batch-normalisation statistics are neither used from the batch nor updated.
Nothing here changes a model's ``trainable`` flags: the teacher stays frozen because no gradient
is ever computed for it.

Training runs a ``tf.function`` step (``GradientTape``) on the student's trainable variables with
Adam by default; the loss is the mean distillation loss (or a user ``loss_fn``) plus the sum of the
student's own losses (``student.losses``: Keras weight regularisers such as
``kernel_regularizer=l1(1e-5)`` and activity regularisers), as ``tf.keras`` training would add.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ...base import describe
from ...losses import EPSILON, LOSS_TYPES

__all__ = [
    "is_model",
    "inference",
    "n_trainable_parameters",
    "model_dtype",
    "distillation_loss",
    "reseed_random_layers",
    "seal",
    "Trainer",
]

logger = logging.getLogger(__name__)

# model -> {(trailing shape, dtype): tf.function}. Weak keys: the cache never keeps a model alive
# (the traced functions reach the model through a weak reference only).
_FORWARD_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, Callable]] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------- detection
def _model_types() -> tuple[type, ...]:
    types: list[type] = [keras.Model]
    legacy = sys.modules.get("tf_keras")
    if legacy is not None:
        legacy_model = getattr(legacy, "Model", None)
        if isinstance(legacy_model, type):
            types.append(legacy_model)
    return tuple(types)


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a Keras model (Keras 3 ``keras.Model`` or legacy ``tf_keras.Model``).

    Examples
    --------
    >>> is_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    True
    >>> is_model(lambda x: x)
    False
    """
    return isinstance(obj, _model_types())


def _is_legacy(model: Any) -> bool:
    legacy = sys.modules.get("tf_keras")
    return (
        legacy is not None
        and isinstance(getattr(legacy, "Model", None), type)
        and isinstance(model, legacy.Model)
    )


def _keras_module(model: Any) -> Any:
    """The Keras package a model belongs to (``keras`` or ``tf_keras``)."""
    return sys.modules["tf_keras"] if _is_legacy(model) else keras


def _check_tensorflow_backend(model: Any, what: str) -> None:
    if not _is_legacy(model) and keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"{what} is a Keras model on the {keras.backend.backend()!r} backend; distilldetect "
            "trains and runs Keras models on TensorFlow: set KERAS_BACKEND=tensorflow before "
            "importing keras"
        )


# ------------------------------------------------------------------------------- dtypes
def model_dtype(model: Any) -> tf.DType:
    """The floating dtype of the model's variables (``float32`` unless set otherwise).

    Examples
    --------
    >>> model_dtype(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    tf.float32
    """
    dtype = getattr(model, "dtype", None)
    try:
        dtype = tf.as_dtype(dtype)
    except TypeError:
        return tf.float32
    return dtype if dtype.is_floating else tf.float32


def _input_dtype(model: Any) -> tf.DType:
    """The dtype the model declares for its (single) input, else its variables' dtype."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs and len(inputs) == 1:
        try:
            return tf.as_dtype(inputs[0].dtype)
        except TypeError:
            pass
    return model_dtype(model)


def _as_input(x: np.ndarray, dtype: tf.DType) -> np.ndarray:
    """``x`` in the model's input dtype (no copy when it already is)."""
    if (dtype.is_integer or dtype.is_bool) and x.dtype.kind == "f":
        raise TypeError(
            f"the model expects {dtype.name} inputs, got a floating array of dtype {x.dtype}; "
            "it will not be silently truncated"
        )
    return np.asarray(x, dtype=dtype.as_numpy_dtype)


def _to_numpy(out: Any) -> np.ndarray | tuple[np.ndarray, ...]:
    if tf.is_tensor(out):
        return out.numpy()
    if isinstance(out, (tuple, list)) and out and all(tf.is_tensor(o) for o in out):
        return tuple(o.numpy() for o in out)
    raise TypeError(
        f"a Keras model must return a tensor or a list/tuple of tensors, got {describe(out)}"
    )


class _ModelError(ValueError):
    """A TensorFlow runtime error raised by a model on a batch (wrong shape, dtype...)."""


# ------------------------------------------------------------------------------- inference
def _forward_function(model: Any, trailing: tuple[int, ...], dtype: tf.DType) -> Callable:
    """A cached ``tf.function`` computing ``model(x, training=False)`` for ``(None, *trailing)``."""
    per_model = _FORWARD_CACHE.get(model)
    if per_model is None:
        per_model = {}
        _FORWARD_CACHE[model] = per_model
    key = (trailing, dtype.name)
    fn = per_model.get(key)
    if fn is None:
        ref = weakref.ref(model)

        def call(x: tf.Tensor) -> Any:
            out = ref()(x, training=False)
            return tf.nest.map_structure(tf.stop_gradient, out)

        fn = tf.function(call, input_signature=[tf.TensorSpec((None, *trailing), dtype)])
        per_model[key] = fn
    return fn


@contextlib.contextmanager
def inference(
    model: Any, optimize: bool = False, precision: str = "float32"
) -> Iterator[Callable[[np.ndarray], Any]]:
    """Yield ``forward(x) -> numpy`` running ``model(x, training=False)`` without gradients.

    The forward pass is a ``tf.function`` traced once per instance shape and cached with the
    model (weakly), so repeated scoring does not retrace (``optimize`` changes nothing here: the
    graph is always compiled). The model's weights and ``trainable`` flags are untouched, and
    no mode is switched (``training=False`` is given per call), so concurrent calls are safe. TensorFlow runtime errors on a batch are raised as ``ValueError``.

    Examples
    --------
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    >>> with inference(net) as forward:
    ...     forward(np.zeros((4, 3), dtype=np.float32)).shape
    (4, 2)
    """
    if precision != "float32":
        raise ValueError(
            f"precision must be 'float32' for a Keras model (bfloat16 inference is torch-only), "
            f"got {precision!r}"
        )
    dtype = _input_dtype(model)
    eager = _is_legacy(model) is False and keras.backend.backend() != "tensorflow"

    def forward(x: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        xin = _as_input(x, dtype)
        try:
            if eager:  # Keras on another backend: plain call, converted by Keras
                out = model(xin, training=False)
                if isinstance(out, (tuple, list)):
                    return tuple(keras.ops.convert_to_numpy(o) for o in out)
                return keras.ops.convert_to_numpy(out)
            out = _forward_function(model, tuple(x.shape[1:]), dtype)(xin)
        except tf.errors.OpError as err:
            raise _ModelError(err.message) from err
        return _to_numpy(out)

    yield forward


def seal(model: Any, sealed: bool = True) -> None:
    """Nothing to skip: a Keras model's inference makes no per-call weight checks here.

    Part of the backend contract (:meth:`distilldetect.backends.Backend.seal`); the model is
    left as it is.
    """
    if not is_model(model):
        raise TypeError(f"seal expects a Keras model, got {type(model).__name__}")


def n_trainable_parameters(model: Any) -> int:
    """Number of trainable scalars in ``model``.

    Raises
    ------
    ValueError
        If the model is not built yet (its variables do not exist, so their number is unknown).

    Examples
    --------
    >>> n_trainable_parameters(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    8
    """
    if not getattr(model, "built", True) and not model.weights:
        raise ValueError(
            f"the Keras model {model.name!r} is not built yet, so it has no variables: give it "
            "an input (keras.Input / InputLayer(shape=...)), call model.build(input_shape) or "
            "call it once on a batch"
        )
    return int(sum(int(np.prod(v.shape)) for v in model.trainable_weights))


# ------------------------------------------------------------------------------- the loss
def _common_float(p: tf.Tensor, q: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    dtype = tf.float64 if tf.float64 in (p.dtype, q.dtype) else tf.float32
    return tf.cast(p, dtype), tf.cast(q, dtype)


def distillation_loss(p: Any, q: Any, loss_type: str = "kld") -> tf.Tensor:
    """Per-instance distillation loss between teacher ``p`` and student ``q`` probabilities.

    The TensorFlow twin of :func:`distilldetect.losses.kld` / :func:`~distilldetect.losses.xent`
    (Keras' ``kl_divergence`` and ``categorical_crossentropy`` on probabilities, same clipping);
    temperature sharpening is applied to ``p`` before this call. Computed in float64 if either
    input is float64, else float32.

    Examples
    --------
    >>> p = tf.constant([[0.5, 0.5]])
    >>> float(distillation_loss(p, p)[0])
    0.0
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    p, q = _common_float(tf.convert_to_tensor(p), tf.convert_to_tensor(q))
    if loss_type == "kld":
        p = tf.clip_by_value(p, EPSILON, 1.0)
        q = tf.clip_by_value(q, EPSILON, 1.0)
        return tf.reduce_sum(p * (tf.math.log(p) - tf.math.log(q)), axis=-1)
    q = q / tf.reduce_sum(q, axis=-1, keepdims=True)
    q = tf.clip_by_value(q, EPSILON, 1.0 - EPSILON)
    return -tf.reduce_sum(p * tf.math.log(q), axis=-1)


# ------------------------------------------------------------------------------- training
def reseed_random_layers(model: Any, seed: int) -> int:
    """Set the state of every Keras random seed generator in ``model`` from ``seed``.

    Keras 3 layers that draw random numbers (``Dropout``, ``GaussianNoise``, augmentation
    layers...) own a ``SeedGenerator`` whose state variable lives in the model; setting these
    states makes training reproducible without touching any global random state. Returns the
    number of generators reseeded. Layers drawing from TensorFlow's global generator (legacy
    ``tf_keras`` dropout, custom layers calling ``tf.random`` without a seed) are not covered:
    seed those with ``tf.random.set_seed``.

    Examples
    --------
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5)])
    >>> reseed_random_layers(net, 0)
    1
    """
    states = [
        v
        for v in model.variables
        if getattr(v, "name", "").split(":")[0].endswith("seed_generator_state")
        and tuple(v.shape) == (2,)
    ]
    if not states:
        return 0
    seeds = np.random.SeedSequence(seed).generate_state(len(states))
    for value, state in zip(seeds, states, strict=True):
        dtype = np.dtype(tf.as_dtype(state.dtype).as_numpy_dtype)
        state.assign(np.array([int(value) % (2**31 - 1) + 1, 0], dtype=dtype))
    return len(states)


def _optimizer_types(kmod: Any) -> tuple[type, ...]:
    types: list[type] = [kmod.optimizers.Optimizer]
    legacy = getattr(getattr(kmod.optimizers, "legacy", None), "Optimizer", None)
    if isinstance(legacy, type):
        types.append(legacy)
    return tuple(types)


def _check_known_variables(optimizer: Any, variables: list) -> None:
    """Refuse an optimizer already built for other variables (Keras would fail mid-training)."""
    indices = getattr(optimizer, "_trainable_variables_indices", None)
    var_key = getattr(optimizer, "_var_key", None)
    if not getattr(optimizer, "built", False) or not isinstance(indices, dict) or var_key is None:
        return
    if not any(var_key(v) in indices for v in variables):
        raise ValueError(
            "optimizer was already used for other variables than distilled_model's; pass a new "
            "optimizer instance or the optimizer class instead"
        )


def _build_optimizer(student: Any, optimizer: Any, learning_rate: float | None) -> Any:
    kmod = _keras_module(student)
    types = _optimizer_types(kmod)
    if optimizer is None:
        return kmod.optimizers.Adam(learning_rate=1e-3 if learning_rate is None else learning_rate)
    if isinstance(optimizer, type) and issubclass(optimizer, types):
        if learning_rate is None:
            return optimizer()
        return optimizer(learning_rate=learning_rate)
    if isinstance(optimizer, types):
        if learning_rate is not None:
            raise ValueError(
                "learning_rate applies only when optimizer is a class; the given optimizer "
                "instance already has its learning rate"
            )
        _check_known_variables(optimizer, list(student.trainable_variables))
        return optimizer
    name = "tf_keras" if kmod is not keras else "keras"
    raise TypeError(
        f"optimizer must be None, a {name}.optimizers.Optimizer subclass or instance for a Keras "
        f"distilled_model, got {describe(optimizer)}"
    )


class Trainer:
    """One optimisation step at a time of the distillation loss for a Keras student.

    Used as a context manager. When ``seed`` is given, the student's Keras random seed
    generators (dropout...) are set from it on entry (see :func:`reseed_random_layers`), so the
    same initial weights and seed give the same trained weights; no global random state is
    touched. The step is a ``tf.function`` traced once per instance shape.

    Parameters
    ----------
    student
        The distilled model (a Keras model returning probabilities).
    optimizer
        None (Adam), a Keras optimizer class or a ready optimizer instance.
    learning_rate
        Learning rate for an optimizer built here (default 1e-3 for Adam).
    loss_type
        ``'kld'`` or ``'xent'``, used when ``loss_fn`` is None.
    loss_fn
        Optional ``loss_fn(teacher_probs, student_probs) -> scalar tensor`` replacing the mean
        distillation loss; it receives TensorFlow tensors inside a ``tf.function``, so it must use
        TensorFlow (or ``keras.ops``) operations.
    seed
        Seed for the student's random layers during training.

    Examples
    --------
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> p = np.full((8, 3), 1 / 3, dtype=np.float32)
    >>> with Trainer(student, seed=0) as trainer:
    ...     loss, q = trainer.step(np.ones((8, 4), dtype=np.float32), p)
    >>> q.shape
    (8, 3)
    """

    def __init__(
        self,
        student: Any,
        optimizer: Any = None,
        learning_rate: float | None = None,
        loss_type: str = "kld",
        loss_fn: Callable | None = None,
        seed: int | None = None,
        optimize: bool = False,
    ) -> None:
        _check_tensorflow_backend(student, "distilled_model")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.student = student
        self.optimizer = _build_optimizer(student, optimizer, learning_rate)
        self.loss_type = loss_type
        self.loss_fn = loss_fn
        self.seed = seed
        self.input_dtype = _input_dtype(student)
        self._variables = list(student.trainable_variables)
        if not getattr(self.optimizer, "built", True):
            self.optimizer.build(self._variables)
        self._steps: dict[tuple, Callable] = {}

    def __enter__(self) -> Trainer:
        if self.seed is not None:
            n = reseed_random_layers(self.student, self.seed)
            logger.debug("reseeded %d random generator(s) of the student", n)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _loss(self, p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
        if self.loss_fn is None:
            return tf.reduce_mean(distillation_loss(p, q, self.loss_type))
        loss = self.loss_fn(p, q)
        if not tf.is_tensor(loss):
            raise TypeError(f"loss_fn must return a scalar tensor, got {describe(loss)}")
        shape = loss.shape
        if shape.rank is not None and shape.rank > 0 and shape.num_elements() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, got a tensor of shape {shape}")
        return tf.reshape(tf.cast(loss, q.dtype), ())

    def _step_function(self, trailing: tuple[int, ...], n_classes: int) -> Callable:
        key = (trailing, n_classes)
        fn = self._steps.get(key)
        if fn is not None:
            return fn
        student, variables, optimizer = self.student, self._variables, self.optimizer

        def step(x: tf.Tensor, p: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.GradientTape() as tape:
                q = student(x, training=True)
                if not tf.is_tensor(q):
                    raise TypeError(f"distilled_model must return a tensor, got {describe(q)}")
                qf = q if q.dtype in (tf.float32, tf.float64) else tf.cast(q, tf.float32)
                loss = self._loss(tf.cast(p, qf.dtype), qf)
                extra = [tf.cast(tf.reshape(r, ()), loss.dtype) for r in student.losses]
                if extra:
                    loss = loss + tf.add_n(extra)
            grads = tape.gradient(loss, variables)
            pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
            if not pairs:
                raise ValueError(
                    "the training loss does not depend on any trainable variable of "
                    "distilled_model; check loss_fn and the student's outputs"
                )
            optimizer.apply_gradients(pairs)
            return loss, q

        fn = tf.function(
            step,
            input_signature=[
                tf.TensorSpec((None, *trailing), self.input_dtype),
                tf.TensorSpec((None, n_classes), tf.float32),
            ],
        )
        self._steps[key] = fn
        return fn

    def step(self, x: np.ndarray, teacher_probs: np.ndarray) -> tuple[float, np.ndarray]:
        """Run one step on a minibatch; return the batch loss and the student's probabilities."""
        xin = _as_input(x, self.input_dtype)
        p = np.asarray(teacher_probs, dtype=np.float32)
        fn = self._step_function(tuple(x.shape[1:]), int(p.shape[1]))
        try:
            loss, q = fn(xin, p)
        except tf.errors.OpError as err:
            raise _ModelError(err.message) from err
        return float(loss), q.numpy()


def manual_seed(seed: int) -> None:
    """Seed Keras', TensorFlow's, NumPy's and Python's global random numbers (before building).

    Examples
    --------
    >>> manual_seed(0)
    """
    keras.utils.set_random_seed(int(seed))


@contextlib.contextmanager
def preserve_modes(model: Any) -> Iterator[Any]:
    """Keras models have no global train/eval mode (``training=`` is given per call): a no-op
    twin of the torch backend's context manager, so that callers need not know the framework.

    Examples
    --------
    >>> with preserve_modes(keras.Sequential([keras.Input((2,))])) as m:
    ...     m.name.startswith("sequential")
    True
    """
    yield model


def train_classifier(
    model: Any,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int | None = None,
    verbose: bool = True,
    desc: str = "Teacher",
) -> list[float]:
    """Supervised training of a Keras softmax classifier with Adam (the twin of the torch one).

    Minibatches are drawn as the torch backend draws them (a NumPy generator seeded with
    ``seed``); the model's random layers are reseeded from ``seed``. Returns the mean training
    loss per epoch.

    Examples
    --------
    >>> net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    >>> X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> len(train_classifier(net, X, (X[:, 0] > 0).astype(int), epochs=2, verbose=False, seed=0))
    2
    """
    from tqdm.auto import tqdm

    _check_tensorflow_backend(model, "model")
    kmod = _keras_module(model)
    optimizer = kmod.optimizers.Adam(learning_rate=learning_rate)
    variables = list(model.trainable_variables)
    optimizer.build(variables)
    dtype = _input_dtype(model)
    if seed is not None:
        reseed_random_layers(model, seed)

    @tf.function
    def step(x: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            probs = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(
                kmod.losses.sparse_categorical_crossentropy(labels, probs, from_logits=False)
            )
            extra = [tf.cast(tf.reshape(r, ()), loss.dtype) for r in model.losses]
            if extra:
                loss = loss + tf.add_n(extra)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        )
        return loss

    rng = np.random.default_rng(seed)
    labels = np.asarray(y, dtype=np.int64)
    history: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(X))
        total = 0.0
        bar = tqdm(
            range(0, len(X), batch_size),
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            disable=not verbose,
            leave=False,
        )
        for start in bar:
            idx = np.sort(order[start : start + batch_size])
            loss = float(step(_as_input(X[idx], dtype), labels[idx]))
            total += loss * len(idx)
        history.append(total / len(X))
    return history
