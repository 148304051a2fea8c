"""The command prefix that starts N CPU processes (gloo) with accelerate, as a user's `accelerate launch` would."""

import sys


def accelerate_launch(processes: int = 2) -> list[str]:
    """`python -m accelerate.commands.launch ...` for `processes` local CPU processes; append a script or `-m mod`."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
