"""Started with this folder on PYTHONPATH and TOOL_FAULTS=1 (a Celery worker of a fault drill),
a process gets tests/tool_faults.py's wrappers: Whisper and the scorer throw on marked inputs."""

import os
import sys
from pathlib import Path

if os.environ.get("TOOL_FAULTS") == "1":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tool_faults

    tool_faults.install()
