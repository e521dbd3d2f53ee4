"""The generated reference in docs/CONFIGURATION.md: settings, metrics, error codes, job types and presets.

    python -m common.reference            # rewrite the generated sections of docs/CONFIGURATION.md
    python -m common.reference --check    # exit 1 naming each section whose committed text is stale

Each section sits between `<!-- generated:NAME ... -->` and `<!-- end generated:NAME -->` and is rendered
from the declaration itself, so the docs cannot drift from the code: the settings from the fields of
`configuration.settings.Settings` (`setting_reference()`: names, defaults, descriptions), the metrics from a
`common.metrics.Metrics` registry, the error codes from `common.errors.CODES`, the job types and presets from
`configuration/presets.json`. Text outside the markers is left as it is. `infrastructure/test.sh` and
tests/unit/test_reference.py run the check. It lives in common/ because metrics and error codes do
(configuration/ imports nothing of the project).
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from common import errors
from common.metrics import Metrics, build_labels
from configuration import job_types
from configuration.settings import REPO_ROOT, setting_reference

DOC = REPO_ROOT / "docs" / "CONFIGURATION.md"
COMMAND = "python -m common.reference"


def _cell(text: str) -> str:
    """One table cell: pipes escaped, never a line break."""
    return " ".join(str(text).replace("|", "\\|").split())


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def show_default(value: object) -> str:
    """A setting's default as the table shows it; paths inside the repository relative to it, so the text
    is the same on every checkout."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, Path):
        if str(value) in ("", "."):
            return "(empty)"
        if value.is_absolute() and value.is_relative_to(REPO_ROOT):
            return f"`<repo>/{value.relative_to(REPO_ROOT).as_posix()}`"
        return f"`{value.as_posix()}`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def settings_section() -> str:
    rows = []
    for s in setting_reference():
        names = f"`{s.name}`" + "".join(f" (alias `{a}`)" for a in s.aliases)
        rows.append((names, show_default(s.default), s.description))
    return _table(("variable", "default", "meaning"), rows)


def _exposed_name(name: str, kind: str) -> str:
    """The name a scrape shows: counters end in `_total`, info metrics in `_info`."""
    suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
    return name if name.endswith(suffix) else name + suffix


def metrics_section() -> str:
    metrics = Metrics("reference")
    rows = []
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        family = next(iter(metric.describe()))
        labels = tuple(metric._labelnames)
        meaning = family.documentation
        if family.type == "info":  # the values ride on labels of the one sample
            labels = tuple(build_labels("", ""))
        if family.type == "stateset":
            meaning += " States: " + ", ".join(getattr(metric, "_states", ())) + "."
        rows.append((f"`{_exposed_name(family.name, family.type)}`", family.type, ", ".join(labels) or "-",
                     meaning))
    return _table(("metric", "type", "labels", "meaning"), rows)


def errors_section() -> str:
    rows = [(f"`{code}`", ref.http, ref.meaning) for code, ref in errors.CODES.items()]
    return _table(("code", "HTTP status", "meaning"), rows)


