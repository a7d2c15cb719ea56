"""Offline validation of the Databricks Asset Bundle in ``bundle/`` (the CLI cannot run here).

For each target this does what ``databricks bundle validate`` does before talking to a workspace:

1. load ``databricks.yml`` and every file its ``include`` globs match (each must match a file);
2. merge the included files into the root (a resource key defined twice is an error);
3. validate the raw, uninterpolated document (targets included) against the official bundle JSON
   schema, where ``${var.x}`` and friends are legal wherever the schema allows them;
4. merge the target over the base as the CLI does (maps merge key by key, the target wins;
   target ``variables`` set values), substitute ``${var.*}`` with the target's values (a string
   that is exactly one reference takes the variable's type, e.g. a complex cluster spec) and
   validate the result again, so a complex variable of the wrong shape is caught;
5. check what the CLI checks offline: exactly one default target, production targets with a
   ``workspace.root_path`` and permissions, every ``${var.*}`` declared, every
   ``${resources.<type>.<key>...}`` pointing at a defined resource;
6. check that every local path the bundle references exists, relative to the file that references
   it: include globs, artifact paths (a whl artifact path holds a pyproject.toml), ``sync.paths``,
   notebooks (a Databricks notebook source header), SQL files, Python files, dashboard files (valid
   Lakeview JSON) and wheel libraries (inside a whl artifact's ``dist/``).

Run it as a script (it imports nothing from the rest of cxrlake, so it works before the Rust
extension is built)::

    python tools/bundle_check.py --bundle bundle \
        --schema ../shared/databricks/bundle_jsonschema.json --targets dev pilot prod
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT_FILE = "databricks.yml"
NOTEBOOK_HEADER = "# Databricks notebook source"
# ${var.name}, ${var.name.field}, ${resources.jobs.x.id}, ${bundle.target}, ...
REF = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*)\}")
# Keys only a target may hold; they do not exist at the root of the merged configuration.
TARGET_ONLY_KEYS = ("mode", "default", "cluster_id", "compute_id")


class BundleError(Exception):
    """The bundle is invalid; the message lists every problem found."""


@dataclass
class SourcedPath:
    """A local path found in one bundle file (relative paths resolve against that file)."""

    kind: str  # notebook, sql_file, python_file, dashboard, wheel_library, artifact, sync, include
    value: str
    file: Path
    where: str  # dotted location in the file, for messages


@dataclass
class Bundle:
    """The loaded bundle: root document with includes merged, and the paths each file names."""

    root_dir: Path
    document: dict[str, Any]
    files: list[Path]
    paths: list[SourcedPath] = field(default_factory=list)


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the bundle JSON schema, rewriting ``\\p{L}``/``\\p{N}`` (unknown to Python's ``re``)."""
    text = Path(path).read_text(encoding="utf-8")
    # In the JSON text the backslash is escaped ("\\p{L}"), so match the escaped form.
    text = text.replace(r"[\\p{L}\\p{N}]", r"[^\\W_]")
    text = text.replace(r"\\p{L}", r"[^\\W\\d_]").replace(r"\\p{N}", r"\\d")
    return json.loads(text)


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BundleError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_bundle(bundle_dir: str | os.PathLike[str]) -> Bundle:
    """Load ``databricks.yml`` and its includes; merge includes into the root document."""
    root_dir = Path(bundle_dir).resolve()
    root_file = root_dir / ROOT_FILE
    if not root_file.is_file():
        raise BundleError(f"{root_file} not found")
    document = _read_yaml(root_file)
    files = [root_file]
    problems: list[str] = []
    paths = list(_local_paths(document, root_file))
    for pattern in document.get("include", []) or []:
        matches = sorted(glob.glob(str(root_dir / pattern)))
        if not matches:
            problems.append(f"{root_file}: include {pattern!r} matches no file")
        for match in matches:
            path = Path(match)
            data = _read_yaml(path)
            files.append(path)
            paths.extend(_local_paths(data, path))
            for key in data:
                if key in ("include", "bundle"):
                    problems.append(f"{path}: {key!r} is only allowed in {ROOT_FILE}")
            problems.extend(_merge_include(document, data, path))
    if problems:
        raise BundleError("\n".join(problems))
    return Bundle(root_dir=root_dir, document=document, files=files, paths=paths)


