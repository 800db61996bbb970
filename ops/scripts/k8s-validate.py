#!/usr/bin/env python3
"""Renders a kustomization with the subset of kustomize that deploy/kubernetes uses, and checks the result.

  k8s-validate.py render DIR OUT.yaml       every rendered document into one multi-document file
  k8s-validate.py split IN.yaml CORE.yaml   Kubernetes' own kinds into CORE.yaml (for a schema check);
                                            the others are checked for apiVersion, kind, metadata.name
  k8s-validate.py compare A.yaml B.yaml     the same set of kind/namespace/name in both, or exit 1

Supported kustomization fields: resources (files, or folders with a kustomization.yaml), namespace,
images (name, newName, newTag, digest), replicas (name, count), patches (path: a strategic merge patch),
labels (pairs, includeSelectors: false, includeTemplates). Anything else is an error.
"""
import copy
import os
import sys

import yaml

FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "patches", "labels"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass", "IngressClass", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration", "APIService"}
WORKLOADS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes", "ports", "volumeMounts"}


class Failure(Exception):
    pass


def load_docs(path):
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise Failure(f"{path}: {e}")
    for d in docs:
        if not isinstance(d, dict):
            raise Failure(f"{path}: a document is not a mapping")
    return docs


def ident(doc):
    meta = doc.get("metadata") or {}
    return (doc.get("kind"), meta.get("namespace", ""), meta.get("name"))


def entries(k, field, keys, where):
    items = k.get(field) or []
    for item in items if isinstance(items, list) else [None]:
        if not isinstance(item, dict) or not set(item) <= keys:
            raise Failure(f"{where}: {field}: unsupported entry {item} (a list of mappings with keys {sorted(keys)})")
    return items


def merge(base, patch, where):
    """Strategic merge: mappings merge, lists of mappings with `name` under MERGE_BY_NAME merge by name,
    other lists and scalars are replaced, a null value deletes the key."""
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise Failure(f"{where}: patch directive {key} is not supported")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, f"{where}.{key}")
        elif (key in MERGE_BY_NAME and isinstance(value, list) and isinstance(base.get(key), list)
              and all(isinstance(v, dict) and "name" in v for v in value + base[key])):
            by_name = {v["name"]: v for v in base[key]}
            for v in value:
                if v["name"] in by_name:
                    merge(by_name[v["name"]], v, f"{where}.{key}[{v['name']}]")
                else:
                    base[key].append(copy.deepcopy(v))
        else:
            base[key] = copy.deepcopy(value)


