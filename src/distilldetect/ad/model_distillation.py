"""ModelDistillation: adversarial / harmful-input detection by model distillation.

Framework-free: models are reached through :mod:`distilldetect.backends`, the score maths
lives in :mod:`distilldetect.losses`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .. import losses
from ..backends import PRECISIONS, framework_of, get_backend, inference
from ..base import (
    BaseDetector,
    check_array,
    check_batch_size,
    check_bool,
    check_callable,
    check_keys,
    check_positive_float,
    check_positive_int,
    check_probabilities,
    check_seed,
    check_shape,
    describe,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..cd.ks import KSDrift
    from ..cd.tail_rank import TailRankDrift

__all__ = ["ModelDistillation", "DEFAULT_BATCH_SIZE"]

logger = logging.getLogger(__name__)

#: Default number of instances per forward pass in ``score``/``predict``/``infer_threshold``.
#: Scores do not depend on it; memory and speed do.
DEFAULT_BATCH_SIZE: int = 256

# Framework exceptions raised by a model that cannot digest a batch (wrong shape, dtype...).
_MODEL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError)


class ModelDistillation(BaseDetector):
    """Detect adversarial (harmful) instances with a distilled copy of a classifier.

    A small *distilled* model (the student) is trained on unlabelled data to reproduce the
    classifier's (the teacher's) output distribution. The distillation loss between the two
    on an instance is its harmfulness score: large where the classifier is pushed into errors
    that the student does not share. Instances scoring above ``threshold`` are flagged.

    Parameters
    ----------
    threshold
        Score above which an instance is flagged; set it later with :meth:`infer_threshold`.
    distilled_model
        The student: a ``torch.nn.Module`` or a ``tf.keras`` model returning class
        probabilities. It is trained in place by :meth:`fit`.
    model
        The teacher (the classifier to protect): a ``torch.nn.Module``, a ``tf.keras`` model or
        any callable mapping a numpy batch to an ``(n, k)`` array of class probabilities
        (e.g. ``sklearn_model.predict_proba``). It is only ever run in inference mode without
        gradients; its weights are never modified.
    loss_type
        ``'kld'`` (Kullback-Leibler divergence, default) or ``'xent'`` (cross-entropy).
    temperature
        Temperature ``T > 0`` applied to the teacher's probabilities: ``p ** (1/T)``,
        renormalised. ``T < 1`` sharpens, ``T > 1`` flattens.
    data_type
        Optional free-form description of the data ('image', 'tabular', ...), kept in ``meta``.
    input_shape
        (keyword) Shape of one instance, checked on every call; set by :meth:`fit` (None: any).
    optimize
        (keyword) Opt in to the backend's optimised forward and training steps for models
        whose code it does not know (torch: a traced, BatchNorm-folded TorchScript copy, batches
        split into row blocks, convolution pairs with nothing between them composed into one
        convolution, for scoring and training); you vouch that each model's eval-mode forward
        treats rows independently and changes no state, as standard classifiers do. About two seconds of
        start-up per model and input shape; outputs equal up to float rounding. The zoo's models
        get the safe part of this by default.
    precision
        (keyword) Arithmetic of the scoring forwards (``score``, ``predict``,
        ``infer_threshold``, drift references): ``'float32'`` (default, exact) or
        ``'bfloat16'``, which runs the torch models' optimised copies in bfloat16 with the
        softmax and the outputs in float32 — faster on CPUs with bfloat16 instructions
        (AVX512-BF16, AMX), scores within bfloat16's rounding of the float32 ones. Needs
        ``optimize=True`` and torch models (a callable teacher runs as it is; a Keras model
        raises); training stays float32.

    Examples
    --------
    >>> import torch
    >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Softmax(dim=-1))
    >>> student = torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Softmax(dim=-1))
    >>> X = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    >>> ad = ModelDistillation(distilled_model=student, model=teacher)
    >>> ad = ad.fit(X, epochs=2, verbose=False, seed=0)
    >>> ad.infer_threshold(X, threshold_perc=95)
    >>> sorted(ad.predict(X)["data"])
    ['instance_score', 'is_adversarial']
    """

    meta_name = "ModelDistillation"
    detector_type = "adversarial"
    online = False

    def __init__(
        self,
        threshold: float | None = None,
        distilled_model: Any = None,
        model: Any = None,
        loss_type: str = "kld",
        temperature: float = 1.0,
        data_type: str | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        optimize: bool = False,
        precision: str = "float32",
    ) -> None:
        super().__init__(data_type)
        if model is None:
            raise ValueError(
                "model (the classifier to protect) is required: a torch.nn.Module, a tf.keras "
                "model or a callable returning class probabilities"
            )
        if distilled_model is None:
            raise ValueError(
                "distilled_model is required: a small torch.nn.Module or tf.keras model "
                "returning class probabilities, trained by fit()"
            )
        teacher_framework = framework_of(model)
        student_framework = framework_of(distilled_model)
        if student_framework == "callable":
            raise TypeError(
                "distilled_model must be trainable: a torch.nn.Module or a tf.keras model, got "
                f"{describe(distilled_model)}"
            )
        if not isinstance(loss_type, str) or loss_type not in losses.LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {losses.LOSS_TYPES}, got {loss_type!r}")
        self.threshold = _check_threshold(threshold)
        self.distilled_model = distilled_model
        self.model = model
        self.loss_type = loss_type
        self.temperature = check_positive_float(temperature, "temperature")
        self.teacher_framework = teacher_framework
        self.student_framework = student_framework
        get_backend(student_framework)  # imported once, here: a missing framework fails now
        self.optimize = check_bool(optimize, "optimize")
        self.precision = _check_precision(precision, self.optimize, (model, distilled_model))
        self.input_shape: tuple[int, ...] | None = (
            None if input_shape is None else check_shape(input_shape, "input_shape")
        )
        self.history: list[dict[str, float]] = []
        self.meta["backend"] = student_framework
        self.meta["teacher_backend"] = teacher_framework

    @property
    def _student_backend(self) -> Any:
        """The student's backend (imported by ``__init__``; a dictionary lookup here)."""
        return get_backend(self.student_framework)

    # ------------------------------------------------------------------ checks
    def _check_X(self, X: Any, name: str = "X") -> np.ndarray:
        X = check_array(X, name, min_ndim=2)
        if self.input_shape is not None and tuple(X.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{name} has instances of shape {tuple(X.shape[1:])}, but the detector was "
                f"fitted on instances of shape {self.input_shape}"
            )
        return X

    def _check_teacher_probs(self, teacher_probs: Any, n: int) -> np.ndarray | None:
        if teacher_probs is None:
            return None
        return check_probabilities(teacher_probs, "teacher_probs", n_rows=n)

    @staticmethod
    def _forward(forward: Callable, x: np.ndarray, role: str) -> np.ndarray:
        """Run one batch through a model, turning framework errors into a clear ValueError."""
        try:
            out = forward(x)
        except _MODEL_ERRORS as err:
            raise ValueError(
                f"{role} could not process a batch of shape {x.shape} and dtype {x.dtype}; "
                f"check that X matches the model's expected input. The model said: {err}"
            ) from err
        if isinstance(out, tuple):
            raise TypeError(
                f"{role} must return one array of probabilities, got {len(out)} outputs"
            )
        return check_probabilities(out, f"{role} outputs", n_rows=len(x))

    def _check_classes(self, p: np.ndarray, q: np.ndarray) -> None:
        if p.shape[1] != q.shape[1]:
            raise ValueError(
                f"model (teacher) returns {p.shape[1]} classes but distilled_model returns "
                f"{q.shape[1]}; both must predict the same classes"
            )

    # --------------------------------------------------------------- scoring
    @contextlib.contextmanager
    def _sessions(self) -> Iterator[tuple[Callable, Callable]]:
        with (
            inference(self.model, self.teacher_framework, self.optimize, self.precision) as teacher,
            self._student_backend.inference(
                self.distilled_model, self.optimize, self.precision
            ) as student,
        ):
            yield teacher, student

    def _iter_probs(
        self, X: np.ndarray, batch_size: int, teacher_probs: np.ndarray | None
    ) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
        """Yield (rows, sharpened teacher probabilities, student probabilities) per batch."""
        with self._sessions() as (teacher, student):
            for start in range(0, len(X), batch_size):
                rows = slice(start, min(start + batch_size, len(X)))
                x = X[rows]
                if teacher_probs is None:
                    p = self._forward(teacher, x, "model (teacher)")
                else:
                    p = teacher_probs[rows]
                q = self._forward(student, x, "distilled_model (student)")
                self._check_classes(p, q)
                yield rows, losses.sharpen(p, self.temperature), q

    def score(
        self,
        X: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_predictions: bool = False,
        *,
        teacher_probs: np.ndarray | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Harmfulness score of each instance: the distillation loss teacher → student.

        Parameters
        ----------
        X
            Batch of instances, in the layout the models expect.
        batch_size
            Instances per forward pass. Scores depend on it only through the models' own float
            arithmetic (a forward pass on a batch of 256 can round differently from one on 32,
            by about 1e-7 relative); the score formula itself is row by row.
        return_predictions
            Also return the sharpened teacher probabilities and the student probabilities.
        teacher_probs
            Precomputed raw teacher probabilities ``(n, k)`` for ``X`` (as a monitoring system
            logs them); the teacher is then not run. Temperature is still applied.

        Returns
        -------
        numpy.ndarray or tuple
            Float64 scores ``(n,)``; with ``return_predictions`` the tuple
            ``(scores, teacher_probs_sharpened, student_probs)``.

        Examples
        --------
        >>> scores = ad.score(X)  # doctest: +SKIP
        """
        X = self._check_X(X)
        batch_size = check_batch_size(batch_size)
        return_predictions = check_bool(return_predictions, "return_predictions")
        teacher_probs = self._check_teacher_probs(teacher_probs, len(X))
        scores = np.empty(len(X), dtype=np.float64)
        p_all = q_all = None
        for rows, p, q in self._iter_probs(X, batch_size, teacher_probs):
            scores[rows] = losses.distillation_score(p, q, self.loss_type, temperature=1.0)
            if return_predictions:
                if p_all is None:
                    p_all = np.empty((len(X), p.shape[1]), dtype=p.dtype)
                    q_all = np.empty((len(X), q.shape[1]), dtype=q.dtype)
                p_all[rows] = p
                q_all[rows] = q
        if return_predictions:
            return scores, p_all, q_all
        return scores

    def seal(self, sealed: bool = True) -> ModelDistillation:
        """Promise that the teacher and the student will not change: faster small batches.

        Each ``score`` call otherwise re-checks that the models are as the cached fast copies
        were built from them (weights compared by value, hooks, device, sub-module modes
        saved and restored), so that a model changed between calls is honoured. A sealed
        detector skips those checks: about 5 ms per call on the zoo's ResNet-20 teacher and
        the seed's student, most of a single-instance call. ``distilldetect serve`` seals the
        detector it loads. The promise: no weight changes (optimiser steps outside ``fit``,
        ``load_state_dict``, ``.data`` writes), hooks, device moves or ``train()`` on either
        model while sealed; a model changed anyway keeps scoring with the weights it had.
        ``fit`` withdraws the promise for the student it trains; ``seal(False)`` withdraws it
        for both. Scores are the same sealed or not. A black-box (callable) teacher has nothing
        to seal; Keras models have no per-call checks to skip.

        Returns
        -------
        ModelDistillation
            ``self``.

        Examples
        --------
        >>> ad = ModelDistillation(distilled_model=student, model=teacher).seal()  # doctest: +SKIP
        """
        sealed = check_bool(sealed, "sealed")
        for model, framework in (
            (self.model, self.teacher_framework),
            (self.distilled_model, self.student_framework),
        ):
            if framework != "callable":
                get_backend(framework).seal(model, sealed)
        return self

    def infer_threshold(
        self,
        X: np.ndarray,
        threshold_perc: float = 99.0,
        margin: float = 0.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        teacher_probs: np.ndarray | None = None,
    ) -> None:
        """Set ``threshold`` to the ``threshold_perc`` percentile of the scores of ``X`` + ``margin``.

        ``X`` should be normal (clean) data: about ``100 - threshold_perc`` percent of it is
        flagged afterwards.

        Examples
        --------
        >>> ad.infer_threshold(X_clean, threshold_perc=99)  # doctest: +SKIP
        """
        if isinstance(threshold_perc, bool) or not isinstance(threshold_perc, numbers.Real):
            raise TypeError(
                f"threshold_perc must be a number in [0, 100], got {describe(threshold_perc)}"
            )
        if not 0 <= threshold_perc <= 100:
            raise ValueError(f"threshold_perc must be in [0, 100], got {threshold_perc}")
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
            raise TypeError(f"margin must be a finite number, got {describe(margin)}")
        if not math.isfinite(margin):
            raise ValueError(f"margin must be a finite number, got {margin}")
        scores = self.score(X, batch_size=batch_size, teacher_probs=teacher_probs)
        self.threshold = _check_threshold(
            float(np.percentile(scores, threshold_perc)) + float(margin)
        )

    def predict(
        self,
        X: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_instance_score: bool = True,
        *,
        teacher_probs: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Flag instances whose score exceeds ``threshold``.

        Returns
        -------
        dict
            ``{'meta': meta, 'data': {'is_adversarial': int array (n,), 'instance_score':
            float array (n,) or None}}``.

        Examples
        --------
        >>> ad.predict(X)["data"]["is_adversarial"]  # doctest: +SKIP
        array([0, 1, 0])
        """
        if self.threshold is None:
            raise ValueError(
                "no threshold is set: call infer_threshold(X_normal) first or pass threshold= "
                "to ModelDistillation"
            )
        threshold = _check_threshold(self.threshold)
        return_instance_score = check_bool(return_instance_score, "return_instance_score")
        scores = self.score(X, batch_size=batch_size, teacher_probs=teacher_probs)
        data = {
            "is_adversarial": (scores > threshold).astype(int),
            "instance_score": scores if return_instance_score else None,
        }
        return self._prediction(data)

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        X: np.ndarray,
        loss_fn: Callable | None = None,
        optimizer: Any = None,
        epochs: int = 20,
        batch_size: int = 128,
        verbose: bool = True,
        log_metric: tuple[str, Callable[[np.ndarray, np.ndarray], float]] | None = None,
        callbacks: Sequence[Callable[[int, dict[str, float]], Any]] | None = None,
        preprocess_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        seed: int | None = None,
        learning_rate: float | None = None,
        teacher_probs: np.ndarray | None = None,
        augment_fn: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ) -> ModelDistillation:
        """Train the distilled model to reproduce the teacher's outputs on unlabelled ``X``.

        The teacher's probabilities are computed once and cached (``n x k`` floats) unless a
        ``preprocess_fn`` is given, in which case the teacher runs on every preprocessed batch
        (the preprocessing may be random).

        Parameters
        ----------
        X
            Unlabelled training instances.
        loss_fn
            None for the distillation loss of ``loss_type`` (mean over the batch), or a
            framework function ``loss_fn(teacher_probs, student_probs) -> scalar`` taking
            tensors of the student's framework.
        optimizer
            None for Adam, an optimizer class of the student's framework (built on its
            trainable parameters with ``learning_rate``) or a ready optimizer instance.
        epochs, batch_size
            Passes over ``X`` and instances per step; minibatches are reshuffled every epoch.
            A last minibatch of a single instance joins the one before it (batch normalisation
            cannot train on one row), so every instance is used in every epoch.
        verbose
            Show a progress bar per epoch with the running loss (and metric).
        log_metric
            Optional ``(name, fn)``; ``fn(teacher_probs, student_probs) -> float`` on numpy
            arrays, averaged over each epoch and shown/logged beside the loss.
        callbacks
            Callables ``callback(epoch, logs)`` run after each epoch, ``logs`` holding the
            epoch's mean ``'loss'`` (and metric). A callback returning ``True`` stops training.
        preprocess_fn
            Optional function applied to each numpy minibatch before both models see it.
        seed
            Seed for shuffling and the framework's random numbers (dropout...): the same
            student initialisation and seed give identical weights.
        learning_rate
            Learning rate for an optimizer built here (Adam default 1e-3).
        teacher_probs
            Precomputed raw teacher probabilities for ``X``; the teacher is then not run.
        augment_fn
            Optional ``augment_fn(x, rng) -> x_augmented`` applied to the *student's* input
            only (after ``preprocess_fn``), with ``rng`` a ``numpy.random.Generator`` derived
            from ``seed``. The teacher's targets stay those of the un-augmented batch (and so
            stay cached): the student learns to give the teacher's clean answer on perturbed
            inputs, which makes it more robust than the teacher to input shifts, so that it
            disagrees with the teacher where the teacher is pushed into errors. See
            :mod:`distilldetect.augment`.

        Returns
        -------
        ModelDistillation
            ``self``.

        Examples
        --------
        >>> ad.fit(X_train, epochs=5, seed=0)  # doctest: +SKIP
        """
        X = check_array(X, "X", min_ndim=2)
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_batch_size(batch_size)
        verbose = check_bool(verbose, "verbose")
        loss_fn = check_callable(loss_fn, "loss_fn")
        preprocess_fn = check_callable(preprocess_fn, "preprocess_fn")
        augment_fn = check_callable(augment_fn, "augment_fn")
        seed = check_seed(seed)
        if learning_rate is not None:
            learning_rate = check_positive_float(learning_rate, "learning_rate")
        metric = _check_log_metric(log_metric)
        callbacks = _check_callbacks(callbacks)
        if preprocess_fn is not None and teacher_probs is not None:
            raise ValueError(
                "teacher_probs cannot be combined with preprocess_fn: the teacher must see the "
                "preprocessed batches"
            )
        teacher_probs = self._check_teacher_probs(teacher_probs, len(X))
        self._probe(X, preprocess_fn, augment_fn, teacher_probs)
        if self._student_backend.n_trainable_parameters(self.distilled_model) == 0:
            raise ValueError("distilled_model has no trainable parameters; nothing to fit")

        cache = None  # sharpened teacher targets for all of X, unless preprocessing is random
        if preprocess_fn is None:
            if teacher_probs is None:
                teacher_probs = self._teacher_probs(X, max(batch_size, DEFAULT_BATCH_SIZE), verbose)
            cache = losses.sharpen(teacher_probs, self.temperature).astype(np.float32, copy=False)
        trainer = self._student_backend.Trainer(
            self.distilled_model,
            optimizer=optimizer,
            learning_rate=learning_rate,
            loss_type=self.loss_type,
            loss_fn=loss_fn,
            seed=seed,
            optimize=self.optimize,
        )
        rng = np.random.default_rng(seed)
        augment_rng = np.random.default_rng(None if seed is None else [seed, 1])
        history: list[dict[str, float]] = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(trainer)
            teacher = None if cache is not None else stack.enter_context(self._teacher_session())
            for epoch in range(epochs):
                targets = _Targets(cache, teacher, preprocess_fn, self.temperature, self._forward)
                logs = self._train_epoch(
                    trainer,
                    X,
                    targets,
                    rng,
                    augment_fn,
                    augment_rng,
                    batch_size,
                    metric,
                    f"Epoch {epoch + 1}/{epochs}",
                    verbose,
                )
                history.append({"epoch": epoch + 1, **logs})
                logger.info("epoch %d/%d: %s", epoch + 1, epochs, logs)
                if any(cb(epoch, dict(logs)) is True for cb in callbacks):
                    logger.info("training stopped by a callback after epoch %d", epoch + 1)
                    break
        self.history = history
        self.input_shape = tuple(X.shape[1:]) if preprocess_fn is None else self.input_shape
        return self

    def _probe(
        self,
        X: np.ndarray,
        preprocess_fn: Callable | None,
        augment_fn: Callable | None,
        teacher_probs: np.ndarray | None,
    ) -> None:
        """Run both models on two instances so that any shape or output problem is reported
        before the teacher cache is built or a training step runs (this also builds a Keras
        model that has no Input layer)."""
        probe = X[:2] if preprocess_fn is None else _preprocess(preprocess_fn, X[:2])
        student_probe = probe
        if augment_fn is not None:
            student_probe = _augment(augment_fn, probe, np.random.default_rng(0))
        with self._sessions() as (teacher, student):
            q0 = self._forward(student, student_probe, "distilled_model (student)")
            p0 = (
                teacher_probs[:2]
                if teacher_probs is not None
                else self._forward(teacher, probe, "model (teacher)")
            )
        self._check_classes(p0, q0)

    def _teacher_session(self) -> contextlib.AbstractContextManager[Callable]:
        return inference(self.model, self.teacher_framework, self.optimize)

    def _train_epoch(
        self,
        trainer: Any,
        X: np.ndarray,
        targets: _Targets,
        rng: np.random.Generator,
        augment_fn: Callable | None,
        augment_rng: np.random.Generator,
        batch_size: int,
        metric: tuple[str, Callable | None],
        desc: str,
        verbose: bool,
    ) -> dict[str, float]:
        """One pass over ``X`` in reshuffled minibatches; the epoch's mean loss (and metric)."""
        metric_name, metric_fn = metric
        batches = minibatches(rng.permutation(len(X)), batch_size)
        total = metric_total = 0.0
        seen = 0
        bar = tqdm(batches, desc=desc, disable=not verbose, leave=True)
        for step, idx in enumerate(bar, start=1):
            x, p = targets(X, idx)
            if augment_fn is not None:
                x = _augment(augment_fn, x, augment_rng)
            loss, q = trainer.step(x, p)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {loss} at {desc.lower()}, step {step}; lower "
                    "learning_rate or check the student's outputs"
                )
            total += loss * len(idx)
            seen += len(idx)
            postfix = {"loss": total / seen}
            if metric_fn is not None:
                metric_total += float(metric_fn(p, q)) * len(idx)
                postfix[metric_name] = metric_total / seen
            if verbose:
                bar.set_postfix(postfix, refresh=False)
        logs = {"loss": total / seen}
        if metric_fn is not None:
            logs[metric_name] = metric_total / seen
        return logs

    def _teacher_probs(self, X: np.ndarray, batch_size: int, verbose: bool) -> np.ndarray:
        """Raw teacher probabilities for all of ``X``, computed in batches."""
        out: np.ndarray | None = None
        with self._teacher_session() as teacher:
            starts = range(0, len(X), batch_size)
            for start in tqdm(starts, desc="Teacher outputs", disable=not verbose, leave=False):
                x = X[start : start + batch_size]
                p = self._forward(teacher, x, "model (teacher)")
                if out is None:
                    out = np.empty((len(X), p.shape[1]), dtype=np.float32)
                out[start : start + len(x)] = p
        assert out is not None
        return out

    # ------------------------------------------------------------ harmful drift
    def drift_detector(
        self,
        x_ref: np.ndarray,
        p_val: float = 0.05,
        alternative: str = "greater",
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        test: str = "ks",
        **kwargs: Any,
    ) -> KSDrift | TailRankDrift:
        """A drift detector on this detector's scores: harmful drift.

        Harm shows as *larger* scores, so the default ``alternative='greater'`` tests only for
        test scores that are stochastically larger than the reference scores of ``x_ref``
        (clean data); a two-sided test (``alternative='two-sided'``) also spends power on
        shifts towards smaller scores, which cannot be harmful.

        Parameters
        ----------
        x_ref
            Clean reference instances, held out from the student's training data (scores of
            training instances are lower, which inflates false alarms); scored once, now.
        p_val
            Significance level of the test.
        alternative
            ``'greater'`` (default, harmful drift only), ``'two-sided'`` or ``'less'``
            (``test='ks'`` only; the tail-rank test is one-sided, ``'greater'``).
        batch_size
            Batch size of the scoring.
        test
            (keyword) ``'ks'`` (default): :class:`~distilldetect.cd.KSDrift`, the
            Kolmogorov-Smirnov test of alibi-detect. ``'tail_rank'``:
            :class:`~distilldetect.cd.TailRankDrift`, a one-sided tail-weighted rank test that
            detects a small harmful fraction of a batch more often and is as quiet on harmless
            drift (the harmful-drift study's default; README, "The study").
        **kwargs
            Further arguments of the detector class (``update_x_ref`` for KSDrift, ``power``
            or ``seed`` for TailRankDrift...).

        Examples
        --------
        >>> cd = ad.drift_detector(X_clean, p_val=0.05)  # doctest: +SKIP
        >>> cd.predict(X_batch)["data"]["is_drift"]  # doctest: +SKIP
        >>> cd = ad.drift_detector(X_clean, test="tail_rank")  # doctest: +SKIP
        """
        batch_size = check_batch_size(batch_size)
        preprocess_fn = functools.partial(self.score, batch_size=batch_size)
        if test == "tail_rank":
            from ..cd.tail_rank import TailRankDrift

            if alternative != "greater":
                raise ValueError(
                    "test='tail_rank' is one-sided (larger scores: alternative='greater'), "
                    f"got alternative={alternative!r}; use test='ks' for other alternatives"
                )
            return TailRankDrift(x_ref, p_val=p_val, preprocess_fn=preprocess_fn, **kwargs)
        if test != "ks":
            raise ValueError(f"test must be 'ks' or 'tail_rank', got {test!r}")
        from ..cd.ks import KSDrift

        return KSDrift(
            x_ref,
            p_val=p_val,
            preprocess_fn=preprocess_fn,
            alternative=alternative,
            **kwargs,
        )

    # ------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments: everything :meth:`from_config` needs to rebuild this.

        Settings are JSON values; ``model`` and ``distilled_model`` are the models themselves
        (:func:`~distilldetect.save_detector` stores them by framework).

        Examples
        --------
        >>> sorted(ad.get_config())  # doctest: +SKIP
        ['data_type', 'distilled_model', 'input_shape', 'loss_type', 'model', 'temperature', 'threshold']
        """
        return {
            "threshold": self.threshold,
            "distilled_model": self.distilled_model,
            "model": self.model,
            "loss_type": self.loss_type,
            "temperature": self.temperature,
            "data_type": self.meta.get("data_type"),
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "optimize": self.optimize,
            "precision": self.precision,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelDistillation:
        """Build a detector from :meth:`get_config`'s dict, through ``__init__`` (its checks).

        Examples
        --------
        >>> ad2 = ModelDistillation.from_config(ad.get_config())  # doctest: +SKIP
        """
        config = check_keys(config, {"distilled_model", "model"}, _CONFIG_KEYS, "config")
        return cls(**config)

    def get_state(self) -> dict[str, Any]:
        """What changed after construction, as JSON: the training ``history`` and ``meta``."""
        return {"history": [dict(h) for h in self.history], "meta": dict(self.meta)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state`'s dict (validated; the backends in ``meta`` stay this
        detector's own)."""
        state = check_keys(state, {"history", "meta"}, set(), "state")
        history, meta = state["history"], state["meta"]
        if not isinstance(history, list) or not all(
            isinstance(h, dict)
            and all(
                isinstance(k, str)
                and (v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)))
                for k, v in h.items()
            )
            for h in history
        ):
            raise ValueError("state['history'] must be a list of {name: number} dicts")
        if not isinstance(meta, dict) or meta.get("name") != self.meta_name:
            raise ValueError(f"state['meta'] must be a dict whose 'name' is {self.meta_name!r}")
        backends = {k: self.meta[k] for k in ("backend", "teacher_backend")}
        self.history = [dict(h) for h in history]
        self.meta = {**meta, **backends}


