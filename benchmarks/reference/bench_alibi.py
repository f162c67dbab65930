"""The same benchmark as ``benchmarks/bench_core.py`` on the reference: alibi-detect 0.13.0 (TensorFlow).

Run it with the reference venv's interpreter (``make bench-reference`` builds
``.venv-reference/`` from ``benchmarks/reference/requirements.txt``)::

    .venv-reference/bin/python benchmarks/reference/bench_alibi.py --json results/bench_alibi.json

Models, in tf.keras, written here (same structure and sizes as the PyTorch zoo's):

* teacher: ResNet-20 — 3x3 stem conv (16) + BN + ReLU, 3 stages x 3 basic blocks of widths
  16/32/64 (two 3x3 conv + BN, 1x1 conv + BN shortcut where the shape changes, stride 2 at the
  start of stages 2 and 3), global average pooling, Dense 10 softmax (~0.27 M parameters);
* student: the seed's distilled model — Conv 256 k4 s2 (linear) -> Conv 128 k4 s2 relu -> Conv 64
  k4 s2 relu (L1 1e-5 on those two kernels) -> Flatten -> Dense 40 -> Dense 10 softmax, 'same'
  padding (~0.71 M parameters).

Configurations: ``fit`` (alibi's trainer runs the teacher on every minibatch: it has no cache, so
this one number is compared with both of distilldetect's fit configurations) and ``score``
(alibi's default ``batch_size=int(1e10)``, i.e. the whole set in one pass, unless
``--score-batch-size`` is given); ``score_batch128`` scores in batches of 128 like
distilldetect's default, for a like-for-like comparison (TensorFlow is faster on one big batch,
at the price of memory). Same protocol as ours: a fresh subprocess per configuration,
one warm-up call, the median of ``--repeats`` timed calls, peak RSS from ``VmHWM``.

Keras: alibi-detect 0.13.0's examples set ``TF_USE_LEGACY_KERAS=1`` (Keras 2 from ``tf-keras``);
so does this script unless the variable is already set (``TF_USE_LEGACY_KERAS=0`` runs it on
Keras 3).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_core import (  # noqa: E402  (the shared, standard-library-only harness)
    FIT_BATCH_SIZE,
    _parser,
    current_rss_mb,
    format_results,
    load_average,
    machine_info,
    measure,
    peak_rss_mb,
    spawn_child,
)

#: configuration name -> (kind, unit)
CONFIGS: dict[str, tuple[str, str]] = {
    "fit": ("fit", "inst*epoch/s"),
    "score": ("score", "inst/s"),
    "score_batch128": ("score", "inst/s"),
}
#: batch size of ``score_batch128``: distilldetect's DEFAULT_BATCH_SIZE, for a like-for-like row
SAME_BATCH = 128


def resnet20(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    num_blocks: int = 3,
    widths: Sequence[int] = (16, 32, 64),
) -> Any:
    """A CIFAR ResNet-20 in tf.keras (functional API), softmax output.

    Examples
    --------
    >>> resnet20().count_params() > 250_000  # doctest: +SKIP
    True
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = layers.Input(shape=tuple(input_shape))
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    cin = widths[0]
    for stage, width in enumerate(widths):
        for block in range(num_blocks):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
            y = layers.ReLU()(layers.BatchNormalization()(y))
            y = layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
            y = layers.BatchNormalization()(y)
            shortcut = x
            if stride != 1 or cin != width:
                shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
            cin = width
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs, name="resnet20")


def distilled_model_cifar10(
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    nb_filters1: int = 256,
    nb_dense: int = 40,
    kernel: int = 4,
    l1: float = 1e-5,
) -> Any:
    """The seed study's student in tf.keras (three strided convolutions, two dense layers).

    Examples
    --------
    >>> distilled_model_cifar10().count_params() > 700_000  # doctest: +SKIP
    True
    """
    import tensorflow as tf

    layers = tf.keras.layers
    reg = tf.keras.regularizers.l1(l1)
    inputs = layers.Input(shape=tuple(input_shape))
    x = layers.Conv2D(nb_filters1, kernel, strides=2, padding="same")(inputs)
    x = layers.Conv2D(
        nb_filters1 // 2,
        kernel,
        strides=2,
        padding="same",
        activation=tf.nn.relu,
        kernel_regularizer=reg,
    )(x)
    x = layers.Conv2D(
        nb_filters1 // 4,
        kernel,
        strides=2,
        padding="same",
        activation=tf.nn.relu,
        kernel_regularizer=reg,
    )(x)
    x = layers.Flatten()(x)
    x = layers.Dense(nb_dense)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs, name="distilled_model_cifar10")


