"""A restricted pickle reader: plain data out of a pickle, without running any of it.

alibi-detect saves detector settings as `dill <https://github.com/uqfoundation/dill>`_ pickles
(``meta.dill``, ``ModelDistillation.dill``). Loading a pickle with :mod:`pickle` or ``dill``
calls whatever functions the file names, so a hostile file runs any code it likes. This module
never does that: it walks the opcode stream itself (decoded by :func:`pickletools.genops`, which
only parses) on its own stack machine, and builds only

* ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``bytearray``, ``tuple``, ``list``,
  ``dict``, ``set``, ``frozenset``;
* numpy scalars of a plain numeric dtype (``numpy.core.multiarray.scalar`` with a
  ``numpy.dtype``; numpy 2 writes ``numpy._core.multiarray.scalar``), as a threshold is pickled;
* the few builtins that protocols 0-3 use to spell the plain types above
  (``_codecs.encode(text, 'latin1')`` for bytes, ``builtins.set`` / ``frozenset`` /
  ``bytearray``).

These are rebuilt by this module's own code (the named functions are never imported or called).
Any other global (``GLOBAL``, ``STACK_GLOBAL``, ``INST``), any call of something else
(``REDUCE``, ``BUILD``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``), persistent ids, extension codes
and out-of-band buffers are refused with :class:`UnsafePickleError`, which names the file, the
global and its byte offset. A truncated or malformed stream raises
:class:`~distilldetect.files.DetectorFormatError`. Protocols 0 to 5 are read.

:func:`pickle_globals` lists the globals a pickle names (for error messages that say what a
refused file holds), again without calling anything.

Examples
--------
>>> import pickle
>>> read_pickle(pickle.dumps({"threshold": 0.5, "loss_type": "kld"}), "state.dill")
{'threshold': 0.5, 'loss_type': 'kld'}
>>> read_pickle(pickle.dumps(print), "evil.dill")
Traceback (most recent call last):
...
distilldetect.saving.pickle_reader.UnsafePickleError: evil.dill: refusing to load this pickle: ...
"""

from __future__ import annotations

import io
import math
import os
import pickletools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..files import DetectorFormatError

__all__ = [
    "UnsafePickleError",
    "MAX_PICKLE_BYTES",
    "MAX_NODES",
    "read_pickle",
    "read_pickle_file",
    "pickle_globals",
]

#: Largest pickle file read (settings files are a few hundred bytes).
MAX_PICKLE_BYTES: int = 16 * 2**20
#: Most values (counting shared ones each time they are reached) a pickle may expand to.
MAX_NODES: int = 1_000_000
#: Highest pickle protocol read.
HIGHEST_PROTOCOL: int = 5


class UnsafePickleError(DetectorFormatError):
    """A pickle names a global or an operation that could run code; nothing was run."""


# ============================================================================ value builders
class _Mark:
    """The stack marker pushed by ``MARK``."""


class _Global:
    """A global that a handler rebuilds (never the real object: nothing is imported)."""

    __slots__ = ("name", "call")

    def __init__(self, name: str, call: Callable[[tuple, str], Any]) -> None:
        self.name, self.call = name, call


class _DtypeSpec:
    """A ``numpy.dtype(name, False, True)`` waiting for its ``BUILD`` state (the byte order)."""

    __slots__ = ("name", "order", "built")

    def __init__(self, name: str) -> None:
        self.name, self.order, self.built = name, "=", False

    def dtype(self) -> np.dtype:
        base = np.dtype(_DTYPE_NAMES[self.name])
        return base if self.order in ("=", "|") else base.newbyteorder(self.order)


class _Opaque:
    """What :func:`pickle_globals` puts in place of anything it does not build."""

    __slots__ = ()


# Plain numeric dtypes, by the name numpy pickles them with.
_DTYPE_NAMES: dict[str, str] = {
    "b1": "bool",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "c8": "complex64",
    "c16": "complex128",
}


class _Refusal(Exception):
    """Raised by handlers; turned into :class:`DetectorFormatError` with the file and offset."""


def _make_dtype(args: tuple, name: str) -> _DtypeSpec:
    if (
        len(args) != 3
        or not isinstance(args[0], str)
        or args[0] not in _DTYPE_NAMES
        or args[1] is not False
        or args[2] is not True
    ):
        raise _Refusal(
            f"{name}{_short(args)} is not a plain numeric dtype (expected one of "
            f"{sorted(_DTYPE_NAMES)})"
        )
    return _DtypeSpec(args[0])