def _merge_include(document: dict[str, Any], data: dict[str, Any], path: Path) -> list[str]:
    """Merge an included file into the root; redefining a resource or variable is an error."""
    problems = []
    for key, value in data.items():
        if key == "resources":
            resources = document.setdefault("resources", {})
            for rtype, items in (value or {}).items():
                existing = resources.setdefault(rtype, {})
                for name, spec in (items or {}).items():
                    if name in existing:
                        problems.append(f"{path}: resources.{rtype}.{name} is defined twice")
                    existing[name] = spec
        elif key in ("variables", "targets", "artifacts"):
            existing = document.setdefault(key, {})
            for name, spec in (value or {}).items():
                if name in existing and key != "targets":
                    problems.append(f"{path}: {key}.{name} is defined twice")
                existing[name] = merge(existing.get(name), spec)
        else:
            document[key] = merge(document.get(key), value)
    return problems


def merge(base: Any, override: Any) -> Any:
    """Merge ``override`` over ``base`` as the CLI merges a target: maps key by key (recursively),
    anything else replaced by the override. Neither argument is modified."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override if override is not None else base)


def target_config(document: dict[str, Any], target: str) -> dict[str, Any]:
    """The configuration the CLI deploys for ``target``: the base with the target merged over it,
    without ``targets`` and without target-only keys (``mode``, ``default``, ...)."""
    targets = document.get("targets") or {}
    if target not in targets:
        raise BundleError(f"target {target!r} not defined (targets: {', '.join(targets)})")
    base = {k: v for k, v in document.items() if k != "targets"}
    overrides = copy.deepcopy(targets[target] or {})
    for key in TARGET_ONLY_KEYS:
        overrides.pop(key, None)
    variable_values = overrides.pop("variables", {}) or {}
    config = merge(base, overrides)
    variables = copy.deepcopy(config.get("variables") or {})
    for name, value in variable_values.items():
        spec = variables.setdefault(name, {})
        if isinstance(value, dict) and ("default" in value or "lookup" in value):
            spec.pop("default", None)
            spec.pop("lookup", None)
            spec.update(value)
        else:
            spec.pop("lookup", None)
            spec["default"] = value
    if variables:
        config["variables"] = variables
    return config


def variable_values(config: dict[str, Any]) -> dict[str, Any]:
    """Values of the variables of a merged target config, with references between them resolved.
    Variables resolved by ``lookup`` at deploy time keep their ``${var.name}`` reference."""
    raw = {}
    for name, spec in (config.get("variables") or {}).items():
        spec = spec or {}
        raw[name] = spec.get("default", f"${{var.{name}}}")
    resolved: dict[str, Any] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        if name in stack:
            raise BundleError(f"variables reference each other in a cycle: {' -> '.join(stack)}")
        value = raw[name]
        if value == f"${{var.{name}}}":  # lookup: unresolved offline
            resolved[name] = value
        else:
            resolved[name] = _substitute(value, lambda n: resolve(n, (*stack, name)), set(raw))
        return resolved[name]

    for name in raw:
        resolve(name, ())
    return resolved


def _substitute(value: Any, lookup: Any, declared: set[str]) -> Any:
    """Replace ``${var.x}`` in ``value``; an exact single reference takes the variable's type."""
    if isinstance(value, dict):
        return {k: _substitute(v, lookup, declared) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, lookup, declared) for v in value]
    if not isinstance(value, str):
        return value
    whole = REF.fullmatch(value)
    if whole and whole.group(1).startswith("var."):
        name = whole.group(1).split(".")[1]
        if name in declared:
            return lookup(name)
        return value

    def repl(m: re.Match[str]) -> str:
        parts = m.group(1).split(".")
        if parts[0] != "var" or parts[1] not in declared:
            return m.group(0)
        resolved = lookup(parts[1])
        if isinstance(resolved, (dict, list)):
            raise BundleError(f"complex variable {parts[1]!r} used inside the string {value!r}")
        return str(resolved).lower() if isinstance(resolved, bool) else str(resolved)

    return REF.sub(repl, value)


def interpolate_variables(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every ``${var.*}`` outside ``variables`` replaced by the target's value."""
    values = variable_values(config)
    out = {k: v for k, v in config.items() if k != "variables"}
    out = _substitute(out, values.__getitem__, set(values))
    if "variables" in config:
        out["variables"] = config["variables"]
    return out


def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}[{i}]")


