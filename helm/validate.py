#!/usr/bin/env python3
"""Validate every document of rendered manifests against the Kubernetes schemas, strictly.

    validate.py [--kubernetes-version 1.33.0] FILE...

Uses kubernetes-validate (PyPI) with strict=True: unknown fields are errors. A kind with no schema
is an error too, except the kinds in SKIP, which are skipped with the reason printed. Exits 1 when
any document fails, naming the file, the document and the reason.
"""

import argparse
import sys

import kubernetes_validate
import yaml

# Kinds whose schema kubernetes-validate does not ship (custom resources of other projects).
SKIP = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "a prometheus-operator custom resource: "
    "kubernetes-validate ships only the built-in Kubernetes schemas",
    ("cert-manager.io/v1", "Certificate"): "a cert-manager custom resource: "
    "kubernetes-validate ships only the built-in Kubernetes schemas",
    ("cert-manager.io/v1", "Issuer"): "a cert-manager custom resource: "
    "kubernetes-validate ships only the built-in Kubernetes schemas",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.33.0")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failures = passed = skipped = 0
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            try:
                docs = list(yaml.safe_load_all(f))
            except yaml.YAMLError as e:
                print(f"FAIL {path}: not YAML: {e}")
                failures += 1
                continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            where = f"{path} document {index} ({doc.get('kind')} {doc.get('metadata', {}).get('name')})"
            reason = SKIP.get((doc.get("apiVersion"), doc.get("kind")))
            if reason:
                print(f"skip {where}: {reason}")
                skipped += 1
                continue
            try:
                kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                passed += 1
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"FAIL {where}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {args.kubernetes_version}")
                failures += 1
            except kubernetes_validate.ValidationError as e:
                path_in_doc = ".".join(str(p) for p in e.path)
                print(f"FAIL {where}: {path_in_doc}: {e.message}")
                failures += 1
    print(f"validate.py: {passed} documents valid, {skipped} skipped, {failures} invalid "
          f"(Kubernetes {args.kubernetes_version}, strict)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
