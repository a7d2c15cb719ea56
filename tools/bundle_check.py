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
7. check what only fails at deploy or run time: app resources on objects the deploy does not
   create, schemas and volumes an app uses without a grant to its service principal, a
   ``group_name`` that is a user, development app names not unique per user, production
   top-level CAN_MANAGE beyond the run-as principal, and bundle-managed names (schemas, volumes
   inside them, registered models) reaching job code as literals.

Run it as a script (it imports nothing from the rest of cxrlake, so it works before the Rust
extension is built)::

    python tools/bundle_check.py --bundle bundle \
        --schema ../shared/databricks/bundle_jsonschema.json --targets dev pilot prod
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
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

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
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
    sequences concatenated, anything else replaced by the override (CLI v1.13.0
    libs/dyn/merge/merge.go). Neither argument is modified."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        return copy.deepcopy(base) + copy.deepcopy(override)
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
    problems.extend(check_required_variables(config, target)[0])
    return problems


# ---------------------------------------------------------------------------------------------
# Checks for failures the CLI only reports at deploy or run time (or never).

PRINCIPAL_KEYS = ("principal", "group_name", "user_name", "service_principal_name")
# A principal must be a variable (the user's choice), the deploying user or the service principal
# of an app of the bundle (created by the same deploy).
PRINCIPAL_REF = re.compile(
    r"\$\{(?:var\.([\w-]+)|workspace\.current_user\.userName"
    r"|resources\.apps\.[\w-]+\.service_principal_client_id)\}"
)
CURRENT_USER = "${workspace.current_user.userName}"
# Flags naming the platform a wheel is built for, and writing it to a given folder.
TARGET_FLAGS = re.compile(r"(?:^|\s)(?:--target|--plat-name|--platform)[\s=]+(\S+)")
OUT_FLAGS = re.compile(r"(?:^|\s)(?:--out|-o|--outdir|--dist-dir|-d)[\s=]+(\S+)")
CLEAN = re.compile(r"(?:^|[\s;&(])rm\s+-(?:rf|fr|r)\s+(\S+)")
# What Databricks Runtime provides without a library (import names). Conservative: only the
# packages every runtime ships; the ML runtime adds the deep-learning stack and MLflow.
# https://docs.databricks.com/aws/en/release-notes/runtime/ (system environment, Python libraries)
RUNTIME_MODULES = {"pyspark", "py4j", "pandas", "numpy", "pyarrow", "PIL", "IPython"}
ML_RUNTIME_MODULES = RUNTIME_MODULES | {"torch", "torchvision", "mlflow", "sklearn"}
# Import name -> distributions that provide it, where the two names differ.
MODULE_DISTRIBUTIONS = {
    "PIL": {"pillow"},
    "yaml": {"pyyaml"},
    "sklearn": {"scikit-learn"},
    "mlflow": {"mlflow", "mlflow-skinny"},
}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0])


def check_principals(document: dict[str, Any]) -> list[str]:
    """Every grant, permission and run_as principal is a variable (or the deploying user), and a
    variable used as a principal has no literal value in any target: a group named in the
    configuration may not exist in the workspace, and a grant to a missing principal fails the
    deploy."""
    problems = []
    principal_vars: dict[str, str] = {}
    for where, value in _walk(document):
        key = where.rsplit(".", 1)[-1]
        if key not in PRINCIPAL_KEYS or not isinstance(value, str):
            continue
        if not ("grants[" in where or "permissions[" in where or "run_as." in where):
            continue
        m = PRINCIPAL_REF.fullmatch(value)
        if not m:
            problems.append(
                f"{where} = {value!r}: principals must be variables (${{var.<name>}}), "
                "not names that may not exist in the workspace"
            )
        elif m.group(1):
            principal_vars.setdefault(m.group(1), where)
    targets = document.get("targets") or {}
    for name, where in sorted(principal_vars.items()):
        for target in targets:
            spec = (target_config(document, target).get("variables") or {}).get(name) or {}
            value = spec.get("default")
            if value is not None and value != CURRENT_USER:
                problems.append(
                    f"{target}: variable {name!r} (a principal, {where}) has the literal value "
                    f"{value!r}; leave it required (documented --var) or use {CURRENT_USER}"
                )
    return problems