def references(node: Any) -> Iterator[tuple[str, str]]:
    """Every ``${...}`` reference in ``node`` as (location, reference)."""
    for where, value in _walk(node):
        if isinstance(value, str):
            for m in REF.finditer(value):
                yield where, m.group(1)


def _local_paths(data: dict[str, Any], file: Path) -> Iterator[SourcedPath]:
    """Local paths named in one bundle file (anything not absolute and without ``${``)."""
    for where, value in _walk(data):
        if not isinstance(value, str) or not where:
            continue
        key = where.rsplit(".", 1)[-1]
        kind = None
        if key == "notebook_path":
            kind = "notebook"
        elif where.endswith("sql_task.file.path"):
            kind = "sql_file"
        elif key == "python_file":
            kind = "python_file"
        elif where.startswith(("resources.dashboards.", "targets.")) and key == "file_path":
            kind = "dashboard"
        elif re.search(r"libraries\[\d+\]\.whl$", where) or re.search(
            r"environments\[\d+\]\.spec\.dependencies\[\d+\]$", where
        ):
            kind = "wheel_library"
        elif re.fullmatch(r"(targets\.[^.]+\.)?artifacts\.[^.]+\.path", where):
            kind = "artifact"
        elif re.fullmatch(r"(targets\.[^.]+\.)?sync\.paths\[\d+\]", where):
            kind = "sync"
        if kind is None or value.startswith("/") or "${" in value or "://" in value:
            continue
        if kind == "wheel_library" and not value.endswith(".whl"):
            continue  # a PyPI requirement, not a path
        yield SourcedPath(kind, value, file, where)


def check_paths(bundle: Bundle) -> list[str]:
    """Problems with the local paths the bundle references (missing files, wrong contents)."""
    problems = []
    dist_dirs = []
    for p in bundle.paths:
        if p.kind == "artifact":
            artifact_dir = (p.file.parent / p.value).resolve()
            dist_dirs.append(artifact_dir / "dist")
    for p in bundle.paths:
        target = (p.file.parent / p.value).resolve()
        label = f"{p.file.relative_to(bundle.root_dir.parent)}: {p.where} = {p.value!r}"
        if p.kind == "artifact":
            if not target.is_dir():
                problems.append(f"{label}: directory not found")
            elif not (target / "pyproject.toml").is_file() and not (target / "setup.py").is_file():
                problems.append(f"{label}: no pyproject.toml or setup.py to build a wheel from")
        elif p.kind == "sync":
            if not target.exists():
                problems.append(f"{label}: not found")
        elif p.kind == "notebook":
            candidates = [target, target.with_name(target.name + ".py")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                problems.append(f"{label}: notebook not found")
            elif found.suffix == ".py" and not found.read_text(encoding="utf-8").startswith(
                NOTEBOOK_HEADER
            ):
                problems.append(f"{label}: {found.name} lacks the '{NOTEBOOK_HEADER}' header")
        elif p.kind in ("sql_file", "python_file"):
            if not target.is_file():
                problems.append(f"{label}: file not found")
        elif p.kind == "dashboard":
            problems.extend(f"{label}: {msg}" for msg in check_dashboard(target))
        elif p.kind == "wheel_library" and not any(target.parent == d for d in dist_dirs):
            problems.append(
                f"{label}: not in the dist/ directory of a whl artifact "
                f"({', '.join(str(d) for d in dist_dirs) or 'no artifacts'})"
            )
    return problems


def check_dashboard(path: Path) -> list[str]:
    """Problems with a Lakeview ``.lvdash.json`` file: JSON, datasets with a query, pages whose
    widgets query existing datasets."""
    if not path.is_file():
        return ["dashboard file not found"]
    if not path.name.endswith(".lvdash.json"):
        return ["a dashboard file name must end in .lvdash.json"]
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"invalid JSON: {e}"]
    problems = []
    datasets = {d.get("name"): d for d in dash.get("datasets", [])}
    if not datasets:
        problems.append("no datasets")
    for name, d in datasets.items():
        if not "".join(d.get("queryLines", [])).strip() and not d.get("query"):
            problems.append(f"dataset {name!r} has no query")
    pages = dash.get("pages", [])
    if not pages:
        problems.append("no pages")
    for page in pages:
        for item in page.get("layout", []):
            widget = item.get("widget", {})
            for q in widget.get("queries", []):
                ds = q.get("query", {}).get("datasetName")
                if ds not in datasets:
                    problems.append(f"widget {widget.get('name')!r} uses unknown dataset {ds!r}")
    return problems


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    """Schema violations, each reported at the deepest alternative of its ``oneOf``."""
    out = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        deepest = _deepest(error)
        where = ".".join(str(p) for p in deepest.absolute_path) or "<root>"
        out.append(f"{where}: {deepest.message}")
    return out


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    if not error.context:
        return error
    # Skip the "${var...} string" alternatives: the object alternative holds the real problem.
    candidates = [e for e in error.context if e.validator not in ("pattern", "type")] or list(
        error.context
    )
    best = max(candidates, key=lambda e: len(e.absolute_path))
    return _deepest(best)