def _make_scalar(args: tuple, name: str) -> Any:
    if len(args) != 2 or not isinstance(args[0], _DtypeSpec) or not isinstance(args[1], bytes):
        raise _Refusal(f"{name} must be called with (a numpy.dtype, bytes), got {_short(args)}")
    spec, raw = args
    if not spec.built:
        raise _Refusal(f"{name} was given a numpy.dtype without its state (BUILD)")
    dtype = spec.dtype()
    if len(raw) != dtype.itemsize:
        raise _Refusal(f"{name}: {len(raw)} bytes for a scalar of dtype {dtype} ({dtype.itemsize})")
    return np.frombuffer(raw, dtype=dtype).copy()[0]


def _make_bytes(args: tuple, name: str) -> bytes:
    # Protocols 0-2 spell bytes as _codecs.encode(text, 'latin1').
    if len(args) == 1 and isinstance(args[0], str):
        args = (args[0], "utf-8")
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise _Refusal(f"{name} is only read as encode(text, 'latin1'), got {_short(args)}")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError as err:
        raise _Refusal(f"{name}: {err}") from None


def _from_iterable(kind: type) -> Callable[[tuple, str], Any]:
    def make(args: tuple, name: str) -> Any:
        if args == ():
            return kind()
        if len(args) != 1 or not isinstance(args[0], (list, tuple, bytes, str)):
            raise _Refusal(f"{name} is only read with one list argument, got {_short(args)}")
        value = args[0]
        if kind is bytearray:
            if isinstance(value, str):
                raise _Refusal(f"{name} is only read from bytes or a list of ints")
            if isinstance(value, (list, tuple)) and not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 256 for v in value
            ):
                raise _Refusal(f"{name} is only read from bytes or a list of ints")
        elif isinstance(value, (bytes, str)):
            raise _Refusal(f"{name} is only read with a list argument")
        try:
            return kind(value)
        except TypeError as err:  # unhashable members
            raise _Refusal(f"{name}: {err}") from None

    return make


#: (module, name) -> rebuilder. The only globals a pickle may name.
_ALLOWED: dict[tuple[str, str], Callable[[tuple, str], Any]] = {
    ("numpy", "dtype"): _make_dtype,
    ("numpy.core.multiarray", "scalar"): _make_scalar,
    ("numpy._core.multiarray", "scalar"): _make_scalar,
    ("_codecs", "encode"): _make_bytes,
    ("builtins", "set"): _from_iterable(set),
    ("__builtin__", "set"): _from_iterable(set),
    ("builtins", "frozenset"): _from_iterable(frozenset),
    ("__builtin__", "frozenset"): _from_iterable(frozenset),
    ("builtins", "bytearray"): _from_iterable(bytearray),
    ("__builtin__", "bytearray"): _from_iterable(bytearray),
}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_names() -> str:
    return ", ".join(sorted({f"{m}.{n}" for m, n in _ALLOWED}))