def check_required_variables(config: dict[str, Any], target: str) -> tuple[list[str], list[str]]:
    """(problems, required): a variable without a value in ``target`` must say in its
    description how to set it (``--var``); the CLI then stops with a message naming it."""
    problems, required = [], []
    for name, spec in (config.get("variables") or {}).items():
        spec = spec or {}
        if "default" in spec or "lookup" in spec:
            continue
        if "--var" in str(spec.get("description", "")):
            required.append(name)
        else:
            problems.append(
                f"variables.{name}: no value for target {target!r} and its description does not "
                "say how to set it (--var name=value)"
            )
    return problems, required


APP_SP = "${{resources.apps.{}.service_principal_client_id}}"
# App resource securable types a bundle can create, and the resource type that creates them.
SECURABLE_RESOURCES = {"VOLUME": "volumes", "FUNCTION": "registered_models"}
RESOURCE_REF = re.compile(r"\$\{resources\.([\w-]+)\.([\w-]+)(?:\.[\w-]+)+\}")
# App names: lowercase letters, digits and '-' (apps API, App.name).
APP_NAME = re.compile(r"[a-z0-9-]+")
# Current-user fields whose values may hold characters an app name cannot.
USER_FIELD = re.compile(r"\$\{workspace\.current_user\.([\w]+)\}")


def check_app_resources(config: dict[str, Any]) -> list[str]:
    """Every Unity Catalog object an app names as a resource exists when the bundle deploys: a
    single reference to the bundle resource that creates it (the CLI then creates the app after
    it). A table, or a name built from parts, names an object a job creates later or that may
    not exist, and the app's create call fails the deploy."""
    problems = []
    resources = config.get("resources") or {}
    for app_key, app in (resources.get("apps") or {}).items():
        for i, res in enumerate((app or {}).get("resources") or []):
            securable = (res or {}).get("uc_securable")
            if not securable:
                continue
            kind = str(securable.get("securable_type", ""))
            name = str(securable.get("securable_full_name", ""))
            where = f"resources.apps.{app_key}.resources[{i}] ({res.get('name')!r})"
            rtype = SECURABLE_RESOURCES.get(kind)
            m = RESOURCE_REF.fullmatch(name)
            if rtype is None:
                problems.append(
                    f"{where}: a {kind} is not created by the deploy (no bundle resource creates "
                    "one), so the app cannot be created on a first deploy; grant it from the job "
                    "that creates it (the setup job) and leave it out of the app's resources"
                )
            elif not m or m.group(1) != rtype or m.group(2) not in (resources.get(rtype) or {}):
                problems.append(
                    f"{where}: securable_full_name {name!r} is not a reference to a {rtype} "
                    f"resource of the bundle (${{resources.{rtype}.<key>.id}}): the {kind} may not "
                    "exist yet when the app is created"
                )
    return problems


def _grants_to(spec: dict[str, Any], principal: str) -> set[str]:
    return {
        str(p)
        for g in (spec or {}).get("grants") or []
        if (g or {}).get("principal") == principal
        for p in (g.get("privileges") or [])
    }


