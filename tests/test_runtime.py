"""Process-level settings."""

from __future__ import annotations

import subprocess
import sys


def test_limit_heap_fragmentation_applies_on_linux_glibc():
    code = "from delfi.runtime import limit_heap_fragmentation as f; print(f())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert out == expected
