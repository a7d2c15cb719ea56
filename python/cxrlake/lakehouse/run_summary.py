"""What one local pipeline run did and what the lakehouse holds afterwards (`RunSummary`:
``cxrlake pipeline run`` prints it, ``--json`` gives its dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from cxrlake.medallion import identity, schemas
from cxrlake.metrics_service import SplitPerformance
from cxrlake.provenance import evaluation_caveat

LabelChange = TypedDict(
    "LabelChange",
    {"image_id": str, "filename": str | None, "from": str | None, "to": str},
)
"""A film whose label the run's threshold changed (``from`` is a keyword, hence this form)."""


@dataclass
class RunSummary:
    """What one pipeline run did and what the lakehouse holds afterwards."""

    run_id: str
    lakehouse: str
    env: str
    model_name: str = ""
    model_version: str = ""
    files_found: int = 0
    """Image files (and entries held at listing) found under the sources."""
    files_listed: int = 0
    """Of those, the ones this run considered (all of them unless sampled)."""
    sample_per_label: int | None = None
    files_skipped_unchanged: int = 0
    files_not_images: int = 0
    """Files skipped because their names are not image names (`cxrlake.files.is_image_name`)."""
    not_images_note: str = ""
    """`cxrlake.files.skip_summary` of those files ('' when none)."""
    new_rows: dict[str, int] = field(default_factory=dict)
    """Rows inserted per table by this run."""
    updated_rows: dict[str, int] = field(default_factory=dict)
    """Rows updated per table by this run."""
    deleted_rows: dict[str, int] = field(default_factory=dict)
    """Rows deleted per table by this run."""
    total_rows: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage."""
    quarantined: list[dict[str, str]] = field(default_factory=list)
    """Rows quarantined by this run: file_path, stage, reason."""
    collisions: int = 0
    """Image ids held this run because two files claim them."""
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    """Whole quarantine table: count per reason."""
    metrics: list[SplitPerformance] = field(default_factory=list)
    """Latest gold.model_performance row per split for the run's model."""
    threshold: float | None = None
    threshold_source: str = "model"
    """The threshold that decided this run's labels: ``model`` or ``site:<id>:v<n>``."""
    redecided: int = 0
    """Earlier predictions of the run's model re-decided at the run's threshold."""
    label_changes: list[LabelChange] = field(default_factory=list)
    """Of those, the films whose label changed: filename, image_id, from, to."""
    threshold_note: str = ""
    """Why the run's threshold is what it is, when ``--site`` named a site (e.g. none stored)."""
    development_films: dict[str, list[int]] = field(default_factory=dict)
    """Per labelled split: [films from the model's development set, films] (see
    `cxrlake.provenance`); figures on such films are no evaluation."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (``cxrlake pipeline run --json``)."""
        return {
            k: getattr(self, k)
            for k in self.__dataclass_fields__  # noqa: SIM118 - dataclass field order
        }

    def format(self) -> str:
        """Human-readable multi-line summary; file names and reasons have control characters
        escaped, so no input can forge a line."""
        p = identity.printable
        lines = [
            f"cxrlake pipeline run {self.run_id}",
            f"  lakehouse: {p(schemas.catalog_path(self.lakehouse, self.env))}",
            f"  model:     {p(self.model_name)} {p(self.model_version)}, threshold "
            f"{self.threshold if self.threshold is not None else float('nan'):.4f} "
            f"({p(self.threshold_source)})",
            *self._threshold_lines(),
            f"  files:     {self._files_line()}",
            "  stages:    "
            + ", ".join(f"{s} {self.stage_seconds[s]:.2f} s" for s in self.stage_seconds),
            "  tables (rows inserted / updated / deleted this run, total rows):",
        ]
        if self.not_images_note:
            lines.insert(4, f"             {p(self.not_images_note)}")
        for spec in schemas.TABLES:
            name = spec.qualified_name
            lines.append(
                f"    {name:<28} {self.new_rows.get(name, 0):>7} / "
                f"{self.updated_rows.get(name, 0):>5} / {self.deleted_rows.get(name, 0):>5}"
                f"   {self.total_rows.get(name, 0):>7}"
            )
        lines.append(f"  quarantined this run: {len(self.quarantined)}")
        if self.collisions:
            lines.append(
                f"  identity collisions: {self.collisions} image ids claimed by several files "
                "(quarantined, reason names the files)"
            )
        for q in self.quarantined[:20]:
            lines.append(f"    [{q['stage']}] {p(q['file_path'])}: {p(q['reason'])}")
        if len(self.quarantined) > 20:
            lines.append(f"    ... and {len(self.quarantined) - 20} more")
        if self.quarantine_reasons:
            lines.append("  quarantine table by reason:")
            for reason, n in sorted(self.quarantine_reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {n:>5}  {p(reason)}")
        lines.extend(self._metrics_lines())
        return "\n".join(lines)

    def _metrics_lines(self) -> list[str]:
        """The latest metrics per labelled split, each with its development-film caveat."""
        if not self.metrics:
            return []
        p = identity.printable
        lines = [
            "  model performance (latest evaluation per labelled split):",
            f"    {'split':<22} {'n':>6} {'acc':>6} {'prec':>6} {'recall':>6} {'f1':>6} {'auc':>6}",
        ]
        share = {k: (v[0], v[1]) for k, v in self.development_films.items()}
        for m in self.metrics:
            auc = "-" if m["auc_roc"] is None else f"{m['auc_roc']:.3f}"
            lines.append(
                f"    {p(m['dataset_split']):<22} {m['total_samples']:>6} "
                f"{m['accuracy']:>6.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} "
                f"{m['f1_score']:>6.3f} {auc:>6}"
            )
            caveat = evaluation_caveat(share, m["dataset_split"])
            if caveat:
                lines.append(f"      ^ {caveat}")
        if any(n_dev for n_dev, _ in share.values()):
            lines.append(
                "    (figures on the model's own development films measure fit, not accuracy "
                "on new films: the model card holds the validation and shift analysis)"
            )
        return lines

    def _threshold_lines(self) -> list[str]:
        """What the run's threshold did to earlier predictions (and why, for ``--site``)."""
        p = identity.printable
        lines = [f"             {p(self.threshold_note)}"] if self.threshold_note else []
        if self.redecided:
            changes = ", ".join(
                f"{p(c['filename'] or c['image_id'])} {c['from']} -> {c['to']}"
                for c in self.label_changes[:10]
            )
            more = (
                f" and {len(self.label_changes) - 10} more" if len(self.label_changes) > 10 else ""
            )
            lines.append(
                f"             re-decided {self.redecided} earlier prediction(s) of this model at "
                f"this threshold: {len(self.label_changes)} label(s) changed"
                + (f": {changes}{more}" if changes else "")
            )
        return lines

    def _files_line(self) -> str:
        found = f"{self.files_found} image file{'s' if self.files_found != 1 else ''}"
        if self.sample_per_label is not None:
            found += f", {self.files_listed} sampled ({self.sample_per_label} per label)"
        return f"{found}, {self.files_skipped_unchanged} unchanged since last run"
