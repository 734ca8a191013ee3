#!/usr/bin/env python3
"""Validate HL7 v2.5.1 files with hl7apy in STRICT mode. Usage: validate_hl7.py FILE...
Prints one line per file; exits 1 if any fails."""
import sys

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

failed = 0
for path in sys.argv[1:]:
    text = open(path, encoding="utf-8").read().replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()
        print(f"ok {path} {msg.msh.msh_9.to_er7()}")
    except Exception as e:  # hl7apy raises several exception types
        failed += 1
        print(f"FAIL {path}: {type(e).__name__}: {e}")
sys.exit(1 if failed else 0)
