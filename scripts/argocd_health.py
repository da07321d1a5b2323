#!/usr/bin/env python3
"""Runs an Argo CD health.lua on the fixtures its health_test.yaml names,
with a real Lua interpreter, and compares status and message."""
import json
import subprocess
import sys
from pathlib import Path

import yaml


def lua(v):
    if isinstance(v, dict):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "{" + ", ".join(lua(x) for x in v) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "nil"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid Lua string literal for these texts


def main(folder, interpreter):
    folder = Path(folder)
    script = (folder / "health.lua").read_text()
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    failed = 0
    for t in tests:
        obj = yaml.safe_load((folder / t["inputPath"]).read_text())
        program = f"obj = {lua(obj)}\nlocal function check()\n{script}\nend\nlocal hs = check()\n" \
                  "io.write(hs.status, '\\n', hs.message or '', '\\n')\n"
        out = subprocess.run([interpreter, "-"], input=program, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL {t['inputPath']}: lua: {out.stderr.strip()}")
            failed += 1
            continue
        status, message = out.stdout.split("\n")[:2]
        want = t["healthStatus"]
        if (status, message) != (want["status"], want.get("message", "")):
            print(f"FAIL {t['inputPath']}: got {status} {message!r}, want {want['status']} {want.get('message')!r}")
            failed += 1
        else:
            print(f"ok   {t['inputPath']}: {status}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "lua5.4")