_CONFIG_KEYS = {
    "threshold",
    "loss_type",
    "temperature",
    "data_type",
    "input_shape",
    "optimize",
    "precision",
}


def _check_precision(precision: Any, optimize: bool, models: tuple[Any, Any]) -> str:
    """``precision`` checked: one of :data:`~distilldetect.backends.PRECISIONS`; a reduced one
    needs ``optimize`` and no Keras model (the constructor's only check of it)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return precision
    if not optimize:
        raise ValueError(
            f"precision={precision!r} runs the optimised copies of the models: pass "
            "optimize=True as well"
        )
    for role, m in zip(("model", "distilled_model"), models, strict=True):
        if framework_of(m) == "tensorflow":
            raise ValueError(
                f"precision={precision!r} needs torch models; {role} is a Keras model "
                "(use precision='float32')"
            )
    return precision


def minibatches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Sorted index blocks of ``batch_size`` taken from ``order``; a last block of one instance
    joins the block before it.

    Examples
    --------
    >>> [b.tolist() for b in minibatches(np.array([4, 0, 3, 1, 2]), 2)]
    [[0, 4], [1, 2, 3]]
    """
    starts = list(range(0, len(order), batch_size))
    if len(starts) > 1 and len(order) - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [len(order)]
    return [np.sort(order[a:b]) for a, b in zip(starts, ends, strict=True)]