def _values(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


_OWN_COLUMNS = ("steps", "guidance_scale", "width", "height", "frames", "fps", "negative_prompt")


def _preset_row(name: str, preset: dict) -> tuple[tuple[str, ...], str]:
    """One preset's table row and its other defaults (img2img, exact copy, reference, the rest)."""
    d = preset["defaults"]
    frames = f"{d['frames']} @ {d['fps']} fps" if "frames" in d else "-"
    others = {k: v for k, v in d.items() if k not in _OWN_COLUMNS}
    extras = [_values(others)] if others else []
    extras += [f"{key}: {_values(preset[key])}" for key in ("img2img", "exact_copy", "reference") if key in preset]
    profiles = "; ".join(f"{profile}: {_values(values)}" for profile, values in preset.get("profiles", {}).items())
    row = (f"`{name}`", preset["worker"], preset.get("output", "image"), str(d["steps"]), str(d["guidance_scale"]),
           f"{d['width']}x{d['height']}", frames, profiles or "-")
    return row, "; ".join(extras)


def job_types_section() -> str:
    """One row per preset. A legacy alias that only renames its base type is listed under the table instead
    of repeating the base's row; defaults that several types share are said once."""
    types = job_types()
    rows = []
    extras: dict[str, list[str]] = {}
    negatives: dict[str, list[str]] = {}
    aliases: dict[bool, list[str]] = {}
    for name, preset in types.items():
        base = preset["base_type"]
        row, extra = _preset_row(name, preset)
        negative = preset["defaults"].get("negative_prompt")
        if base != name and base in types:
            base_row, base_extra = _preset_row(base, types[base])
            if (base_row[1:], base_extra, types[base]["defaults"].get("negative_prompt")) == (row[1:], extra, negative):
                aliases.setdefault(bool(preset["enhance"]), []).append(f"`{name}` = `{base}`")
                continue
            extra = "; ".join([f"alias of `{base}`" + (", prompt enhanced first" if preset["enhance"] else ""),
                               *([extra] if extra else [])])
        rows.append(row)
        if extra:
            extras.setdefault(extra, []).append(f"`{name}`")
        if negative is not None:
            negatives.setdefault(negative, []).append(f"`{name}`")
    table = _table(("type", "worker", "output", "steps", "guidance", "size", "frames", "per profile"), rows)
    lines = [f"- {', '.join(names)}: {text}" for text, names in extras.items()]
    lines += [f"- negative prompt of {', '.join(names)} (a caller's own replaces it): \"{text}\""
              for text, names in negatives.items()]
    lines += [f"- legacy aliases{', the prompt enhanced first' if enhance else ''}: {', '.join(names)}"
              for enhance, names in aliases.items()]
    return table + "\n\nOther defaults:\n\n" + "\n".join(lines)


SECTIONS: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("configuration/settings.py", settings_section),
    "job-types": ("configuration/presets.json", job_types_section),
    "errors": ("common/errors.py CODES", errors_section),
    "metrics": ("common/metrics.py Metrics", metrics_section),
}


def render_sections() -> dict[str, str]:
    """Section name -> its generated text (without the markers)."""
    return {name: render() for name, (_source, render) in SECTIONS.items()}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{re.escape(name)} .*?-->\n)(.*?)(<!-- end generated:{re.escape(name)} -->)",
                      re.DOTALL)


def _body(text: str) -> str:
    return f"\n{text}\n\n"


def missing_markers(doc: str) -> list[str]:
    return [name for name in SECTIONS if not _pattern(name).search(doc)]


def stale_sections(doc: str, sections: dict[str, str]) -> list[str]:
    """The sections whose text in `doc` differs from `sections` (a section without markers counts)."""
    stale = []
    for name, text in sections.items():
        found = _pattern(name).search(doc)
        if found is None or found.group(2) != _body(text):
            stale.append(name)
    return stale


def apply(doc: str, sections: dict[str, str]) -> str:
    """`doc` with each section's text between its markers (the markers must be there)."""
    for name, text in sections.items():
        marker = (f"<!-- generated:{name} from {SECTIONS[name][0]} by `{COMMAND}`: edit the source, not this "
                  "table -->\n")
        found = _pattern(name).search(doc)
        if found is None:
            raise ValueError(f"no markers for the generated section {name!r}")
        doc = doc[:found.start()] + marker + _body(text) + found.group(3) + doc[found.end():]
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated section is stale")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (default: docs/CONFIGURATION.md)")
    args = parser.parse_args(argv)
    doc = args.doc.read_text(encoding="utf-8")
    missing = missing_markers(doc)
    if missing:
        print(f"{args.doc}: no markers for the generated section(s) {', '.join(missing)}: add "
              f"'<!-- generated:NAME -->' and '<!-- end generated:NAME -->' lines", file=sys.stderr)
        return 1
    sections = render_sections()
    stale = stale_sections(doc, sections)
    if not args.check:
        updated = apply(doc, sections)
        if updated != doc:
            args.doc.write_text(updated, encoding="utf-8")
        print(f"{args.doc}: rewrote {', '.join(stale) or 'nothing'} (sections: {', '.join(sections)})")
        return 0
    for name in stale:
        current = _pattern(name).search(doc)
        old = current.group(2) if current else ""
        diff = difflib.unified_diff(old.splitlines(), _body(sections[name]).splitlines(), "committed", "generated",
                                    lineterm="", n=0)
        print(f"{args.doc}: generated section '{name}' is stale (from {SECTIONS[name][0]}); run {COMMAND}",
              file=sys.stderr)
        print("\n".join(list(diff)[:12]), file=sys.stderr)
    if not stale:
        print(f"{args.doc}: generated sections current: {', '.join(sections)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