def check_app_grants(config: dict[str, Any]) -> list[str]:
    """Every schema and volume an app uses lists the app's service principal in its grants: the
    Apps platform grants an app resource to the principal, but the direct engine replaces a
    securable's grants with the configured list on the next deploy (CLI v1.13.0
    bundle/direct/dresources/grants.go; bundle/apps/validate.go, cli issue 4309), so an unlisted
    principal loses USE SCHEMA / READ VOLUME."""
    problems = []
    resources = config.get("resources") or {}
    schemas = resources.get("schemas") or {}
    volumes = resources.get("volumes") or {}
    for app_key, app in (resources.get("apps") or {}).items():
        sp = APP_SP.format(app_key)
        used_schemas: dict[str, str] = {}
        used_volumes: dict[str, str] = {}
        for where, ref in references(app or {}):
            parts = ref.split(".")
            if parts[0] != "resources" or len(parts) < 3:
                continue
            if parts[1] == "schemas":
                used_schemas.setdefault(parts[2], where)
            elif parts[1] == "volumes":
                used_volumes.setdefault(parts[2], where)
        for res in (app or {}).get("resources") or []:
            securable = (res or {}).get("uc_securable") or {}
            m = RESOURCE_REF.fullmatch(str(securable.get("securable_full_name", "")))
            if m and m.group(1) == "volumes":
                needed = str(securable.get("permission", "READ_VOLUME"))
                if needed not in _grants_to(volumes.get(m.group(2)) or {}, sp):
                    problems.append(
                        f"resources.volumes.{m.group(2)}.grants: app {app_key!r} uses the volume "
                        f"({needed}) but its grants list no {needed} for {sp}; the direct engine "
                        "revokes it on the next deploy"
                    )
        for key in used_volumes:
            schema_ref = str((volumes.get(key) or {}).get("schema_name", ""))
            m = RESOURCE_REF.fullmatch(schema_ref)
            if m and m.group(1) == "schemas":
                used_schemas.setdefault(m.group(2), f"volume {key}")
        for key, where in sorted(used_schemas.items()):
            if key in schemas and "USE_SCHEMA" not in _grants_to(schemas[key], sp):
                problems.append(
                    f"resources.schemas.{key}.grants: app {app_key!r} uses the schema ({where}) "
                    f"but its grants list no USE_SCHEMA for {sp}; the direct engine revokes "
                    "what the app was granted on the next deploy"
                )
    return problems


