"""env.peak_rss_mb: the peak memory of this process, not of the process that started it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rtdeploy.env import peak_rss_mb

# A parent that touches 600 MB, then starts a child that reports both measures. On Linux the
# child's ru_maxrss inherits the parent's peak at exec; this is what made a refused memory bomb
# look like 1.9 GB on CI (the pytest worker had held that much earlier).
_PARENT = r'''
import resource, subprocess, sys
held = bytearray(600 * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
child = ("import resource; from rtdeploy.env import peak_rss_mb; "
         "print(round(peak_rss_mb()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout)
'''


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_a_child_of_a_big_process_reports_its_own_peak():
    out = subprocess.run([sys.executable, "-c", _PARENT], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    own, rusage = map(int, out.split())
    assert rusage >= 600  # the trap is really there: ru_maxrss carries the parent's 600 MB
    assert 0 < own < 200  # a bare interpreter plus rtdeploy.env


def test_this_process_peak_is_at_least_what_it_holds_now():
    held = bytearray(64 * 2**20)
    for i in range(0, len(held), 4096):
        held[i] = 1
    assert peak_rss_mb() >= 64
