"""A small kustomize, enough for deploy/k8s: ``resources`` (files and folders),
``namespace``, ``images`` (tag or digest; containers of workloads plus the extra image
field specs a ``configurations`` file declares, from this folder or any base), and JSON
6902 ``patches`` with a ``target``.

Any other kustomization key is refused, so a manifest change that needs more makes the
tests fail instead of being ignored. When ``kubectl`` is installed its built-in
kustomize must render the same objects (tests/unit/test_k8s_manifests.py).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "images", "patches", "configurations"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


@functools.cache
def _documents(path: Path, mtime_ns: int) -> list[dict[str, Any]]:
    """The YAML documents of one file, parsed once per version of it (C loader if built)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader) if d]


def _spec(folder: Path) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: unsupported keys {sorted(unknown)}")
    return spec


def image_field_specs(folder: Path) -> list[dict[str, str]]:
    """The ``images`` field specs of every ``configurations`` file here and in the bases."""
    spec = _spec(folder)
    found: list[dict[str, str]] = []
    for entry in spec.get("configurations", []):
        config = yaml.safe_load((folder / entry).read_text(encoding="utf-8"))
        if set(config) != {"images"}:
            raise ValueError(f"{folder / entry}: only 'images' field specs are supported")
        found += config["images"]
    for entry in spec.get("resources", []):
        if (folder / entry).is_dir():
            found += image_field_specs(folder / entry)
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    spec = _spec(folder)
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += copy.deepcopy(_documents(path, path.stat().st_mtime_ns))
    if spec.get("namespace"):
        _set_namespace(docs, spec["namespace"])
    field_specs = image_field_specs(folder)
    for image in spec.get("images", []):
        _set_image(docs, image, field_specs)
    for patch in spec.get("patches", []):
        _patch(docs, patch)
    return docs


def _set_namespace(docs: list[dict[str, Any]], namespace: str) -> None:
    for doc in docs:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace  # as kustomize does
        if doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in doc.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject["namespace"] = namespace


def _containers(doc: dict[str, Any], field_specs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Every mapping holding an ``image`` that the images transformer rewrites."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    found = [*pod.get("initContainers", []), *pod.get("containers", [])]
    for field in field_specs:
        if field.get("kind", doc["kind"]) != doc["kind"]:
            continue
        *parts, last = field["path"].split("/")
        if last != "image":
            raise ValueError(f"image field spec {field} must end in /image")
        nodes: list[Any] = [doc]
        for part in parts:
            key, is_list = part.removesuffix("[]"), part.endswith("[]")
            nodes = [n[key] for n in nodes if isinstance(n, dict) and key in n]
            if is_list:
                nodes = [item for n in nodes for item in n]
        found += [n for n in nodes if isinstance(n, dict) and "image" in n]
    return found


def _set_image(docs: list[dict[str, Any]], image: dict[str, str], field_specs: list[dict[str, str]]) -> None:
    for doc in docs:
        for container in _containers(doc, field_specs):
            reference = container["image"]
            name, _, digest = reference.partition("@")
            name, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
            if name != image["name"]:
                continue
            new_name = image.get("newName", name)
            if image.get("digest"):
                container["image"] = f"{new_name}@{image['digest']}"
            elif image.get("newTag") or tag:
                container["image"] = f"{new_name}:{image.get('newTag', tag)}"
            else:
                container["image"] = f"{new_name}@{digest}" if digest else new_name


def _matches(doc: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        doc["kind"] == target["kind"]
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
        and group == target.get("group", group)
        and version == target.get("version", version)
    )


def _patch(docs: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    if set(patch) != {"target", "patch"}:
        raise ValueError(f"only inline JSON 6902 patches with a target are supported: {patch}")
    ops = yaml.safe_load(patch["patch"])
    matched = [doc for doc in docs if _matches(doc, patch["target"])]
    if not matched:
        raise ValueError(f"patch target matches nothing: {patch['target']}")
    for doc in matched:
        for op in ops:
            _apply(doc, op)


def _apply(doc: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) and last != "-" else last
    if op["op"] == "replace":
        if isinstance(node, dict) and key not in node:
            raise ValueError(f"replace of a missing path {op['path']}")
        node[key] = copy.deepcopy(op["value"])
    elif op["op"] == "add":
        if isinstance(node, list):
            node.insert(len(node) if key == "-" else key, copy.deepcopy(op["value"]))
        else:
            node[key] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del node[key]
    else:
        raise ValueError(f"unsupported patch op {op['op']!r}")
