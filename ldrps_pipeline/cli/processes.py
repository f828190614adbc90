"""Spreading a run over processes with accelerate: one device per process, the pending images split between the
processes (``PartialState.split_between_processes``), one run id for all, and ``--num-processes N`` as a
shorthand for ``accelerate launch``.

Every process plans the same jobs from the same inputs and finds the same outputs missing: no process writes an
output before all have planned (a barrier), so the pending list, and with it the split, is the same in every
process; each image is restored by exactly one process.
"""

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Sequence

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

RUN_ID_VARIABLE = "LDRPS_RESTORE_RUN_ID"
"""The environment variable through which ``--num-processes`` gives the processes it launches their run id."""


def launched_processes() -> int:
    """How many processes a launcher (``accelerate launch``, ``torchrun``) started this one among; 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_by_num_processes() -> bool:
    """Whether ``--num-processes`` launched this process (it then gives the run its exit status from the manifest),
    rather than a launcher run by hand (``accelerate launch``, ``torchrun``)."""
    return RUN_ID_VARIABLE in os.environ


def process_state(device: str | None) -> PartialState:
    """This process's accelerate state; on the CPU (``--device cpu``, or a machine without CUDA) its processes
    talk through gloo."""
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def run_id(state: PartialState) -> str:
    """One id for the whole run, the same in every process: the launcher's, else a new one from the main process."""
    chosen = [os.environ.get(RUN_ID_VARIABLE) or new_run_id()]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return chosen[0]


def new_run_id() -> str:
    """A new run id, for the manifest's records."""
    return uuid.uuid4().hex[:12]


def launch_command(argv: Sequence[str], num_processes: int) -> list[str]:
    """The ``accelerate launch`` command that runs ``ldrps-restore argv`` in ``num_processes`` processes on this
    machine, one device each (on a machine without CUDA, or with ``--device cpu``, CPU processes that talk through
    gloo). ``--multi_gpu`` is accelerate's multi-process launcher (torch elastic) for CPU processes too: with
    ``--cpu`` instead, accelerate starts one process whatever ``--num_processes`` says."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        f"--num_processes={num_processes}",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={free_port()}",
        "-m",
        "ldrps_pipeline.cli.restore",
        *argv,
    ]


def launch(argv: Sequence[str], num_processes: int, run: str) -> int:
    """Run ``ldrps-restore argv`` in ``num_processes`` processes (see :func:`launch_command`); the launcher's exit
    status. SIGINT reaches the processes from the terminal; this one only waits for them."""
    env = {**os.environ, RUN_ID_VARIABLE: run}
    with subprocess.Popen(launch_command(argv, num_processes), env=env) as launcher:
        while True:
            try:
                return launcher.wait()
            except KeyboardInterrupt:  # Ctrl-C went to the whole process group: the processes stop by themselves
                continue


def free_port() -> int:
    """A TCP port free on this machine now, for the processes' rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
