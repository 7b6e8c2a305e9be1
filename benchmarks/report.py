"""Printing benchmark rows: each figure beside its reference and the ratio."""

from __future__ import annotations


def print_table(rows: list[dict]) -> None:
    """One line per row; a row with ``skipped`` (the reason) has no figures."""
    width = max([34, *(len(row["stage"]) for row in rows)])
    print(f"{'stage':<{width}} {'figure':>14} {'reference':>14} {'ratio':>9}  reference is")
    for row in rows:
        if "skipped" in row:
            print(f"{row['stage']:<{width}} skipped: {row['skipped']}")
            continue
        print(f"{row['stage']:<{width}} {row['figure']:>9.0f} {row['unit']:<4}{row['reference']:>10.0f} "
              f"{row['unit']:<4}{row['ratio']:>9.2f}  {row['reference_name']}"
              + (f" (limit {row['limit']})" if "limit" in row else ""))
