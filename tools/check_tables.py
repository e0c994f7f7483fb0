#!/usr/bin/env python3
"""Opens every Parquet table of a local store with pandas (pyarrow), polars and DuckDB.

Usage: check_tables.py STORE_OR_TABLE... [--expect NAME ...]

Every `*.parquet` inside a complete artifact of a store (a folder `<kind>/<key>/` holding
`_manifest.json`), and every `.parquet` file named directly, is read whole by each of the three clients; the row counts and column names must agree, and the
Arrow schema the file embeds must hold no `*_view` type (what `artifacts::portable` refuses to
write). `--expect NAME` (repeatable) fails unless at least one table of that file name was found,
so a store missing a kind of table cannot pass by having nothing to check.

Exit status 0 when every table reads everywhere; 1 with one line per failure, naming the table,
the client and the column (the first column that fails on its own), on stderr.
The tests run it (tests/learning.rs) with the versions scripts/setup.sh pins.
"""

import argparse
import json
import os
import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def tables(store):
    """Store-relative paths of the Parquet files of complete artifacts, sorted."""
    found = []
    for kind in sorted(os.listdir(store)):
        kdir = os.path.join(store, kind)
        if kind.startswith("_") or not os.path.isdir(kdir):
            continue
        for key in sorted(os.listdir(kdir)):
            adir = os.path.join(kdir, key)
            manifest = os.path.join(adir, "_manifest.json")
            if not os.path.isfile(manifest):
                continue
            with open(manifest) as f:
                files = [e["path"] for e in json.load(f)["files"]]
            found += [os.path.join(kind, key, p) for p in sorted(files) if p.endswith(".parquet")]
    return found


def view_types(t, name):
    """The nested fields of Arrow type `t` that are view types, as dotted names."""
    out = []
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        out.append(f"{name}: {t}")
    elif pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        out.append(f"{name}: {t}")
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        out += view_types(t.value_type, f"{name}[]")
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            out += view_types(t.field(i).type, f"{name}.{t.field(i).name}")
    return out


def failing_column(read_one, columns):
    """The first column that fails on its own, with its error, or (None, None)."""
    for c in columns:
        try:
            read_one(c)
        except Exception as e:  # noqa: BLE001: any failure of a client is what we report
            return c, e
    return None, None


def check(path):
    """Failures of one table, as lines; and its row count."""
    failures = []
    schema = pq.read_schema(path)
    columns = list(schema.names)
    for f in schema:
        for v in view_types(f.type, f.name):
            failures.append(f"column `{f.name}`: Arrow view type ({v}); write Utf8/LargeUtf8 and List/LargeList")
    counts = {}

    def attempt(client, read_all, read_one):
        try:
            names, rows = read_all()
            counts[client] = rows
            if list(names) != columns:
                failures.append(f"{client}: columns {list(names)} differ from the file's {columns}")
        except Exception as e:  # noqa: BLE001
            col, err = failing_column(read_one, columns)
            where = f"column `{col}`" if col else "whole table"
            failures.append(f"{client}: {where}: {type(e).__name__}: {err if col else e}")

    def pandas_all():
        df = pd.read_parquet(path, engine="pyarrow")
        return df.columns, len(df)

    def polars_all():
        df = pl.read_parquet(path)
        return df.columns, df.height

    con = duckdb.connect()

    def duckdb_all():
        rel = con.execute("SELECT * FROM read_parquet(?)", [path])
        names = [d[0] for d in rel.description]
        return names, len(rel.fetchall())

    def duckdb_one(c):
        q = 'SELECT "' + c.replace('"', '""') + '" FROM read_parquet(?)'
        con.execute(q, [path]).fetchall()

    attempt("pandas", pandas_all, lambda c: pd.read_parquet(path, engine="pyarrow", columns=[c]))
    attempt("polars", polars_all, lambda c: pl.read_parquet(path, columns=[c]))
    attempt("duckdb", duckdb_all, duckdb_one)
    if len(set(counts.values())) > 1:
        failures.append(f"row counts differ: {counts}")
    return failures, next(iter(counts.values()), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", metavar="STORE_OR_TABLE")
    ap.add_argument("--expect", action="append", default=[], metavar="NAME")
    args = ap.parse_args()
    paths = []
    for p in args.paths:
        if os.path.isfile(p):
            paths.append(("", p))
        elif os.path.isdir(p):
            paths += [(p, rel) for rel in tables(p)]
        else:
            print(f"check_tables: {p}: no such store or table", file=sys.stderr)
            return 1
    bad = 0
    for root, rel in paths:
        failures, rows = check(os.path.join(root, rel))
        for f in failures:
            print(f"check_tables: {rel}: {f}", file=sys.stderr)
        bad += bool(failures)
        print(f"{'FAIL' if failures else 'ok  '} {rel} ({rows} rows)")
    names = {os.path.basename(rel) for _, rel in paths}
    for e in args.expect:
        if e not in names:
            print(f"check_tables: no table named {e} in {' '.join(args.paths)}", file=sys.stderr)
            bad += 1
    print(
        f"check_tables: {len(paths)} tables, {bad} failing "
        f"(pandas {pd.__version__}, pyarrow {pa.__version__}, polars {pl.__version__}, duckdb {duckdb.__version__})"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