def _permission_entries(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, entry) of every permission entry: top level and per resource."""
    for i, entry in enumerate(config.get("permissions") or []):
        yield f"permissions[{i}]", entry or {}
    for rtype, items in (config.get("resources") or {}).items():
        for key, spec in (items or {}).items():
            for i, entry in enumerate((spec or {}).get("permissions") or []):
                yield f"resources.{rtype}.{key}.permissions[{i}]", entry or {}


def check_group_names(config: dict[str, Any], target: str) -> list[str]:
    """No permission's ``group_name`` resolves to a user in ``target`` (the deploying user, or
    an e-mail address): the permissions API looks the name up among groups and the deploy fails.
    ``config`` has its variables interpolated."""
    problems = []
    for where, entry in _permission_entries(config):
        value = str(entry.get("group_name") or "")
        if value and ("${workspace.current_user." in value or "@" in value):
            problems.append(
                f"{target}: {where}.group_name = {value!r} is a user, not a group; give the "
                "permission only in targets where the variable names a group (or use user_name)"
            )
    return problems


def check_dev_app_names(document: dict[str, Any], config: dict[str, Any], target: str) -> list[str]:
    """In development mode every app name holds the deploying user: apps get no development
    prefix (CLI v1.13.0 apply_presets.go, "Apps: No presets") and a name is unique in the
    workspace, so two developers' deploys would fight over one app. The user part must be
    ``${workspace.current_user.domain_friendly_name}``: user names and short names hold
    characters an app name cannot (it takes lowercase letters, digits and '-')."""
    if ((document.get("targets") or {}).get(target) or {}).get("mode") != "development":
        return []
    problems = []
    for key, app in ((config.get("resources") or {}).get("apps") or {}).items():
        name = str((app or {}).get("name", ""))
        fields = USER_FIELD.findall(name)
        where = f"{target}: resources.apps.{key}.name = {name!r}"
        if not fields:
            problems.append(
                f"{where}: not unique per user in development mode (apps get no dev prefix); "
                "add ${workspace.current_user.domain_friendly_name}"
            )
        elif any(f != "domain_friendly_name" for f in fields):
            problems.append(
                f"{where}: user names and short names hold characters app names refuse; use "
                "${workspace.current_user.domain_friendly_name}"
            )
        elif not APP_NAME.fullmatch(USER_FIELD.sub("user", name)):
            problems.append(f"{where}: an app name takes lowercase letters, digits and '-' only")
    return problems


def check_production_permissions(
    document: dict[str, Any], config: dict[str, Any], target: str
) -> list[str]:
    """In production mode only the run-as principal holds CAN_MANAGE at the top level: the top
    level grants CAN_MANAGE on every job and the bundle's folder (CLI v1.13.0
    apply_bundle_permissions.go), and whoever can edit a job or its notebooks runs code as the
    run-as principal. ``config`` has its variables interpolated."""
    if ((document.get("targets") or {}).get(target) or {}).get("mode") != "production":
        return []
    run_as = config.get("run_as") or {}
    runner = run_as.get("service_principal_name") or run_as.get("user_name")
    problems = []
    for i, entry in enumerate(config.get("permissions") or []):
        entry = entry or {}
        if entry.get("level") != "CAN_MANAGE":
            continue
        who = entry.get("service_principal_name") or entry.get("user_name")
        if not runner or who != runner:
            principal = who or entry.get("group_name")
            problems.append(
                f"{target}: permissions[{i}] gives CAN_MANAGE to {principal!r}, who is not the "
                f"run-as principal ({runner!r}): it could edit the jobs and notebooks that run "
                "as that principal; give it CAN_RUN or CAN_VIEW"
            )
    return problems


def check_artifacts(bundle: Bundle, config: dict[str, Any]) -> list[str]:
    """A whl artifact names its target platform, builds into a folder it empties first, uploads
    only that folder, and every wheel library of a job lies in it."""
    problems = []
    artifact_dirs: list[Path] = []
    for name, spec in (config.get("artifacts") or {}).items():
        spec = spec or {}
        if spec.get("type") != "whl":
            continue
        build = " ".join(str(spec.get("build", "")).split())
        base = (bundle.root_dir / str(spec.get("path", "."))).resolve()
        label = f"artifacts.{name}"
        if not TARGET_FLAGS.search(build):
            problems.append(
                f"{label}.build names no target platform (--target <triple>): the wheel is built "
                "for whatever machine deploys (a Mac or ARM laptop builds one the clusters cannot "
                "install)"
            )
        out = OUT_FLAGS.search(build)
        cleaned = {(base / c).resolve() for c in CLEAN.findall(build)}
        if not out:
            problems.append(f"{label}.build names no output folder (--out <dir>)")
            continue
        out_dir = (base / out.group(1)).resolve()
        if out_dir not in cleaned:
            problems.append(
                f"{label}.build does not empty {out.group(1)!r} before building (rm -rf): a stale "
                "wheel of the same version may be uploaded instead"
            )
        files = spec.get("files") or []
        if not files:
            problems.append(
                f"{label}.files is not set: the CLI then uploads every {base / 'dist'}/*.whl"
            )
        for i, f in enumerate(files):
            source = (bundle.root_dir / str((f or {}).get("source", ""))).resolve()
            if source.parent != out_dir:
                problems.append(f"{label}.files[{i}].source {source} is not in {out_dir}")
        artifact_dirs.append(out_dir)
    for job_key, job in ((config.get("resources") or {}).get("jobs") or {}).items():
        for where, value in _walk(job):
            if isinstance(value, str) and re.search(r"libraries\[\d+\]\.whl$", where):
                if value.startswith("/") or "${" in value:
                    continue
                resources_dir = bundle.root_dir / "resources"
                path = (resources_dir / value).resolve()
                if path.parent not in artifact_dirs:
                    problems.append(
                        f"resources.jobs.{job_key}.{where} = {value!r}: not in the output folder "
                        f"of a whl artifact ({', '.join(map(str, artifact_dirs)) or 'none'})"
                    )
    return problems


def _strings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _literal_name_pattern(names: set[str]) -> re.Pattern[str] | None:
    if not names:
        return None
    alternatives = "|".join(sorted(map(re.escape, names)))
    # `bronze.table`, `x.bronze.table`, `/Volumes/c/bronze/v`: a schema in a qualified name
    return re.compile(rf"\b({alternatives})\s*\.\s*[A-Za-z_`][\w`]*|/({alternatives})/")


def _sql_code(text: str) -> str:
    """SQL text without comments and string literals (table names are what is left)."""
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)


def _job_files(bundle: Bundle, config: dict[str, Any]) -> list[tuple[str, Path]]:
    """(job key, file) for every notebook and Python file a job runs."""
    out = []
    for job_key, job in ((config.get("resources") or {}).get("jobs") or {}).items():
        for task in job.get("tasks") or []:
            rel = (task.get("notebook_task") or {}).get("notebook_path") or (
                task.get("spark_python_task") or {}
            ).get("python_file")
            if not rel or rel.startswith("/") or "${" in rel:
                continue
            path = (bundle.root_dir / "resources" / rel).resolve()
            if not path.suffix:
                path = path.with_suffix(".py")
            if path.is_file():
                out.append((job_key, path))
    return out


def check_literal_names(bundle: Bundle, config: dict[str, Any]) -> list[str]:
    """No job parameter, job code, synced SQL file or dashboard query names a bundle-managed
    schema by a literal: development mode deploys it as ``dev_<user>_<name>``, so only
    ``${resources.schemas.<key>.name}`` (passed as a parameter) names it right in every target."""
    resources = config.get("resources") or {}
    schemas = {str(s.get("name")) for s in (resources.get("schemas") or {}).values() if s}
    pattern = _literal_name_pattern(schemas)
    if pattern is None:
        return []
    problems = []
    hint = "use the deployed name (${resources.schemas.<key>.name}, passed as a job parameter)"
    for job_key, job in (resources.get("jobs") or {}).items():
        for where, value in _walk(job):
            if not isinstance(value, str) or "parameters" not in where:
                continue
            if pattern.search(re.sub(r"\$\{[^}]*\}", "X", value)):
                problems.append(f"resources.jobs.{job_key}.{where} = {value!r}: {hint}")
    for job_key, path in _job_files(bundle, config):
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line for line in text.splitlines() if not line.startswith("# MAGIC"))
        try:
            tree = ast.parse(code)
        except SyntaxError as e:
            problems.append(f"{path.name} (job {job_key}): not valid Python: {e}")
            continue
        for value in _strings(tree):
            m = pattern.search(value)
            if m:
                problems.append(
                    f"{path.name} (job {job_key}): {value!r} names {m.group(0)!r}; {hint}"
                )
    for sync in (config.get("sync") or {}).get("paths") or []:
        base = (bundle.root_dir / str(sync)).resolve()
        for sql in sorted(base.rglob("*.sql")) if base.is_dir() else []:
            code = _sql_code(sql.read_text(encoding="utf-8"))
            for m in pattern.finditer(code):
                problems.append(
                    f"{sql.relative_to(bundle.root_dir.parent)}: {m.group(0).strip()!r} names a "
                    "bundle-managed schema by a literal; use a ${<key>_schema} parameter"
                )
    for key, dash in (resources.get("dashboards") or {}).items():
        problems.extend(_dashboard_literal_names(bundle, key, dash or {}, schemas))
    problems.extend(_registered_model_literals(bundle, config))
    return problems


def _wheel_packages(bundle: Bundle, config: dict[str, Any]) -> list[tuple[Path, list[str]]]:
    """(python source root, top-level packages) of each whl artifact's project."""
    out = []
    for spec in (config.get("artifacts") or {}).values():
        spec = spec or {}
        project = (bundle.root_dir / str(spec.get("path", "."))).resolve()
        if spec.get("type") == "whl" and (project / "pyproject.toml").is_file():
            root = _package_layout(project)[0]
            out.append(
                (root, sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file()))
            )
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module and its functions and classes."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = body[0] if body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _module_constants(tree: ast.AST) -> dict[str, str]:
    """Module-level ``NAME = "text"`` (and annotated) assignments."""
    out = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    out[target.id] = node.value.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.target.id] = node.value.value
    return out


