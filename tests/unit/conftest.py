"""Make tests/archive_factory.py importable as `archive_factory`.

pytest's default ("prepend") import mode puts the directory of each rootless test module or
conftest on sys.path: tests/unit here, not tests/. Inserting tests/ explicitly keeps these
unit tests runnable on their own, whatever tests/conftest.py does.
"""

import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parents[1])
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
