"""Printing benchmark rows: each figure beside its reference and the ratio."""

from __future__ import annotations


def print_table(rows: list[dict]) -> None:
    print(f"{'stage':<34} {'figure':>12} {'reference':>12} {'ratio':>7}  reference is")
    for row in rows:
        print(f"{row['stage']:<34} {row['figure']:>9.0f} {row['unit']:<3}{row['reference']:>9.0f} "
              f"{row['unit']:<3}{row['ratio']:>6.2f}  {row['reference_name']}"
              + (f" (limit {row['limit']})" if "limit" in row else ""))