def _registered_model_literals(bundle: Bundle, config: dict[str, Any]) -> list[str]:
    """No job parameter and no code a job runs (its notebook, and the package functions it can
    call, module constants they use included) names a bundle-managed registered model by a
    literal: development mode deploys it as ``dev_<user>_<name>``, so a literal name reaches a
    model outside the bundle (no grants, never the one the bundle manages)."""
    resources = config.get("resources") or {}
    names = {
        str(m.get("name"))
        for m in (resources.get("registered_models") or {}).values()
        if m and m.get("name") and "${" not in str(m.get("name"))
    }
    if not names:
        return []
    alternatives = "|".join(sorted(map(re.escape, names)))
    # a whole string that is a model reference: name, schema.name, catalog.schema.name@alias
    reference = re.compile(rf"(?:[\w`-]+\.)*`?(?:{alternatives})`?(?:@[\w-]+)?")
    inside = re.compile(rf"(?<![\w$])(?:{alternatives})(?!\w)")
    hint = "pass ${resources.registered_models.<key>.name} as a job parameter"
    problems = []
    for job_key, job in (resources.get("jobs") or {}).items():
        for where, value in _walk(job):
            if (
                isinstance(value, str)
                and "parameters" in where
                and inside.search(re.sub(r"\$\{[^}]*\}", "X", value))
            ):
                problems.append(
                    f"resources.jobs.{job_key}.{where} = {value!r} names a registered model "
                    f"by a literal; {hint}"
                )
    packages = _wheel_packages(bundle, config)
    for job_key, path in _job_files(bundle, config):
        found: dict[tuple[str, str], str] = {}
        for source_root, package_names in packages or [(path.parent, [""])]:
            for package in package_names:
                bodies = reachable_code(path, source_root, package, methods_anywhere=True)
                constants: dict[Path, dict[str, str]] = {}
                for file, body in bodies:
                    is_function = isinstance(body, (ast.FunctionDef, ast.AsyncFunctionDef))
                    if file != path and not is_function:
                        continue  # a package module's top level: definitions, not uses
                    if file not in constants:
                        constants[file] = _module_constants(_parse_cached(file))
                    skip = _docstrings(body)
                    for node in ast.walk(body):
                        text = None
                        if isinstance(node, ast.Constant) and isinstance(node.value, str):
                            if id(node) not in skip:
                                text = node.value
                        elif isinstance(node, ast.Name) and node.id in constants[file]:
                            text = constants[file][node.id]
                        if text is not None and reference.fullmatch(text.strip()):
                            where = getattr(body, "name", path.name)
                            found.setdefault((file.name, where), text)
        for (file_name, where), text in sorted(found.items()):
            problems.append(
                f"job {job_key}: {file_name} ({where}) names the registered model {text!r} by a "
                f"literal; {hint} and use it"
            )
    return problems