class _Targets:
    """The minibatch and its sharpened teacher targets: from the cache, or from the teacher on
    the preprocessed batch."""

    def __init__(
        self,
        cache: np.ndarray | None,
        teacher: Callable | None,
        preprocess_fn: Callable | None,
        temperature: float,
        forward: Callable,
    ) -> None:
        self.cache, self.teacher, self.preprocess_fn = cache, teacher, preprocess_fn
        self.temperature, self.forward = temperature, forward

    def __call__(self, X: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = X[idx]
        if self.cache is not None:
            return x, self.cache[idx]
        x = _preprocess(self.preprocess_fn, x) if self.preprocess_fn is not None else x
        p = self.forward(self.teacher, x, "model (teacher)")
        return x, losses.sharpen(p, self.temperature)


def _check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be None or a number, got {describe(threshold)}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    return float(threshold)


def _check_log_metric(log_metric: Any) -> tuple[str, Callable | None]:
    if log_metric is None:
        return "", None
    if (
        not isinstance(log_metric, tuple)
        or len(log_metric) != 2
        or not isinstance(log_metric[0], str)
        or not callable(log_metric[1])
    ):
        raise TypeError(
            "log_metric must be None or a (name, fn) tuple with fn(teacher_probs, "
            f"student_probs) -> float, got {describe(log_metric)}"
        )
    return log_metric[0], log_metric[1]


def _check_callbacks(callbacks: Any) -> list[Callable]:
    if callbacks is None:
        return []
    if callable(callbacks):
        callbacks = [callbacks]
    if not isinstance(callbacks, (list, tuple)) or not all(callable(c) for c in callbacks):
        raise TypeError(f"callbacks must be None or a list of callables, got {describe(callbacks)}")
    return list(callbacks)


def _augment(augment_fn: Callable, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = augment_fn(x, rng)
    if not isinstance(out, np.ndarray) or out.shape != x.shape:
        raise TypeError(
            f"augment_fn must return a numpy array of the input's shape {x.shape}, got {describe(out)}"
        )
    return check_array(out, "augment_fn output")


def _preprocess(preprocess_fn: Callable, x: np.ndarray) -> np.ndarray:
    out = preprocess_fn(x)
    if not isinstance(out, np.ndarray) or len(out) != len(x):
        raise TypeError(
            f"preprocess_fn must return a numpy array with one row per instance ({len(x)}), "
            f"got {describe(out)}"
        )
    return check_array(out, "preprocess_fn output")
