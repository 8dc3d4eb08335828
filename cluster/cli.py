"""The `kairos` command line.

    kairos demo                      replay a cross-channel journey on the default catalog
    kairos catalog validate FILE...  check catalogs; errors name file, line:column and path
"""
from __future__ import annotations

import argparse
import sys

from kairos.core.catalog import load_catalog_file
from kairos.core.compiler import compile_catalog
from kairos.core.errors import CatalogError

from . import demo


def validate(paths: list[str]) -> int:
    failed = 0
    for path in paths:
        try:
            compiled = compile_catalog(load_catalog_file(path))
        except CatalogError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except OSError as exc:
            print(f"error: {path}: {exc.strerror}", file=sys.stderr)
            failed += 1
            continue
        cat = compiled.catalog
        print(f"{path}: ok — catalog '{cat.name}' version {cat.version}: "
              f"{len(cat.actions)} actions in {len(compiled.group_names)} groups, "
              f"{len(cat.channels)} channels, {len(cat.events)} event types, "
              f"{len(cat.features)} features, {compiled.layout.size} profile slots")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kairos", description="Kairos next-best-action engine")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="replay a cross-channel journey on the default catalog")
    catalog = commands.add_parser("catalog", help="work with catalogs")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    check = catalog_commands.add_parser("validate", help="validate and compile catalogs")
    check.add_argument("paths", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run()
    return validate(args.paths)


if __name__ == "__main__":
    sys.exit(main())