def pod_specs(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        yield template["spec"]


def set_image(image, rule):
    name, sep, digest = image.partition("@")
    slash = name.rfind("/")
    tag = name[name.rfind(":") + 1:] if name.rfind(":") > slash else ""
    base = name[:len(name) - len(tag) - 1] if tag else name
    if base != rule["name"]:
        return None
    new = rule.get("newName", base)
    if "digest" in rule:
        return f"{new}@{rule['digest']}"
    if "newTag" in rule:
        return f"{new}:{rule['newTag']}"
    return new + (f":{tag}" if tag else "") + (f"@{digest}" if sep else "")


def render(directory):
    where = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(where):
        raise Failure(f"{directory}: no kustomization.yaml")
    docs = load_docs(where)
    if len(docs) != 1:
        raise Failure(f"{where}: expected one document")
    k = docs[0]
    unsupported = sorted(set(k) - FIELDS)
    if unsupported:
        raise Failure(f"{where}: unsupported fields {unsupported} (supported: {sorted(FIELDS)})")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise Failure(f"{where}: kind must be Kustomization")
    out = []
    for res in k.get("resources") or []:
        path = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(path):
            out += render(path)
        elif os.path.isfile(path):
            out += load_docs(path)
        else:
            raise Failure(f"{where}: resource {res} does not exist")
    seen = set()
    for d in out:
        if ident(d) in seen:
            raise Failure(f"{where}: {'/'.join(map(str, ident(d)))} appears twice")
        seen.add(ident(d))
    for p in entries(k, "patches", {"path"}, where):
        ppath = os.path.join(directory, p["path"])
        patches = load_docs(ppath)
        if len(patches) != 1:
            raise Failure(f"{ppath}: a patch file holds one document")
        patch = patches[0]
        pk, pns, pname = ident(patch)
        targets = [d for d in out if ident(d)[0] == pk and ident(d)[2] == pname and (not pns or ident(d)[1] == pns)
                   and str(d.get("apiVersion")).split("/")[0] == str(patch.get("apiVersion")).split("/")[0]]
        if len(targets) != 1:
            raise Failure(f"{ppath}: {pk}/{pname} matches {len(targets)} resources, not 1")
        merge(targets[0], patch, ppath)
    if "namespace" in k:
        for d in out:
            if d.get("kind") not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    for rule in entries(k, "labels", {"pairs", "includeSelectors", "includeTemplates"}, where):
        if rule.get("includeSelectors"):
            raise Failure(f"{where}: labels: includeSelectors: true is not supported")
        pairs = {str(a): str(b) for a, b in (rule.get("pairs") or {}).items()}
        for d in out:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if rule.get("includeTemplates") and d.get("kind") in WORKLOADS | {"Job", "DaemonSet"}:
                tmpl = d.setdefault("spec", {}).setdefault("template", {})
                tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    for rule in entries(k, "replicas", {"name", "count"}, where):
        hits = [d for d in out if d.get("kind") in WORKLOADS and ident(d)[2] == rule["name"]]
        if not hits or not isinstance(rule.get("count"), int):
            raise Failure(f"{where}: replicas: {rule.get('name')} matches no workload, or count is not a number")
        for d in hits:
            d.setdefault("spec", {})["replicas"] = rule["count"]
    for rule in entries(k, "images", {"name", "newName", "newTag", "digest"}, where):
        hits = 0
        for d in out:
            for spec in pod_specs(d):
                for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                    new = set_image(str(c.get("image", "")), rule)
                    if new is not None:
                        c["image"], hits = new, hits + 1
        if not hits:
            raise Failure(f"{where}: images: {rule.get('name')} matches no container")
    return out


def is_kubernetes_group(api_version):
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    return "." not in group or group.endswith(".k8s.io")


def main(argv):
    if len(argv) != 4 or argv[1] not in ("render", "split", "compare"):
        raise Failure("usage: k8s-validate.py render DIR OUT.yaml | split IN.yaml CORE.yaml | compare A.yaml B.yaml")
    command, a, b = argv[1:]
    if command == "render":
        docs = render(a)
        with open(b, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False, default_flow_style=False)
        print(f"rendered {a}: {len(docs)} documents")
    elif command == "split":
        core = []
        for d in load_docs(a):
            if is_kubernetes_group(str(d.get("apiVersion", ""))):
                core.append(d)
                continue
            name = (d.get("metadata") or {}).get("name") if isinstance(d.get("metadata"), dict) else None
            if not d.get("apiVersion") or not d.get("kind") or not name:
                raise Failure(f"{a}: a {d.get('apiVersion')} document lacks apiVersion, kind or metadata.name")
            print(f"no schema, checked apiVersion/kind/metadata.name only: {d['apiVersion']} {d['kind']} {name}")
        with open(b, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(core, f, sort_keys=False, default_flow_style=False)
    else:
        docs = [{"/".join(map(str, ident(d))): d for d in load_docs(p)} for p in (a, b)]
        only = [sorted(set(docs[0]) - set(docs[1])), sorted(set(docs[1]) - set(docs[0]))]
        if only[0] or only[1]:
            raise Failure(f"{a} and {b} differ: only in the first {only[0]}, only in the second {only[1]}")
        changed = sorted(i for i in docs[0] if docs[0][i] != docs[1][i])
        print(f"same {len(docs[0])} kind/namespace/name; content " + (f"differs in {changed}" if changed else "identical"))


if __name__ == "__main__":
    try:
        main(sys.argv)
    except Failure as e:
        print(f"k8s-validate.py: error: {e}", file=sys.stderr)
        sys.exit(1)