def _dashboard_literal_names(
    bundle: Bundle, key: str, dash: dict[str, Any], schemas: set[str]
) -> list[str]:
    import sqlglot
    from sqlglot import exp

    file = dash.get("file_path")
    if not file or "${" in str(file):
        return []
    path = (bundle.root_dir / "resources" / file).resolve()
    if not path.is_file():
        return []
    try:
        datasets = json.loads(path.read_text(encoding="utf-8")).get("datasets", [])
    except json.JSONDecodeError:
        return []  # reported by check_dashboard
    problems = []
    unqualified = False
    for d in datasets:
        query = "".join(d.get("queryLines", [])) or d.get("query", "")
        try:
            tree = sqlglot.parse_one(query, read="databricks")
        except sqlglot.errors.ParseError as e:
            problems.append(f"dashboard {key}: dataset {d.get('name')!r} does not parse: {e}")
            continue
        ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if table.db in schemas:
                problems.append(
                    f"dashboard {key}: dataset {d.get('name')!r} names {table.sql()!r}; leave "
                    "tables unqualified and set dataset_schema: ${resources.schemas.<key>.name}"
                )
            elif not table.db and table.name not in ctes:
                unqualified = True
    if unqualified and "${resources.schemas." not in str(dash.get("dataset_schema", "")):
        problems.append(
            f"dashboard {key}: datasets name unqualified tables but dataset_schema is not "
            "${resources.schemas.<key>.name}"
        )
    return problems


def _package_layout(project_dir: Path) -> tuple[Path, list[str]]:
    """(python source root, runtime requirements) of the project a whl artifact builds."""
    data = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
    source = (data.get("tool", {}).get("maturin", {}) or {}).get("python-source", "")
    if not source and (project_dir / "src").is_dir():
        source = "src"
    return (project_dir / source).resolve(), list(data.get("project", {}).get("dependencies", []))


def _import_nodes(node: ast.AST) -> Iterator[tuple[str, list[str]]]:
    """(module, imported names) of the import statements directly in ``node``'s body (not in
    nested functions), skipping ``if TYPE_CHECKING`` blocks."""
    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            if isinstance(child, ast.ClassDef):
                stack.extend(n for n in child.body if not isinstance(n, ast.FunctionDef))
            continue
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name, []
        elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
            yield child.module, [a.name for a in child.names]
        stack.extend(ast.iter_child_nodes(child))


