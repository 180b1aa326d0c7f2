"""backend="process" from a script without a ``__main__`` guard fails fast with a message that says the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
def test_unguarded_script_fails_fast_with_the_fix(tmp_path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        from gpufleet import Pool
        from tests.engine.process_models import Doubler
        with Pool(Doubler, backend="process", cpu_devices=1, max_batch_size=4) as pool:
            print(pool.submit(2).result())
    """))
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=root, env=env)
    assert r.returncode != 0
    assert 'if __name__ == "__main__":' in r.stderr
    # the parent's own error gives the hint for this exit (status 1 before the child's code ran), not for kills
    assert 'exited with code 1 during setup; its stderr says why (a script that creates the Pool must do so ' \
           'under `if __name__ == "__main__":`)' in r.stderr
