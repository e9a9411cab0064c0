"""The report assembled: the figures made (or reused) in ``<out>/figures``, the sections in order,
the page with its style and Content-Security-Policy, written as one result set."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._signature import takes_options
from .._version import __version__
from ..config import ReportConfig, arg, build, describe
from ..errors import FtdynError
from ..outputs import folder_lock, update_result_set
from ..results import open_results
from ..store import open_store
from ..viz import (
    FIGURES_DIR,
    check_out,
    default_figures,
    match_experiment,
    read_index,
    results_stores,
    same_path,
)
from ..viz.curves import as_strings
from .comparison import runs_section
from .explore import EXPLORE_NAME, plan_galleries, write_explore
from .sections import (
    _accuracy_section,
    _agreement_section,
    _e,
    _experiments_section,
    _interpretation_section,
    _method_section,
    _reusability_section,
    _store_summaries,
)
from .style import CSP, CSS

REPORT_NAME = "report.html"


class _Figures:
    """Numbers figures and renders them as <figure> elements with embedded PNGs; ``entries`` are the
    index entries (with their folders) that :meth:`block` chooses from."""

    def __init__(self, out: Path, entries: list[tuple[dict[str, Any], Path]]):
        self.out = out
        self.entries = entries
        self.count = 0
        self.missing: list[str] = []

    def render(self, entry: dict[str, Any], folder: Path) -> str:
        png = folder / entry["file"]
        if not png.is_file():
            self.missing.append(str(png))
            return ""
        self.count += 1
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        links = [
            f'<a href="{_e(Path(os.path.relpath(folder / name, self.out)).as_posix())}">'
            f"{_e(Path(name).suffix[1:].upper())}</a>"
            for name in [entry["file"], *entry.get("formats", [])]
            if (folder / name).is_file()
        ]
        title = entry.get("title") or entry["file"]
        return (
            f'<figure id="fig-{self.count}"><img src="data:image/png;base64,{data}"'
            f' alt="{_e(title)}">'
            f"<figcaption><b>Figure {self.count}. {_e(title)}.</b> {_e(entry.get('caption', ''))}"
            f'<span class="files">[{" · ".join(links)}]</span></figcaption></figure>'
        )

    def block(self, kind: str, group_by: str | None = None, open_first: bool = True) -> str:
        """The figures of ``kind``, in one collapsible group per value of ``group_by``
        when given."""
        chosen = [(e, f) for e, f in self.entries if e.get("kind") == kind]
        if not chosen:
            return '<p class="empty">None.</p>'
        if group_by is None:
            return "".join(self.render(e, f) for e, f in chosen)
        groups: dict[str, list] = {}
        for e, f in chosen:
            groups.setdefault(str(e.get(group_by) or e.get("store_label") or "other"), []).append(
                (e, f)
            )
        parts = []
        for i, (name, items) in enumerate(groups.items()):
            opened = " open" if (open_first and i == 0) else ""
            parts.append(
                f"<details{opened}><summary>{_e(name)} ({len(items)}"
                f" figure{'s' if len(items) > 1 else ''})"
                f"</summary>{''.join(self.render(e, f) for e, f in items)}</details>"
            )
        return "".join(parts)


def _collect(folders: Sequence[Path]) -> list[tuple[dict[str, Any], Path]]:
    seen, out = set(), []
    for folder in folders:
        for entry in read_index(folder):
            key = entry.get("file") or f"note:{entry.get('caption')}"
            if key in seen:
                continue
            seen.add(key)
            out.append((entry, folder))
    return out


@takes_options(ReportConfig)
def report(
    results_dir,
    *,
    stores: Sequence[str | Path] | None = None,
    out=None,
    config: ReportConfig | None = None,
    **options: Any,
) -> Path:
    """Write ``report.html`` (and its figures in ``figures/``) and return its path.

    ``results_dir``: the folder of ``ftdyn analyze`` (holding results.zarr and the
    CSV tables), or its results.zarr. ``stores``: activation stores whose manifests
    give Table 1 and whose default class/sample figures are (re)made, each one of the
    results' experiments; default: the stores named in the results that exist, whose
    figures are made only when the figure index does not already have them. ``out``:
    output folder (default ``results_dir``; not inside a Zarr store).
    Curves and trajectory matrices are always redrawn from the results. With ``interactive``
    (the default), ``explore.html`` is written beside it (:mod:`.explore`). The options are the
    fields of :class:`~ftdyn.config.ReportConfig` (listed below), as keyword arguments or as
    ``config=``. ``figures/``, report.html and explore.html join the result set of ``out``
    (:mod:`ftdyn.outputs`) as its new version, made current in one atomic step: a killed or
    interrupted report leaves the previous version whole.
    """
    config = build(ReportConfig, config, **options)
    results_dir = Path(results_dir)
    res = open_results(results_dir)
    if (
        results_dir / "zarr.json"
    ).is_file():  # given results.zarr itself: the tables and figures are beside it
        results_dir = results_dir.parent
    out = Path(out) if out is not None else results_dir
    check_out(out, what=arg("out", out))
    figdir = out / FIGURES_DIR
    if stores is not None:
        store_paths = [Path(s) for s in stores]
        for s in store_paths:
            if not s.exists():
                raise FtdynError(f"{arg('stores', s)}: no such store.")
            if match_experiment(res, open_store(s, allow_partial=True), s) is None:
                raise FtdynError(
                    f"{arg('stores', s)}: not among the experiments of {results_dir}"
                    f" [{results_stores(res)}]; give one of their stores, or run `ftdyn analyze`"
                    " with this store first."
                )
        todo = store_paths
    else:
        store_paths = [
            Path(s)
            for s in dict.fromkeys(as_strings(res["store"].values))
            if s and Path(s).exists()
        ]
        indexed = {e.get("store") for e in read_index(figdir)} | {
            e.get("store") for e in read_index(results_dir / FIGURES_DIR)
        }
        todo = [s for s in store_paths if not any(same_path(s, i) for i in indexed)]
    # a second report (or analyze) into this folder is refused, naming this run
    with folder_lock(out):
        update_result_set(
            out,
            lambda folder: _write_report(
                res,
                results_dir,
                folder,
                _Inputs(store_paths, todo, config),
                elsewhere=not same_path(out, results_dir),
            ),
            carry=[FIGURES_DIR, REPORT_NAME],
        )
    return out / REPORT_NAME


@dataclass(frozen=True)
class _Inputs:
    """What a report reads besides the results: the stores, those whose class/sample figures are
    (re)drawn (``todo``) and the options."""

    stores: list[Path]
    todo: list[Path]
    config: ReportConfig


def _write_report(
    res, results_dir: Path, out: Path, inputs: _Inputs, *, elsewhere: bool
) -> list[str]:
    """Draw ``out/figures`` and write ``out/report.html`` (and ``out/explore.html``; ``out``: the
    new result set's folder); ``elsewhere``: the results folder is not ``out``, and its figures
    are shown too. Returns the names written."""
    figdir = out / FIGURES_DIR
    # curves and matrices always; class/sample figures for `todo`
    default_figures(res, inputs.todo, figdir)
    summaries = _store_summaries(res, inputs.stores)
    written = [FIGURES_DIR, REPORT_NAME]
    if inputs.config.interactive:
        write_explore(res, results_dir, out, plan_galleries(res, summaries, inputs.config))
        written.append(EXPLORE_NAME)
    entries = _collect([figdir] + ([results_dir / FIGURES_DIR] if elsewhere else []))
    figs = _Figures(out, entries)
    sections = _sections(res, results_dir, summaries, figs.block)
    notes = _notes(res, [e for e, _ in entries if e.get("kind") == "note"], figs.missing)
    if notes:
        sections.insert(-1, ("notes", "Notes", f"<ul>{''.join(notes)}</ul>"))
    page = _page(
        res,
        sections,
        footer=(
            f"Results: {_e(results_dir)} · {figs.count} figures · the PNG/SVG files are "
            f"in {_e(Path(os.path.relpath(figdir, out)).as_posix())}/"
            + (
                f' · <a href="{EXPLORE_NAME}">interactive report</a>'
                if EXPLORE_NAME in written
                else ""
            )
        ),
    )
    (out / REPORT_NAME).write_text(page, encoding="utf-8")
    return written


def _sections(
    res, results_dir: Path, summaries: list[dict[str, Any]], block
) -> list[tuple[str, str, str]]:
    """(id, title, HTML) of every section in page order; ``block(kind, group_by)`` renders
    figures."""
    return [
        ("experiments", "Experiments", _experiments_section(res)),
        ("accuracy", "Table 1 · Accuracy per epoch", _accuracy_section(summaries)),
        ("reusability", "Table 2 · Reusability", _reusability_section(res)),
        ("agreement", "Metric agreement", _agreement_section(res, results_dir)),
        (
            "curves",
            "Distance curves",
            '<p class="lead">How far each layer moves from the reference checkpoint, epoch by'
            " epoch.</p>" + block("curves") + block("by_layer"),
        ),
        (
            "trajectories",
            "Checkpoint × checkpoint distances",
            '<p class="lead">Every pair of checkpoints compared, per layer: how the features'
            " travel, not only how far from the start they end.</p>"
            + block("trajectory", "experiment"),
        ),
        ("interpretation", "Interpreting the distances", _interpretation_section(res, block)),
        ("runs", "Runs compared: seed floor and departure", runs_section(res)),
        (
            "class-based",
            "Class-based visualizations",
            '<p class="lead">What a filter looks at for a class, and how that changes during'
            " fine-tuning.</p>" + block("class", "experiment"),
        ),
        (
            "sample-based",
            "Sample-based visualizations",
            '<p class="lead">Where on one image a filter responds, epoch by epoch.</p>'
            + block("sample", "experiment"),
        ),
        ("method", "How these numbers were computed", _method_section(res)),
    ]


def _notes(res, notes: list[dict[str, Any]], missing: list[str]) -> list[str]:
    """<li> items of the Notes section: figure notes, degenerate estimators, missing
    figure files."""
    degenerate = json.loads(res.attrs.get("pwsm_degenerate", "[]"))
    others = {m: json.loads(res.attrs.get(f"{m}_degenerate", "[]")) for m in ("procrustes", "cka")}
    items = [f"<li>{_e(n.get('caption'))}</li>" for n in notes]
    if degenerate:
        items.append(
            f"<li>PWSM with α={_e(res.attrs.get('alpha'))} is degenerate where a view has too few"
            " rows (α = 0: no more rows than columns + 1; any α: 2 rows), so the angle is 0"
            f" whatever the checkpoints: {_e(', '.join(degenerate))}. Those PWSM values are left"
            " undefined (NaN); more probe images avoid it.</li>"
        )
    for m, where in others.items():
        if where:
            items.append(
                f"<li>{_e(m)} is degenerate where its view has 2 rows or fewer per matrix (rank ≤ 1"
                f" after centering: 0 whatever the checkpoints): {_e(', '.join(where))}. Those"
                " values are left undefined (NaN).</li>"
            )
    return items + [f"<li>figure file missing, left out: {_e(m)}</li>" for m in missing]


def _page(res, sections: list[tuple[str, str, str]], *, footer: str) -> str:
    """The whole HTML page: header, table of contents, numbered sections, ``footer`` (HTML)."""
    exps = as_strings(res["experiment"].values)
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    toc = "".join(f'<li><a href="#{sid}">{_e(title)}</a></li>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{i}. {_e(title)}</h2>{content}</section>'
        for i, (sid, title, content) in enumerate(sections, 1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="ftdyn {_e(__version__)}">'
        f"<title>ftdyn report: {_e(', '.join(exps))}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Feature dynamics during fine-tuning</h1><p>{len(exps)} experiment"
        f"{'s' if len(exps) != 1 else ''}: {_e(', '.join(exps))} · reference epoch "
        f"{_e(res.attrs.get('reference_epoch'))} · preset {_e(res.attrs.get('preset'))} · generated"
        f" {_e(created)} by "
        f"ftdyn {_e(__version__)}</p></header>"
        f"<main><nav><ol>{toc}</ol></nav>{body}</main>"
        f"<footer>{footer}</footer></body></html>\n"
    )


report.__doc__ += "\n    Options (:class:`~ftdyn.config.ReportConfig`):\n\n" + "\n".join(
    f"    * {line}" for line in describe(ReportConfig).splitlines()
)