def semantic_errors(document: dict[str, Any], config: dict[str, Any], target: str) -> list[str]:
    """What the CLI checks offline beyond the schema, for one target."""
    problems = []
    targets = document.get("targets") or {}
    defaults = [name for name, t in targets.items() if (t or {}).get("default")]
    if len(defaults) != 1:
        problems.append(f"exactly one target must be the default, found {defaults or 'none'}")
    spec = targets.get(target) or {}
    mode = spec.get("mode")
    if mode not in (None, "development", "production"):
        problems.append(f"targets.{target}.mode: unknown mode {mode!r}")
    if mode == "production":
        if not (config.get("workspace") or {}).get("root_path"):
            problems.append(f"targets.{target}: production mode needs workspace.root_path")
        if not config.get("permissions"):
            problems.append(f"targets.{target}: production mode needs permissions")
    declared = set((config.get("variables") or {}).keys())
    resources = config.get("resources") or {}
    for where, ref in references({k: v for k, v in config.items()}):
        parts = ref.split(".")
        if parts[0] == "var" and parts[1] not in declared:
            problems.append(f"{where}: ${{{ref}}} uses an undeclared variable")
        if parts[0] == "resources" and (
            len(parts) < 4 or parts[2] not in (resources.get(parts[1]) or {})
        ):
            problems.append(f"{where}: ${{{ref}}} names no resource of this bundle")
    for name, spec in (config.get("variables") or {}).items():
        spec = spec or {}
        if "default" not in spec and "lookup" not in spec:
            problems.append(f"variables.{name}: no value for target {target!r}")
    return problems


def validate(
    bundle_dir: str | os.PathLike[str], schema_path: str | os.PathLike[str], targets: list[str]
) -> dict[str, dict[str, Any]]:
    """Validate the bundle for each target; return the resolved configuration per target.

    Raises `BundleError` listing every problem (schema, semantics, missing paths) at once.
    """
    bundle = load_bundle(bundle_dir)
    schema = load_schema(schema_path)
    validator_cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    validator = validator_cls(schema)
    problems = [f"raw document: {e}" for e in schema_errors(validator, bundle.document)]
    problems.extend(check_paths(bundle))
    resolved = {}
    for target in targets:
        try:
            config = target_config(bundle.document, target)
            problems.extend(
                f"{target}: {e}" for e in semantic_errors(bundle.document, config, target)
            )
            interpolated = interpolate_variables(config)
        except BundleError as e:
            problems.append(f"{target}: {e}")
            continue
        problems.extend(f"{target}: {e}" for e in schema_errors(validator, interpolated))
        resolved[target] = interpolated
    if problems:
        raise BundleError("\n".join(problems))
    return resolved


def main(argv: list[str] | None = None) -> int:
    """Command line: print one line per target, exit 1 with every problem if any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="bundle", help="bundle directory (databricks.yml)")
    parser.add_argument("--schema", required=True, help="bundle JSON schema of the Databricks CLI")
    parser.add_argument("--targets", nargs="+", default=["dev", "pilot", "prod"])
    args = parser.parse_args(argv)
    try:
        resolved = validate(args.bundle, args.schema, args.targets)
    except BundleError as e:
        print(f"bundle invalid:\n{e}", file=sys.stderr)
        return 1
    for target, config in resolved.items():
        counts = {k: len(v) for k, v in (config.get("resources") or {}).items()}
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        print(f"{target}: ok ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
