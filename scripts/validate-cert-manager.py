#!/usr/bin/env python3
"""Checks cert-manager resources strictly, as kubernetes-validate checks core ones (it has no
schema for cert-manager's kinds and lets them through unchecked).

Each document is validated with the cloudcoil models of cert-manager (generated from
cert-manager's CRDs: types, enums, required fields), then round-tripped: a field the model does
not know (a typo, a field of another version) is an error, as with kubernetes-validate --strict.

    validate-cert-manager.py FILE...      exit 1 and one line per problem when any
"""
import sys

import yaml
from cloudcoil.models.cert_manager import v1

KINDS = {"Certificate": v1.Certificate, "Issuer": v1.Issuer, "ClusterIssuer": v1.ClusterIssuer}


def unknown(given, known, path=""):
    """Paths of `given` that `known` (the model's dump) does not have."""
    out = []
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(known, dict) or k not in known:
                out.append(f"{path}.{k}")
            else:
                out += unknown(v, known[k], f"{path}.{k}")
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known)):
            out += unknown(g, k, f"{path}[{i}]")
    return out


def main(files):
    problems, checked = [], 0
    for f in files:
        for doc in yaml.safe_load_all(open(f)):
            if not doc:
                continue
            where = f"{f}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if doc.get("apiVersion") != "cert-manager.io/v1" or doc.get("kind") not in KINDS:
                problems.append(f"{where}: not a cert-manager.io/v1 Certificate or Issuer")
                continue
            try:
                model = KINDS[doc["kind"]].model_validate(doc)
            except Exception as e:  # pydantic's ValidationError lists every bad field
                problems.append(f"{where}: {e}")
                continue
            dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
            problems += [f"{where}: unknown field {p}" for p in unknown(doc, dumped)]
            checked += 1
    for p in problems:
        print(p)
    if not problems:
        print(f"cert-manager resources: {checked} valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