def _called_names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(bare names, attribute names) ``node``'s own code calls or passes on (callbacks), not
    counting the bodies of the functions it defines (they run only when called themselves)."""
    bare: set[str] = set()
    attributes: set[str] = set()
    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack.extend(child.decorator_list)
            continue
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
            attributes.add(child.func.attr)
        elif isinstance(child, ast.Name):
            bare.add(child.id)
        stack.extend(ast.iter_child_nodes(child))
    return bare, attributes


def _functions(tree: ast.AST) -> dict[str, list[ast.AST]]:
    """Function and method definitions of a module by name (nested ones included); a class name
    maps to all its methods (constructing an object can run any of them)."""
    out: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.ClassDef):
            out.setdefault(node.name, []).extend(
                n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return out


def _module_file(source_root: Path, module: str) -> Path | None:
    base = source_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=512)
def _parse_cached(file: Path) -> ast.AST:
    return _parse(file)


def _parse(file: Path) -> ast.AST:
    text = file.read_text(encoding="utf-8")
    if text.startswith(NOTEBOOK_HEADER):
        text = "\n".join(line for line in text.splitlines() if not line.startswith("# MAGIC"))
    return ast.parse(text)


@functools.lru_cache(maxsize=256)
def reachable_code(
    path: Path, source_root: Path, package: str, methods_anywhere: bool = False
) -> tuple[tuple[Path, ast.AST], ...]:
    """The code a job file can run, as (file, body): the file itself, the module-level code of
    every module of the project's package (``package``) it loads, and the package functions it
    can call (a static call graph by name over the modules each file imports). With
    ``methods_anywhere`` a called name is looked up in every loaded module, so a method called on
    an object another module returned (``names.model_name()``) counts too."""
    trees: dict[Path, ast.AST] = {}
    functions: dict[Path, dict[str, list[ast.AST]]] = {}
    loaded: list[Path] = []  # modules imported (their module-level code runs)
    reached: set[tuple[Path, str]] = set()  # (module, function name) that can run
    todo: list[tuple[Path, ast.AST]] = []  # code bodies to scan: module bodies, functions
    scanned: list[tuple[Path, ast.AST]] = []

    def tree(file: Path) -> ast.AST:
        if file not in trees:
            trees[file] = _parse_cached(file)
        return trees[file]

    def defs(file: Path) -> dict[str, list[ast.AST]]:
        if file not in functions:
            functions[file] = _functions(tree(file))
        return functions[file]

    def load(module: str, names: list[str]) -> list[Path]:
        files = []
        for candidate in [module] + [f"{module}.{n}" for n in names]:
            parts = candidate.split(".")
            for i in range(1, len(parts) + 1):  # parents' __init__ run first
                file = _module_file(source_root, ".".join(parts[:i]))
                if file is not None and file not in files:
                    files.append(file)
        for file in files:
            if file not in loaded:
                loaded.append(file)
                todo.append((file, tree(file)))
        return files

    def scan(file: Path, body: ast.AST, visible: list[Path]) -> None:
        for module, names in _import_nodes(body):
            if module.split(".")[0] == package:
                visible.extend(f for f in load(module, names) if f not in visible)
        bare, attributes = _called_names(body)
        for name in sorted(bare | attributes):
            if name in bare and name not in attributes and name in defs(file):
                candidates = [file]  # a bare name defined in the module is that definition
            else:
                candidates = [file, *visible, *(loaded if methods_anywhere else [])]
            for module_file in dict.fromkeys(candidates):
                if module_file == path:
                    continue
                for fn in defs(module_file).get(name, []):
                    if (module_file, f"{name}:{fn.lineno}") not in reached:
                        reached.add((module_file, f"{name}:{fn.lineno}"))
                        todo.append((module_file, fn))

    visible_of: dict[Path, list[Path]] = {}
    todo.append((path, tree(path)))
    while todo:
        while todo:
            file, body = todo.pop(0)
            scanned.append((file, body))
            scan(file, body, visible_of.setdefault(file, []))
        # A module a file imports later (inside a function reached afterwards) makes more of its
        # calls resolvable: scan the calls again until nothing new is reached, so the result does
        # not depend on the order of the bodies (set iteration order varies between runs).
        for file, body in list(scanned):
            scan(file, body, visible_of.setdefault(file, []))
    return tuple(scanned)


@functools.lru_cache(maxsize=256)
def third_party_imports(path: Path, source_root: Path, package: str) -> dict[str, str]:
    """Top-level third-party modules a job file imports when it runs (`reachable_code`: its own
    imports, the module-level imports of every package module it loads, and the imports inside
    the package functions it can call, so a lazy ``import deltalake`` in a function the job
    never reaches does not count). Returns {module: the file importing it}."""
    found: dict[str, str] = {}
    for file, body in reachable_code(path, source_root, package):
        for module, _ in _import_nodes(body):
            top = module.split(".")[0]
            if top != package and top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, file.name)
    return found


def check_job_imports(bundle: Bundle, config: dict[str, Any]) -> list[str]:
    """Every third-party package a job's code imports (notebook and, transitively, the bundle's
    own wheel package) is installed on the job's compute: by the runtime, by the wheel's runtime
    dependencies, or by a ``pypi`` library / environment dependency of the task."""
    problems = []
    wheels = []
    for spec in (config.get("artifacts") or {}).values():
        spec = spec or {}
        project = (bundle.root_dir / str(spec.get("path", "."))).resolve()
        if spec.get("type") == "whl" and (project / "pyproject.toml").is_file():
            wheels.append(_package_layout(project))
    resources = config.get("resources") or {}
    for job_key, job in (resources.get("jobs") or {}).items():
        clusters = {
            c.get("job_cluster_key"): c.get("new_cluster") or {}
            for c in job.get("job_clusters") or []
        }
        environments = {
            e.get("environment_key"): (e.get("spec") or {}).get("dependencies") or []
            for e in job.get("environments") or []
        }
        for task in job.get("tasks") or []:
            rel = (task.get("notebook_task") or {}).get("notebook_path") or (
                task.get("spark_python_task") or {}
            ).get("python_file")
            if not rel or rel.startswith("/") or "${" in rel:
                continue
            path = (bundle.root_dir / "resources" / rel).resolve()
            if not path.suffix:
                path = path.with_suffix(".py")
            if not path.is_file():
                continue
            cluster = clusters.get(task.get("job_cluster_key")) or task.get("new_cluster") or {}
            version = str(cluster.get("spark_version", ""))
            provided = set(ML_RUNTIME_MODULES if "-ml-" in version else RUNTIME_MODULES)
            installed: set[str] = set()
            has_wheel = False
            for lib in task.get("libraries") or []:
                if "whl" in lib:
                    has_wheel = True
                if "pypi" in lib:
                    installed.add(_requirement_name(str(lib["pypi"].get("package", ""))))
            for dep in environments.get(task.get("environment_key"), []):
                if str(dep).endswith(".whl"):
                    has_wheel = True
                else:
                    installed.add(_requirement_name(str(dep)))
            packages = set()
            for source_root, requirements in wheels if has_wheel else []:
                packages.update(
                    p.name for p in source_root.iterdir() if (p / "__init__.py").is_file()
                )
                installed.update(_requirement_name(r) for r in requirements)
            for package in sorted(packages) or [None]:
                root = wheels[0][0] if wheels else path.parent
                found = third_party_imports(path, root, package or "")
                for module, where in sorted(found.items()):
                    if module in provided or module in packages:
                        continue
                    dists = MODULE_DISTRIBUTIONS.get(module, {_normalize(module)})
                    if not dists & installed:
                        problems.append(
                            f"job {job_key}, task {task.get('task_key')}: {where} imports "
                            f"{module!r}, which neither runtime {version or '?'} nor the task's "
                            "libraries install (add a pypi library or a wheel dependency)"
                        )
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
    problems.extend(check_principals(bundle.document))
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
        # the same file problem is reported once, not once per target
        problems.extend(check_artifacts(bundle, interpolated))
        problems.extend(check_literal_names(bundle, interpolated))
        problems.extend(check_app_resources(interpolated))
        problems.extend(check_app_grants(interpolated))
        problems.extend(check_group_names(interpolated, target))
        problems.extend(check_dev_app_names(bundle.document, interpolated, target))
        problems.extend(check_production_permissions(bundle.document, interpolated, target))
        problems.extend(check_job_imports(bundle, interpolated))
        resolved[target] = interpolated
    problems = list(dict.fromkeys(problems))
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
        required = check_required_variables(config, target)[1]
        needs = f"; set at deploy: {', '.join(sorted(required))}" if required else ""
        print(f"{target}: ok ({summary}){needs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
