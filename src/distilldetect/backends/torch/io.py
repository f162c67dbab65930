"""Saving and loading torch modules for :mod:`distilldetect.saving`: safetensors, never pickle.

A module is saved as its state dict in one safetensors file (a JSON header and raw tensor
bytes). Tensors that are the same tensor under several names (tied weights) are stored once and
recorded as aliases. Non-tensor state (``get_extra_state``), sparse, quantized and meta tensors
cannot be stored this way and are refused when saving.

Architectures: a module of this library's zoo (:mod:`distilldetect.backends.torch.models`)
carries ``builder_config = {'name': ..., 'kwargs': ...}``; when rebuilding from it gives the
same class, the same submodules with the same settings (their ``repr``) and the same tensor
names and shapes (checked at save time on the ``meta`` device, without allocating memory), the
builder name and JSON arguments are saved and
:func:`load_model` rebuilds the module by calling the builder. Any other module needs to be
passed to :func:`load_model` (``model=`` / ``distilled_model=`` of
:func:`~distilldetect.saving.load_detector`), which loads the weights into it.

Why not ``torch.export`` for other modules: an architecture is code, and in torch 2.13
``torch.export.load`` can run code from the file. Its ``.pt2`` archive decides per weight and
constant whether the payload is pickled (``torch.load(..., weights_only=False)``); opaque
constants go through ``pickle.loads`` and script objects through ``torch._C._pickle_load_obj``;
serialized example inputs fall back to ``torch.load(weights_only=False)`` when the safe load
fails; and the JSON graph names its call targets as attribute paths resolved from ``torch``,
``operator`` and ``math`` (``torch.os.system`` resolves), so even the pickle-free parts would
call whatever the file names when the program runs. Its docstring says: never load data from an
untrusted source. Loading weights into a module built by the caller is the only safe option.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ... import files
from ...base import describe
from ..zoo_args import check_against_weights

__all__ = ["save_model", "load_model"]

logger = logging.getLogger(__name__)

FORMAT: str = "safetensors"
_ENTRY_KEYS = {
    "name",
    "framework",
    "format",
    "files",
    "class",
    "architecture",
    "tensors",
    "aliases",
    "frozen",
    "training",
}
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
_MAX_DIFFERENCES = 5
#: The saved detector's configuration file, named in messages.
_CONFIG = "config.json"


# ===================================================================================== saving
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (
        t.device,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def _state_for_saving(
    model: torch.nn.Module, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU copies of the state dict, each tensor once; ``aliases`` maps the rest."""
    state: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{name} cannot be saved: its state dict entry {key!r} is {describe(value)} "
                "(extra state from get_extra_state), which only pickle could store"
            )
        if value.layout != torch.strided or value.is_quantized or value.is_meta:
            raise ValueError(
                f"{name} cannot be saved: state dict entry {key!r} is a "
                f"{'meta' if value.is_meta else str(value.layout)} tensor; safetensors stores "
                "dense tensors with data"
            )
        if value.numel():
            skey = _storage_key(value)
            if skey in first:
                aliases[key] = first[skey]
                continue
            first[skey] = key
        state[key] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    return state, aliases


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tuples to lists, numpy scalars to Python), or raise."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v) for k, v in value.items()}
    raise TypeError(f"{describe(value)} is not JSON data")


def _signature(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in model.state_dict().items()}


def _build(name: str, kwargs: dict[str, Any], device: str) -> torch.nn.Module:
    """Build a zoo model without touching the caller's random state."""
    from .models import build

    with torch.random.fork_rng(devices=[]), torch.device(device):
        return build(name, **kwargs)