def _keras_version() -> str:
    """The version of the Keras that ``tf.keras`` is (tf-keras 2.x or Keras 3)."""
    import importlib

    name = "tf_keras" if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else "keras"
    try:
        return f"{name} {importlib.import_module(name).__version__}"
    except ImportError:
        return "?"


def _child(
    config: str,
    n_fit: int,
    epochs: int,
    n_score: int,
    repeats: int,
    threads: int | None,
    score_batch_size: int | None,
) -> dict[str, Any]:
    import logging

    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    import alibi_detect
    from alibi_detect.ad import ModelDistillation

    logging.getLogger("alibi_detect").setLevel(logging.ERROR)
    kind, unit = CONFIGS[config]
    rng = np.random.default_rng(0)
    tf.random.set_seed(0)
    teacher = resnet20()
    teacher_params = int(sum(int(np.prod(w.shape)) for w in teacher.trainable_weights))

    def student() -> Any:
        tf.random.set_seed(1)
        return distilled_model_cifar10()

    if kind == "fit":
        X = rng.random((n_fit, 32, 32, 3), dtype=np.float32)
        rss_setup = current_rss_mb()
        m = measure(
            lambda ad: ad.fit(X, epochs=epochs, batch_size=FIT_BATCH_SIZE, verbose=False),
            repeats,
            setup=lambda: ModelDistillation(distilled_model=student(), model=teacher),
        )
        work = n_fit * epochs
    else:
        X = rng.random((n_score, 32, 32, 3), dtype=np.float32)
        ad = ModelDistillation(distilled_model=student(), model=teacher)
        if config == "score_batch128":
            score_batch_size = score_batch_size or SAME_BATCH
        kwargs = {"batch_size": score_batch_size} if score_batch_size else {}
        rss_setup = current_rss_mb()
        m = measure(lambda _: ad.score(X, **kwargs), repeats)
        work = n_score
    return {
        "config": config,
        "kind": kind,
        "unit": unit,
        "rate": work / m["median_s"],
        **m,
        "rss_after_setup_mb": rss_setup,
        "peak_rss_mb": peak_rss_mb(),
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": _keras_version(),
        "alibi_detect": alibi_detect.__version__,
        "teacher_params": teacher_params,
        "student_params": int(sum(int(np.prod(w.shape)) for w in student().trainable_weights)),
    }


def run(
    configs: Sequence[str] | None = None,
    n_fit: int = 1000,
    epochs: int = 2,
    n_score: int = 2000,
    repeats: int = 3,
    threads: int | None = None,
    score_batch_size: int | None = None,
    json_path: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the reference benchmark, each configuration in a fresh subprocess.

    Same parameters and result layout as :func:`bench_core.run`; ``configs`` from ``fit``,
    ``score``.

    Examples
    --------
    >>> run(configs=["score"], n_score=256, repeats=1)["results"]["score"]["rate"]  # doctest: +SKIP
    """
    import json

    configs = list(CONFIGS) if configs is None else list(configs)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    settings = {
        "n_fit": n_fit,
        "epochs": epochs,
        "n_score": n_score,
        "repeats": repeats,
        "threads": threads,
        "score_batch_size": score_batch_size,
    }
    out: dict[str, Any] = {
        "library": "alibi-detect",
        "settings": {**settings, "fit_batch_size": FIT_BATCH_SIZE},
        "machine": machine_info(),
        "results": {},
    }
    for config in configs:
        res = spawn_child(Path(__file__), config, settings)
        out["results"][config] = res
        if verbose:
            print(
                f"  alibi-detect  {config:20s} {res['rate']:9.1f} {res['unit']:13s} "
                f"peak {res['peak_rss_mb']:6.0f} MiB",
                flush=True,
            )
    out["machine"]["loadavg_end"] = load_average()
    if verbose:
        print(format_results(out["results"], "alibi-detect 0.13.0 (TensorFlow)"))
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import json

    args = _parser(__doc__.splitlines()[0], list(CONFIGS)).parse_args(argv)
    if args.child:
        res = _child(
            args.child,
            args.n_fit,
            args.epochs,
            args.n_score,
            args.repeats,
            args.threads,
            args.score_batch_size,
        )
        print(json.dumps(res))
        return
    run(
        configs=[c for c in args.configs.split(",") if c],
        n_fit=args.n_fit,
        epochs=args.epochs,
        n_score=args.n_score,
        repeats=args.repeats,
        threads=args.threads,
        score_batch_size=args.score_batch_size,
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
