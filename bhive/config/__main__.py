"""``python -m bhive.config --schema > configs/schema.json``: print the JSON schema of a config."""

import sys

from bhive.config import SCHEMA_COMMAND, schema_json

if sys.argv[1:] != ["--schema"]:
    sys.exit(f"usage: {SCHEMA_COMMAND}")
sys.stdout.write(schema_json())
