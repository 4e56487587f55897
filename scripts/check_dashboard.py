#!/usr/bin/env python3
"""Checks the Grafana dashboard deploy/grafana/cra.json (Python's standard library and promtool only):

  - it is valid JSON, with a title, a uid, a schemaVersion and a Prometheus datasource variable;
  - every panel (rows' nested panels too) has a unique id and a gridPos inside the 24 columns,
    and no two panels overlap;
  - every panel but rows has targets, each with a PromQL expression, and every expression
    parses: with Grafana's variables replaced by sample values, they are written into a
    temporary rules file as recording rules and `promtool check rules` must accept it (the
    selectors of the `label_values(...)` variable queries too);
  - with --metrics SCRAPE (a /metrics exposition): every cra_* metric name the dashboard
    uses, and those of every --rules FILE's `expr:`s, is in the scrape (a histogram's or
    summary's _bucket, _sum and _count by its base name), except names starting with a
    --skip prefix.

Prints an "ok: ..." line per check passed and "FAIL: ..." lines otherwise; exits 1 on failure.

  scripts/check_dashboard.py deploy/grafana/cra.json [--metrics scrape.txt]
      [--rules deploy/prometheus/alerts.yaml] [--skip cra_drift_,...] [--promtool PATH]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

GRID_COLUMNS = 24
METRIC = re.compile(r"\b(cra_[A-Za-z0-9_:]*[A-Za-z0-9])\b")
# Grafana's interval variables, then any other variable ($var, ${var}, ${var:format}, [[var]]).
INTERVAL_VARS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
OTHER_VARS = re.compile(r"\$\{[A-Za-z0-9_]+(?::[A-Za-z0-9_]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$")
SUFFIXES = ("_bucket", "_sum", "_count")

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def concrete(expr):
    """The expression as Prometheus would get it: variables replaced by sample values. The
    dashboard's variables are used inside label matchers' quotes, where `.+` fits."""
    return OTHER_VARS.sub(".+", INTERVAL_VARS.sub("5m", expr))


def rules_exprs(path):
    """The `expr:` values of a Prometheus rules file, single-line or block scalars (`|`, `>`)."""
    exprs, lines = [], open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        value = m.group(2).strip()
        if value[:1] in ("|", ">"):
            indent = len(m.group(1))
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            value = "\n".join(block)
        exprs.append(value.strip().strip("'\""))
    return exprs


def scrape_names(path):
    """Metric names of an exposition: sample names, and the base names of histograms and summaries."""
    names, typed = set(), {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                typed[parts[2]] = parts[3]
                names.add(parts[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names, typed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard")
    ap.add_argument("--metrics", help="a /metrics scrape the metric names must be in")
    ap.add_argument("--rules", action="append", default=[], help="a rules file whose expr metric names are checked too")
    ap.add_argument("--skip", default="", help="comma-separated metric name prefixes left out of the name check")
    ap.add_argument("--promtool", default="promtool")
    args = ap.parse_args()

    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{args.dashboard}: not valid JSON: {e}")
        return 1

    # The dashboard itself.
    for key in ("title", "uid", "schemaVersion", "panels"):
        if key not in dash:
            fail(f"the dashboard has no {key}")
    variables = dash.get("templating", {}).get("list", [])
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables):
        fail("no Prometheus datasource variable in templating")
    panels = list(all_panels(dash.get("panels", [])))
    ids = [p.get("id") for p in panels]
    dup = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if None in ids:
        fail("a panel has no id")
    if dup:
        fail(f"panel ids used more than once: {dup}")
    if not failures:
        print(f"ok: dashboard {os.path.basename(args.dashboard)}: valid JSON, schemaVersion {dash.get('schemaVersion')}, "
              f"a Prometheus datasource variable, {len(panels)} panels with unique ids")

    # The grid.
    before = len(failures)
    boxes = []
    for p in panels:
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            fail(f"panel {p.get('id')} ({p.get('title')!r}) has no complete gridPos: {g}")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] <= 0 or g["h"] <= 0 or g["x"] + g["w"] > GRID_COLUMNS:
            fail(f"panel {p.get('id')} ({p.get('title')!r}) lies outside the {GRID_COLUMNS} columns: {g}")
        boxes.append((p, g))
    for i, (p, a) in enumerate(boxes):
        for q, b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                fail(f"panels {p.get('id')} ({p.get('title')!r}) and {q.get('id')} ({q.get('title')!r}) overlap: {a} {b}")
    if len(failures) == before:
        print(f"ok: dashboard: {len(boxes)} panels inside {GRID_COLUMNS} columns, no two overlapping")

    # The expressions.
    before = len(failures)
    exprs = []  # (where, expression as written)
    for p in panels:
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            fail(f"panel {p.get('id')} ({p.get('title')!r}) has no targets")
        for t in targets:
            if not (t.get("expr") or "").strip():
                fail(f"panel {p.get('id')} ({p.get('title')!r}) target {t.get('refId')} has no expr")
            else:
                exprs.append((f"panel {p.get('id')} ({p.get('title')}) target {t.get('refId')}", t["expr"]))
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = LABEL_VALUES.match(q)
        if not m:
            fail(f"variable {v.get('name')}: not a label_values(selector, label) query: {q!r}")
        else:
            exprs.append((f"variable {v.get('name')}", m.group(1)))
    rules = {"groups": [{"name": "dashboard-expressions", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-rules.json.yaml")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rules, f, indent=1)  # JSON is YAML
        run = subprocess.run([args.promtool, "check", "rules", path], capture_output=True, text=True)
    if run.returncode != 0:
        out = run.stdout + run.stderr
        fail(f"promtool check rules refused the dashboard's expressions:\n{out}")
        for n in sorted({int(n) for n in re.findall(r"dashboard:expr_(\d+)", out)}):
            print(f"  expr_{n} = {exprs[n][0]}: {exprs[n][1]}")
    if len(failures) == before:
        print(f"ok: dashboard: all {len(exprs)} PromQL expressions parse (promtool check rules: "
              f"{run.stdout.strip().splitlines()[-1].strip() if run.stdout.strip() else 'no output'})")

    # The metric names.
    if args.metrics:
        before = len(failures)
        used = {}  # name -> where
        for where, e in exprs:
            for name in METRIC.findall(e):
                used.setdefault(name, where)
        for r in args.rules:
            for e in rules_exprs(r):
                for name in METRIC.findall(e):
                    used.setdefault(name, r)
        names, typed = scrape_names(args.metrics)
        skip = [s for s in args.skip.split(",") if s]
        missing, skipped = [], []
        for name, where in sorted(used.items()):
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
            if name in names or (base and typed.get(base) in ("histogram", "summary")):
                continue
            if any(name.startswith(s) for s in skip):
                skipped.append(name)
                continue
            missing.append(f"{name} (in {where})")
        for m in missing:
            fail(f"metric not in the scrape: {m}")
        if len(failures) == before:
            note = f"; left out by --skip {','.join(skip)}: {', '.join(skipped)}" if skipped else ""
            print(f"ok: every cra_* metric name of the dashboard{' and ' + ', '.join(os.path.basename(r) for r in args.rules) if args.rules else ''} "
                  f"({len(used) - len(skipped)} names) is in the scrape{note}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
