"""The harmful-drift study (alibi-detect's CIFAR-10-C example), end to end, as a function.

Stages (:mod:`~distilldetect.experiments.stages`, each timed, with progress bars):

1. ``data``: load train/evaluation images (uint8) and scale them by instance;
2. ``teacher``: train — or load from the on-disk cache, keyed by its configuration — a teacher;
3. ``detector``: distil a much smaller student on the teacher's outputs for the unlabelled
   training set;
4. per severity, ``evaluate_severity``: corrupt ``n_eval`` evaluation images per corruption type,
   split them into *harmful* (teacher right on the clean image, wrong on the corrupted one) and
   *harmless* (right on both), AUROC and ROC of the distillation score and of the teacher's own
   uncertainty (predictive entropy, 1 - max probability);
5. per severity, ``drift_stage``: batches contaminated with a growing fraction of harmful (resp.
   harmless) corrupted instances against clean references, over ``n_draws`` reference draws;
   every test on the same batches — the tail-weighted rank test (:class:`~distilldetect.cd.
   TailRankDrift`, the study's default), KS one- and two-sided on the score, KS and the tail test
   on the teacher's entropy, and black-box shift detection (BBSD: KS on the softmax,
   Bonferroni); and the power by batch size;
6. ``outputs``: results.json, report.md, report.html and figures (:mod:`.report`).

``run(StudyConfig(...))`` returns a :class:`StudyResults`; the CLI is a thin face on it.
The test set is never used to choose settings: ``eval_split='validation'`` runs the whole
study on a held-out part of the training data instead, for tuning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from . import stages
from .config import (
    DATASETS,
    DETECTOR_LABELS,
    DETECTORS,
    DRIFT_TESTS,
    FRACTIONS,
    STUDENTS,
    TEACHERS,
    StudyConfig,
    StudyResults,
    jsonable,
    quick_config,
)
from .outputs import OutputDir, default_out_dir, lap_timer, prepare_output_dir

__all__ = [
    "DATASETS",
    "DETECTORS",
    "DETECTOR_LABELS",
    "DRIFT_TESTS",
    "FRACTIONS",
    "STUDENTS",
    "TEACHERS",
    "StudyConfig",
    "StudyResults",
    "default_out_dir",
    "preflight",
    "prepare_output_dir",
    "quick_config",
    "run",
    "to_model_input",
]

logger = logging.getLogger(__name__)

to_model_input = stages.to_model_input


def preflight(cfg: StudyConfig) -> None:
    """Every check that needs no long work: settings, output folder, data files, teacher, cache.

    Raises ValueError / TypeError / OSError with a one-line message.
    """
    cfg.validate()
    stages.check_teacher_path(cfg)
    data = stages.load_data(dataclasses.replace(cfg, verbose=False), raw_only=True)
    stages.check_teacher_fits(cfg, data)
    stages.check_sizes(cfg, len(data.x_eval_u8))
    prepare_output_dir(cfg.out if cfg.out else default_out_dir(cfg.dataset))
    if not stages.has_real_cifar10c(cfg) and cfg.dataset == "cifar10":
        logger.info("no CIFAR-10-C files found: the corruptions will be generated")


def run(
    config: StudyConfig | None = None, *, _corruption_cache: dict | None = None, **overrides: Any
) -> StudyResults:
    """Run the harmful-drift study and write its outputs.

    Parameters
    ----------
    config
        A :class:`StudyConfig`; keyword ``overrides`` replace its fields.

    Returns
    -------
    StudyResults
        Also written to ``<out>/results.json`` with ``report.md``, ``report.html`` and the
        figures.

    Examples
    --------
    >>> results = run(quick_config(out="results/quick"))  # doctest: +SKIP
    >>> results.severities["3"]["auroc"]["distillation"]  # doctest: +SKIP
    """
    cfg = dataclasses.replace(config or StudyConfig(), **overrides).validate()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    out = OutputDir(cfg.out if cfg.out else default_out_dir(cfg.dataset))
    log = logger.info
    lap = lap_timer(timings)

    t = time.perf_counter()
    data = stages.load_data(cfg)
    log(
        f"data: {cfg.dataset}, {len(data.x_train)} training and {len(data.x_eval)} evaluation "
        f"images ({data.split})"
    )
    t = lap("data", t)

    teacher = stages.get_teacher(cfg, data)
    log(f"teacher: {teacher.how}; accuracy on the {cfg.eval_split} set {teacher.accuracy:.4f}")
    t = lap("teacher", t)

    detector = stages.fit_detector(cfg, data, teacher)
    log(
        f"student: {detector.student_name} ({detector.n_params} parameters), agreement with the "
        f"teacher {detector.agreement:.4f}"
    )
    t = lap("student", t)

    n_images = len(data.x_eval)
    draws = stages.reference_draws(cfg, n_images)
    rows_per_type = stages.corruption_rows(cfg, n_images)
    real = stages.has_real_cifar10c(cfg)
    source = "CIFAR-10-C files" if real else "generated (distilldetect.corruptions)"
    n_eval = len(next(iter(rows_per_type.values())))
    if n_eval < cfg.n_eval:
        notes.append(f"n_eval reduced to {n_eval}: only {n_images} evaluation images")
    log(f"corruptions: {len(rows_per_type)} types, {source}, {n_eval} images each")
    config = {
        **cfg.to_dict(),
        **_architectures(cfg, data, teacher),
        "student_parameters": detector.n_params,
        "teacher": teacher.how,
        "eval_split": data.split,
        "corruption_source": source,
        "n_ref": len(draws[0]),
    }
    severities: dict[str, dict[str, Any]] = {}
    t_drift = 0.0
    for severity in cfg.severities:
        entry, harmful, harmless = stages.evaluate_severity(
            cfg, severity, data, teacher, detector, rows_per_type, real, _corruption_cache
        )
        t0 = time.perf_counter()
        entry["drift"], entry["power_by_batch_size"] = stages.drift_stage(
            cfg,
            severity,
            teacher,
            detector,
            {"harmful": harmful, "harmless": harmless},
            draws,
            notes,
        )
        t_drift += time.perf_counter() - t0
        severities[str(severity)] = entry
        log(
            StudyResults(
                cfg.dataset, teacher.accuracy, detector.agreement, config, severities
            ).headline(str(severity))
        )
    t = lap("corruptions_and_drift", t)
    timings["of_which_drift_tests"] = round(t_drift, 2)

    results = StudyResults(
        dataset=cfg.dataset,
        teacher_accuracy=teacher.accuracy,
        student_agreement=detector.agreement,
        config=config,
        severities=severities,
        timings=timings,
        notes=notes,
        out=str(out.path),
    )
    from .report import write_outputs

    write_outputs(results, out)
    # the fitted detector, thresholded at the 95th percentile of the first clean reference
    detector.ad.infer_threshold(data.x_eval[draws[0]], threshold_perc=95.0, batch_size=512)
    out.save_detector(detector.ad, "detector")
    log(f"detector saved in {out.path / 'detector'} (load_detector, distilldetect serve)")
    lap("outputs", t)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    out.write("results.json", json.dumps(jsonable(results.to_dict()), indent=2))
    out.finish()
    log(f"done in {timings['total']:.0f} s; results in {out.path}")
    return results


def _architectures(cfg: StudyConfig, data: stages.StudyData, teacher: stages.Teacher) -> dict:
    """What the teacher and student really are, for results.json's config."""
    if cfg.pretrained:
        from ..fetching import pretrained_info

        recipe = pretrained_info("fashion_mnist")["recipe"]
        student = recipe["student"]
        return {
            "teacher_arch": {"name": recipe["teacher"]["builder"], "kwargs": recipe["teacher"]["kwargs"]},
            "student": student["builder"],
            "student_kwargs": student["kwargs"],
            "pretrained_recipe": recipe,
        }  # fmt: skip
    if cfg.teacher_path is not None:
        teacher_arch = {
            "name": "your own",
            "path": cfg.teacher_path,
            "weights": cfg.teacher_weights,
            "class": type(teacher.model).__name__,
        }
    else:
        name, kwargs = cfg.teacher_spec(data.input_shape, data.num_classes)
        teacher_arch = {"name": name, "kwargs": kwargs}
    student, student_kwargs = cfg.student_spec(data.input_shape, data.num_classes)
    return {"teacher_arch": teacher_arch, "student": student, "student_kwargs": student_kwargs}


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json written by :func:`run`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