def _architecture(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> dict:
    """The zoo builder and arguments that rebuild ``model``, or why there are none."""
    config = getattr(model, "builder_config", None)
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    none = {"kind": "none", "reason": f"{cls} is not a model of distilldetect's zoo"}
    if not isinstance(config, dict) or set(config) != {"name", "kwargs"}:
        return none
    try:
        kwargs = _jsonable(config["kwargs"])
        if not isinstance(config["name"], str) or not isinstance(kwargs, dict):
            return none
        rebuilt = _build(config["name"], kwargs, "meta")
    except Exception as err:  # a builder_config that no longer rebuilds: weights only
        none["reason"] = f"its builder_config does not rebuild it ({err})"
        logger.warning("%s: only its weights are saved: %s", name, none["reason"])
        return none
    floats = {_dtype_name(t.dtype) for t in state.values() if t.is_floating_point()}
    same_shapes = {k: s for k, (s, _) in _signature(rebuilt).items()} == {
        k: s for k, (s, _) in _signature(model).items()
    }
    # Same class, same submodules and their settings (repr), same tensors, no forward patched
    # onto an instance: then the builder makes this module (the weights come from the file).
    patched = any("forward" in vars(m) for m in model.modules())
    same_modules = repr(rebuilt) == repr(model)
    if (
        type(rebuilt) is not type(model)
        or not same_shapes
        or not same_modules
        or patched
        or len(floats) > 1
    ):
        none["reason"] = (
            f"{name} was changed after it was built from its builder_config "
            f"({config['name']!r}): rebuilding would not give the same module"
        )
        logger.warning("%s: only its weights are saved: %s", name, none["reason"])
        return none
    return {
        "kind": "zoo",
        "builder": config["name"],
        "kwargs": kwargs,
        "dtype": floats.pop() if floats else None,
    }


def save_model(model: torch.nn.Module, directory: Path, name: str) -> dict[str, Any]:
    """Write ``model``'s weights to ``directory / f'{name}.safetensors'``; return its entry.

    Parameters
    ----------
    model
        The torch module.
    directory
        Existing folder to write into.
    name
        ``'model'`` or ``'distilled_model'``: the file name stem and the keyword of
        :func:`~distilldetect.saving.load_detector` that can supply the module.

    Returns
    -------
    dict
        JSON-able entry: ``name``, ``framework``, ``format``, ``files``, ``class`` (for
        messages only, never imported), ``architecture`` (zoo builder or ``'none'``),
        ``tensors`` (name → shape, dtype), ``aliases`` (tied names), ``frozen`` (parameters
        without gradients), ``training`` (the module's mode).

    Examples
    --------
    >>> import tempfile
    >>> from distilldetect.backends.torch.models import mlp
    >>> entry = save_model(mlp((4,), 2, (3,)), Path(tempfile.mkdtemp()), "model")
    >>> entry["architecture"]["builder"], entry["files"]
    ('mlp', ['model.safetensors'])
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {describe(model)}")
    state, aliases = _state_for_saving(model, name)
    try:
        data = safetensors.torch.save(state)
    except Exception as err:  # unsupported dtype...
        raise ValueError(f"{name} cannot be saved as safetensors: {err}") from err
    file = f"{name}.safetensors"
    files.write_new(directory / file, data)
    return {
        "name": name,
        "framework": "pytorch",
        "format": FORMAT,
        "files": [file],
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "architecture": _architecture(model, state, name),
        "tensors": {
            k: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for k, t in state.items()
        },
        "aliases": aliases,
        "frozen": [k for k, p in model.named_parameters() if not p.requires_grad],
        "training": bool(model.training),
    }


# ==================================================================================== loading
def _error(msg: str) -> files.DetectorFormatError:
    return files.DetectorFormatError(msg)


def _check_entry(entry: Any, where: str) -> None:
    keys = set(entry) - {"checksums"} if isinstance(entry, dict) else set()
    if keys != _ENTRY_KEYS:
        raise _error(
            f"{where}: a torch model entry must have keys {sorted(_ENTRY_KEYS)}, got {sorted(keys)}"
        )
    if entry["format"] != FORMAT or not (
        isinstance(entry["files"], list) and len(entry["files"]) == 1
    ):
        raise _error(f"{where}: expected format {FORMAT!r} with one file")
    tensors = entry["tensors"]
    if not isinstance(tensors, dict) or not all(
        isinstance(v, dict)
        and set(v) == {"shape", "dtype"}
        and isinstance(v["dtype"], str)
        and isinstance(v["shape"], list)
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v["shape"])
        for v in tensors.values()
    ):
        raise _error(f"{where}: 'tensors' must map names to {{'shape': [...], 'dtype': str}}")
    aliases = entry["aliases"]
    if not isinstance(aliases, dict) or not all(
        isinstance(v, str) and v in tensors and k not in tensors for k, v in aliases.items()
    ):
        raise _error(f"{where}: 'aliases' must map extra names to names in 'tensors'")
    if not isinstance(entry["frozen"], list) or not all(
        isinstance(k, str) for k in entry["frozen"]
    ):
        raise _error(f"{where}: 'frozen' must be a list of parameter names")
    if not isinstance(entry["class"], str) or not isinstance(entry["name"], str):
        raise _error(f"{where}: 'class' and 'name' must be strings")
    if not isinstance(entry["training"], bool):
        raise _error(f"{where}: 'training' must be true or false")
    if not isinstance(entry["architecture"], dict):
        raise _error(f"{where}: 'architecture' must be an object")


def _read_tensors(directory: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Read, re-verify and parse the safetensors file; check it against the entry."""
    file = entry["files"][0]
    path = directory / file
    checksums = entry.get("checksums") or {}
    data = files.read_checked(path, checksums[file]) if file in checksums else path.read_bytes()
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # safetensors' own error types; never a pickle fallback
        raise _error(f"{path} is not a valid safetensors file: {err}") from None
    expected = {k: (v["shape"], v["dtype"]) for k, v in entry["tensors"].items()}
    got = {k: (list(t.shape), _dtype_name(t.dtype)) for k, t in tensors.items()}
    if got != expected:
        raise _error(
            f"{path} does not hold the tensors {_CONFIG} lists: "
            + _differences(expected, got, "config", "file")
        )
    return tensors


def _differences(
    expected: dict[str, tuple[Any, Any]], got: dict[str, tuple[Any, Any]], a: str, b: str
) -> str:
    lines = []
    for k in sorted(set(expected) - set(got))[:_MAX_DIFFERENCES]:
        lines.append(f"{k!r} missing from the {b}")
    for k in sorted(set(got) - set(expected))[:_MAX_DIFFERENCES]:
        lines.append(f"unexpected {k!r} in the {b}")
    for k in sorted(set(expected) & set(got)):
        if expected[k] != got[k] and len(lines) < 3 * _MAX_DIFFERENCES:
            (se, de), (sg, dg) = expected[k], got[k]
            lines.append(f"{k!r}: {a} has shape {se} dtype {de}, {b} has shape {sg} dtype {dg}")
    return "; ".join(lines)


def _rebuild(entry: dict[str, Any], path: Path, where: str) -> torch.nn.Module:
    arch = entry["architecture"]
    name = entry["name"]
    if arch.get("kind") == "none":
        raise ValueError(
            f"{path} holds the weights of {name}, a {entry['class']}: its architecture is not "
            "saved (only this library's zoo models are rebuilt: storing the code of other "
            "modules needs pickle or torch.export, whose loaders can run arbitrary code). "
            "Build the module and pass it: "
            f"load_detector(..., {name}=module)"
        )
    if set(arch) != {"kind", "builder", "kwargs", "dtype"} or arch["kind"] != "zoo":
        raise _error(f"{where}: unknown architecture description {sorted(arch)}")
    builder, kwargs, dtype = arch["builder"], arch["kwargs"], arch["dtype"]
    if not isinstance(builder, str) or not isinstance(kwargs, dict):
        raise _error(f"{where}: the architecture's builder must be a name and kwargs an object")
    if dtype is not None and dtype not in _FLOAT_DTYPES:
        raise _error(f"{where}: the architecture's dtype must be one of {sorted(_FLOAT_DTYPES)}")
    expected = {k: tuple(v["shape"]) for k, v in entry["tensors"].items()}
    expected.update({k: expected[v] for k, v in entry["aliases"].items()})
    n_scalars = sum(math.prod(s) for s in expected.values())
    try:
        # Bounded by the file before anything is built: a tiny config cannot ask for a giant model.
        check_against_weights(builder, kwargs, len(expected), n_scalars, where)
    except (TypeError, ValueError) as err:
        raise _error(f"{where}: cannot rebuild {name}: {err}") from None
    try:
        # First on the meta device: no memory is allocated for the shapes a config asks for
        # until they are known to match the weights file (whose size bounds them).
        shapes = {k: s for k, (s, _) in _signature(_build(builder, kwargs, "meta")).items()}
    except Exception as err:
        raise _error(f"{where}: cannot rebuild {name} with builder {builder!r}: {err}") from None
    if shapes != expected:
        raise _error(
            f"{path}: the {builder!r} model described in {_CONFIG} has other tensors "
            "than the file: "
            + _differences(
                {k: (s, "") for k, s in expected.items()},
                {k: (s, "") for k, s in shapes.items()},
                "file",
                "rebuilt model",
            )
        )
    model = _build(builder, kwargs, "cpu")
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    return model


def load_model(
    directory: Path, entry: dict[str, Any], model: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Load a module saved by :func:`save_model`, into ``model`` if given.

    Parameters
    ----------
    directory
        The saved detector's folder.
    entry
        The entry :func:`save_model` returned (as read from ``config.json``), optionally with
        ``'checksums'`` ``{file: {'sha256', 'bytes'}}``: then the bytes are checked again just
        before they are parsed.
    model
        A module of the same architecture. Its weights are replaced in place (all or none:
        names, shapes and dtypes are checked first, then loaded strictly).

    Returns
    -------
    torch.nn.Module
        ``model`` with the saved weights, or the rebuilt zoo model (with the saved training
        mode and frozen parameters).

    Raises
    ------
    ValueError
        If the file does not match the entry or ``model``, or no ``model`` is given for a
        module that is not from the zoo (the message names the required keyword).

    Examples
    --------
    >>> import tempfile
    >>> from distilldetect.backends.torch.models import mlp
    >>> d = Path(tempfile.mkdtemp())
    >>> load_model(d, save_model(mlp((4,), 2, (3,)), d, "model")).builder_config["name"]
    'mlp'
    """
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"{directory / _CONFIG} (models[{name!r}])"
    _check_entry(entry, where)
    name = entry["name"]
    path = directory / entry["files"][0]
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module to receive the weights saved in {path}, got "
            f"{describe(model)}"
        )
    tensors = _read_tensors(directory, entry)
    rebuilt = model is None
    if rebuilt:
        model = _rebuild(entry, path, where)
    assert model is not None
    full = dict(tensors)
    full.update({alias: tensors[target] for alias, target in entry["aliases"].items()})
    expected = {k: (list(t.shape), _dtype_name(t.dtype)) for k, t in full.items()}
    got = {k: (list(s), d) for k, (s, d) in _signature(model).items()}
    if got != expected:
        keyword = "" if rebuilt else f" given as {name}="
        raise ValueError(
            f"the module{keyword} does not match the weights in {path}: "
            + _differences(expected, got, "file", "module")
        )
    try:
        with torch.no_grad():
            model.load_state_dict(full, strict=True)
    except RuntimeError as err:  # pragma: no cover - excluded by the checks above
        raise ValueError(f"could not load {path} into {name}: {err}") from err
    if rebuilt:
        frozen = set(entry["frozen"])
        for key, param in model.named_parameters():
            if key in frozen:
                param.requires_grad_(False)
        model.train(entry["training"])
    return model


def load_weights_file(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a safetensors state dict into ``model`` in place: all tensors or none.

    Names, shapes and dtypes are compared before anything is copied; a mismatch raises
    ``ValueError`` listing the differences. Never unpickles (``.pt`` / ``.pth`` files are refused).

    Examples
    --------
    >>> import tempfile
    >>> from distilldetect.backends.torch.models import mlp
    >>> net = mlp((4,), 2, (3,))
    >>> p = Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> safetensors.torch.save_file(net.state_dict(), p)
    >>> load_weights_file(mlp((4,), 2, (3,)), p).builder_config["name"]
    'mlp'
    """
    path = Path(path)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the factory must return a torch.nn.Module, got {describe(model)}")
    if path.suffix != ".safetensors":
        raise ValueError(
            f"{path}: weights must be a .safetensors file (torch's .pt/.pth files are pickles, "
            "which can run code when loaded); convert them with safetensors.torch.save_file"
        )
    data = files.read_limited(path, 2**36, "a weights file")
    try:
        tensors = safetensors.torch.load(data)
    except Exception as err:  # safetensors' own error types
        raise ValueError(f"{path} is not a valid safetensors file: {err}") from None
    expected = {k: (list(t.shape), _dtype_name(t.dtype)) for k, t in tensors.items()}
    got = {k: (list(s), d) for k, (s, d) in _signature(model).items()}
    if got != expected:
        raise ValueError(
            f"the module does not match the weights in {path}: "
            + _differences(expected, got, "file", "module")
        )
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model