# ============================================================================ the machine
class _Machine:
    """The pickle virtual machine, restricted: every opcode handled here builds plain data."""

    def __init__(self, path: str, describe: bool = False) -> None:
        self.path = path
        self.describe = describe  # pickle_globals: record globals, build nothing
        self.globals: list[str] = []
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    # --------------------------------------------------------------- errors
    def unsafe(self, what: str, pos: int) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self.path}: refusing to load this pickle: {what} (at byte {pos}). Loading it "
            "with pickle or dill could run arbitrary code; only plain data (None, bool, int, "
            "float, str, bytes, tuple, list, dict, set) and numpy scalars are read, and nothing "
            f"is ever called (allowed globals: {_allowed_names()})"
        )

    def bad(self, what: str, pos: int) -> DetectorFormatError:
        return DetectorFormatError(f"{self.path} is not a valid pickle: {what} (at byte {pos})")

    # --------------------------------------------------------------- stack helpers
    def pop(self, pos: int) -> Any:
        if not self.stack:
            raise self.bad("the stack is empty", pos)
        value = self.stack.pop()
        if isinstance(value, _Mark):
            raise self.bad("a MARK was used as a value", pos)
        return value

    def top(self, pos: int) -> Any:
        if not self.stack or isinstance(self.stack[-1], _Mark):
            raise self.bad("the stack is empty", pos)
        return self.stack[-1]

    def pop_mark(self, pos: int) -> list[Any]:
        if not self.metastack:
            raise self.bad("no MARK to pop to", pos)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def global_(self, module: Any, name: Any, pos: int) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.bad("STACK_GLOBAL needs two strings", pos)
        full = f"{module}.{name}"
        if self.describe:
            self.globals.append(full)
            return _Opaque()
        handler = _ALLOWED.get((module, name))
        if handler is None:
            raise self.unsafe(f"it names the global {full}, which is not allowed", pos)
        return _Global(full, handler)

    def call(self, func: Any, args: Any, pos: int, opcode: str) -> Any:
        if self.describe:
            return _Opaque()
        if not isinstance(func, _Global):
            raise self.unsafe(f"{opcode} calls {_short(func)}, which is not an allowed global", pos)
        if not isinstance(args, tuple):
            raise self.bad(f"{opcode} arguments must be a tuple, got {type(args).__name__}", pos)
        try:
            return func.call(args, func.name)
        except _Refusal as err:
            raise self.unsafe(str(err), pos) from None

    # --------------------------------------------------------------- run
    def run(self, data: bytes) -> Any:
        stream = io.BytesIO(data)
        ops = pickletools.genops(stream)
        stopped_at: int | None = None
        while True:
            try:
                opcode, arg, pos = next(ops)
            except StopIteration:
                break
            except (ValueError, UnicodeDecodeError, OverflowError) as err:
                raise DetectorFormatError(
                    f"{self.path} is not a valid pickle (truncated or damaged): {err}"
                ) from None
            pos = int(pos or 0)
            if opcode.name == "STOP":
                stopped_at = pos
                break
            self.step(opcode.name, arg, pos)
        if stopped_at is None:
            raise DetectorFormatError(
                f"{self.path} is not a valid pickle: it ends before its STOP opcode (truncated)"
            )
        if stream.tell() != len(data):
            raise DetectorFormatError(
                f"{self.path} is not a valid pickle: {len(data) - stream.tell()} bytes follow "
                "its STOP opcode"
            )
        result = self.pop(stopped_at)
        if self.stack or self.metastack:
            raise self.bad("values are left on the stack at STOP", stopped_at)
        return result

    def step(self, name: str, arg: Any, pos: int) -> None:  # noqa: C901 - one opcode table
        s = self.stack
        # ---------------------------------------------------------- framing, protocol
        if name == "PROTO":
            if not isinstance(arg, int) or arg > HIGHEST_PROTOCOL:
                raise self.bad(f"unsupported pickle protocol {arg!r}", pos)
        elif name == "FRAME":
            pass
        # ---------------------------------------------------------- constants
        elif name == "NONE":
            s.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            s.append(name == "NEWTRUE")
        elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            s.append(arg)  # INT decodes "I01"/"I00" as True/False itself
        elif name in ("FLOAT", "BINFLOAT"):
            s.append(float(arg))
        elif name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):
            s.append(str(arg))  # Python 2 str, decoded as pickle's default (ASCII / latin-1)
        elif name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            s.append(bytes(arg))
        elif name == "BYTEARRAY8":
            s.append(bytearray(arg))
        elif name in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            s.append(str(arg))
        # ---------------------------------------------------------- containers
        elif name == "EMPTY_LIST":
            s.append([])
        elif name == "EMPTY_TUPLE":
            s.append(())
        elif name == "EMPTY_DICT":
            s.append({})
        elif name == "EMPTY_SET":
            s.append(set())
        elif name == "MARK":
            self.metastack.append(s)
            self.stack = []
        elif name == "TUPLE":
            items = self.pop_mark(pos)
            self.stack.append(tuple(items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop(pos) for _ in range(n)][::-1]
            s.append(tuple(items))
        elif name == "LIST":
            items = self.pop_mark(pos)
            self.stack.append(items)
        elif name == "DICT":
            items = self.pop_mark(pos)
            self.stack.append(self.set_items({}, items, pos))
        elif name == "FROZENSET":
            items = self.pop_mark(pos)
            self.stack.append(self.hashed(frozenset, items, pos))
        elif name == "APPEND":
            value = self.pop(pos)
            self.container(list, pos).append(value)
        elif name == "APPENDS":
            items = self.pop_mark(pos)
            self.container(list, pos).extend(items)
        elif name == "SETITEM":
            value, key = self.pop(pos), self.pop(pos)
            self.set_items(self.container(dict, pos), [key, value], pos)
        elif name == "SETITEMS":
            items = self.pop_mark(pos)
            self.set_items(self.container(dict, pos), items, pos)
        elif name == "ADDITEMS":
            items = self.pop_mark(pos)
            target = self.container(set, pos)
            target |= self.hashed(set, items, pos) if not self.describe else set()
        # ---------------------------------------------------------- stack and memo
        elif name == "POP":
            if s and not isinstance(s[-1], _Mark):
                s.pop()
            elif s:
                raise self.bad("POP of a MARK", pos)
            else:
                self.pop_mark(pos)
        elif name == "POP_MARK":
            self.pop_mark(pos)
        elif name == "DUP":
            s.append(self.top(pos))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = self.top(pos)
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top(pos)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise self.bad(f"memo entry {arg} is read before it is written", pos)
            s.append(self.memo[int(arg)])
        # ---------------------------------------------------------- globals and calls
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            s.append(self.global_(module, attr, pos))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(pos), self.pop(pos)
            s.append(self.global_(module, attr, pos))
        elif name == "REDUCE":
            args, func = self.pop(pos), self.pop(pos)
            s.append(self.call(func, args, pos, "REDUCE"))
        elif name == "BUILD":
            state = self.pop(pos)
            self.build(self.top(pos), state, pos)
        elif name in ("NEWOBJ", "NEWOBJ_EX"):
            if name == "NEWOBJ_EX":
                self.pop(pos)  # kwargs
            args, cls = self.pop(pos), self.pop(pos)
            if not self.describe:
                raise self.unsafe(f"{name} creates an instance of {_describe_callee(cls)}", pos)
            s.append(_Opaque())
        elif name == "OBJ":
            items = self.pop_mark(pos)
            if not self.describe:
                callee = _describe_callee(items[0]) if items else "nothing"
                raise self.unsafe(f"OBJ creates an instance of {callee}", pos)
            self.stack.append(_Opaque())
        elif name == "INST":
            self.pop_mark(pos)
            module, _, attr = str(arg).partition(" ")
            if not self.describe:
                raise self.unsafe(f"INST creates an instance of the global {module}.{attr}", pos)
            self.globals.append(f"{module}.{attr}")
            self.stack.append(_Opaque())
        elif name in ("PERSID", "BINPERSID"):
            raise self.unsafe("it uses a persistent id, which only code can resolve", pos)
        elif name in ("EXT1", "EXT2", "EXT4"):
            raise self.unsafe(f"it names a global through the extension registry (code {arg})", pos)
        elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
            raise self.unsafe("it uses out-of-band buffers (protocol 5), which are not read", pos)
        else:  # pragma: no cover - genops knows no other opcodes today
            raise self.bad(f"unknown opcode {name}", pos)

    # --------------------------------------------------------------- container helpers
    def container(self, kind: type, pos: int) -> Any:
        target = self.top(pos)
        if self.describe and isinstance(target, _Opaque):
            return _Sink()
        if type(target) is not kind:
            what = {list: "APPEND", dict: "SETITEM", set: "ADDITEMS"}[kind]
            if isinstance(target, (_Global, _DtypeSpec)) or not isinstance(
                target, (list, dict, set, tuple, str, bytes, int, float, type(None))
            ):
                raise self.unsafe(f"{what} on {_describe_callee(target)}", pos)
            raise self.bad(f"{what} on a {type(target).__name__}", pos)
        return target

    def set_items(self, target: Any, items: list[Any], pos: int) -> Any:
        if len(items) % 2:
            raise self.bad("an odd number of items for a dict", pos)
        if isinstance(target, _Sink):
            return target
        for i in range(0, len(items), 2):
            key = items[i]
            if self.describe and isinstance(key, _Opaque):
                continue
            try:
                target[key] = items[i + 1]
            except TypeError as err:
                raise self.bad(f"a dict key is not hashable ({err})", pos) from None
        return target

    def hashed(self, kind: type, items: list[Any], pos: int) -> Any:
        try:
            return kind(items)
        except TypeError as err:
            if self.describe:
                return kind()
            raise self.bad(f"a set member is not hashable ({err})", pos) from None

    def build(self, target: Any, state: Any, pos: int) -> None:
        if self.describe:
            return
        if isinstance(target, _DtypeSpec) and not target.built:
            if (
                isinstance(state, tuple)
                and len(state) in (8, 9)
                and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)
                and state[5:8] == (-1, -1, 0)
                and (len(state) == 8 or state[8] is None)
            ):
                target.order, target.built = state[1], True
                return
            raise self.unsafe(f"numpy.dtype state {_short(state)} is not a plain dtype's", pos)
        raise self.unsafe(f"BUILD sets the state of {_describe_callee(target)}", pos)


