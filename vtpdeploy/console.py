"""Small output helpers every layer shares: silence a noisy library, squash an error to one line, list versions."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Iterator

DEFAULT_PACKAGES = ("torch", "timm", "onnx", "onnxruntime", "openvino", "numpy")


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow warnings, stdout and stderr of a chatty library call (exporters, quantizers); yields the text."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield sink


def one_line(exc: BaseException | str, limit: int = 200) -> str:
    """An exception (or text) as one line of at most `limit` characters, for a one-line error message."""
    text = " ".join(str(exc).split()) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    return (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2:] else cut) + "..."  # whole words


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
