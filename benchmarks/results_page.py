"""One writer for every benchmark's results page: `docs/results/<name>.md` plus its data, `<name>.json`.

Benchmark scripts measure, then call `write_page`; the page is Markdown a reader opens, the JSON sidecar is what
checks (CI, the README's summary) read. Both are written atomically; figures are copied next to the page.

    from results_page import write_page, markdown_table
    write_page("fashion_mnist", "Fashion-MNIST frontier", [intro, markdown_table(header, rows)], data,
               figures={"frontier.png": png_path}, command="python benchmarks/fashion_frontier.py --out runs/f")
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from vtpdeploy.fileio import atomic_write_json, atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"
NOTES_DIR = Path(__file__).resolve().parent / "notes"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are str()-ed, `None` shows as an en dash."""
    def cell(v: object) -> str:
        return "–" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_page(name: str, title: str, sections: Sequence[str], data: dict, *, command: str,
               figures: dict[str, Path] | None = None, results_dir: Path = RESULTS_DIR) -> Path:
    """Write `<results_dir>/<name>.md` (title, the command that produced it, sections) and `<name>.json`."""
    results_dir.mkdir(parents=True, exist_ok=True)
    for target, source in (figures or {}).items():
        tmp = results_dir / f".{target}.tmp"
        shutil.copyfile(source, tmp)
        tmp.replace(results_dir / target)
    body = [f"# {title}", f"Produced by `{command}`; data: [`{name}.json`]({name}.json).", *sections]
    atomic_write_json(results_dir / f"{name}.json", {"command": command, **data})
    return atomic_write_text(results_dir / f"{name}.md", "\n\n".join(s.strip("\n") for s in body) + "\n")


def read_data(name: str, results_dir: Path = RESULTS_DIR) -> dict:
    """The JSON sidecar of a results page."""
    return json.loads((results_dir / f"{name}.json").read_text())


def notes(name: str, notes_dir: Path = NOTES_DIR) -> str:
    """The hand-written analysis `benchmarks/notes/<name>.md` a script puts around its generated tables."""
    return (notes_dir / f"{name}.md").read_text()