class _Sink:
    """Swallows APPEND/SETITEM into opaque objects (for :func:`pickle_globals`)."""

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __ior__(self, other: Any) -> _Sink:
        return self


def _describe_callee(value: Any) -> str:
    if isinstance(value, _Global):
        return f"the global {value.name}"
    if isinstance(value, _DtypeSpec):
        return f"numpy.dtype({value.name!r})"
    return f"a {type(value).__name__}"


def _check_size(value: Any, path: str) -> None:
    """Refuse cycles and shared structure that would expand beyond :data:`MAX_NODES`."""
    seen = 0
    stack: list[tuple[Any, bool]] = [(value, False)]
    open_ids: set[int] = set()
    while stack:
        item, leaving = stack.pop()
        if leaving:
            open_ids.discard(id(item))
            continue
        seen += 1
        if seen > MAX_NODES:
            raise DetectorFormatError(
                f"{path}: the pickle expands to more than {MAX_NODES} values (shared references "
                "repeated); refusing it"
            )
        if isinstance(item, (list, tuple, dict, set, frozenset)):
            if id(item) in open_ids:
                raise DetectorFormatError(
                    f"{path}: the pickle holds a container that contains itself; refusing it"
                )
            open_ids.add(id(item))
            stack.append((item, True))
            children = (
                [x for kv in item.items() for x in kv] if isinstance(item, dict) else list(item)
            )
            stack.extend((child, False) for child in children)
        elif isinstance(item, float) and not math.isfinite(item):
            continue  # NaN/inf are plain data; callers check what they need


