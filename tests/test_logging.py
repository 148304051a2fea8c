"""Logging in multi-process runs: rank 0 logs, other ranks only warn, and say which rank they are."""

import os
import subprocess
import sys

SCRIPT = (
    "import logging\nfrom osae.cli_common import setup_logging\nsetup_logging('INFO')\n"
    "log = logging.getLogger('osae.test')\nlog.info('progress line')\nlog.warning('something odd')\n"
)


def _stderr(rank, world):
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world)}
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60).stderr


def test_only_the_main_process_logs_info_and_other_ranks_name_themselves():
    main, other, alone = _stderr(0, 2), _stderr(1, 2), _stderr(0, 1)
    assert "INFO [rank 0] progress line" in main and "[rank 0] something odd" in main
    assert "progress line" not in other and "WARNING [rank 1] something odd" in other
    assert "INFO progress line" in alone and "[rank" not in alone