# ============================================================================ public API
def read_pickle(data: bytes, path: str | os.PathLike = "<pickle>") -> Any:
    """The plain data in the pickle ``data``, built without calling anything it names.

    Parameters
    ----------
    data
        The bytes of a pickle (protocol 0-5, as pickle or dill write them).
    path
        The file the bytes came from, for messages.

    Returns
    -------
    Any
        None, bool, int, float, str, bytes, bytearray, tuple, list, dict, set, frozenset and
        numpy scalars of plain numeric dtypes, nested.

    Raises
    ------
    UnsafePickleError
        If the pickle names any other global or calls anything else; the message names the
        file, the global and the byte offset. Nothing was run.
    DetectorFormatError
        If the bytes are not a complete, well-formed pickle (truncated, garbage, bytes after
        the end, a container that contains itself).

    Examples
    --------
    >>> import pickle
    >>> import numpy as np
    >>> read_pickle(pickle.dumps({"threshold": np.float64(0.25)}, protocol=2))["threshold"]
    np.float64(0.25)
    >>> read_pickle(b"\\x80\\x04N", "cut.dill")
    Traceback (most recent call last):
    ...
    distilldetect.files.DetectorFormatError: cut.dill is not a valid pickle (truncated or damaged): ...
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    where = os.fspath(path)
    data = bytes(data)
    if not data:
        raise DetectorFormatError(f"{where} is empty: not a pickle")
    value = _Machine(where).run(data)
    _check_size(value, where)
    return value


def read_pickle_file(path: str | os.PathLike, limit: int = MAX_PICKLE_BYTES) -> Any:
    """:func:`read_pickle` of a regular file of at most ``limit`` bytes (via
    :func:`distilldetect.files.read_limited`)."""
    path = Path(path)
    return read_pickle(files.read_limited(path, limit, "a pickle of settings"), path)


def pickle_globals(data: bytes, path: str | os.PathLike = "<pickle>") -> list[str]:
    """The globals (``module.name``) that a pickle names, in order, without calling any.

    For messages: "this file holds a pickled X". The stream must still be well formed.

    Examples
    --------
    >>> import pickle, collections
    >>> pickle_globals(pickle.dumps(collections.OrderedDict(a=1)))
    ['collections.OrderedDict']
    """
    machine = _Machine(os.fspath(path), describe=True)
    machine.run(bytes(data))
    return machine.globals


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def describe_globals(names: list[str], limit: int = 4) -> str:
    """A short, printable list of global names for messages (odd names are escaped)."""
    shown = []
    for name in dict.fromkeys(names):
        shown.append(name if _IDENT.match(name) else repr(name))
        if len(shown) == limit:
            break
    rest = len(dict.fromkeys(names)) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest > 0 else "")
