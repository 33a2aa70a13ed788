"""``purerigl bench``: timings of the kernels, of a training step and of a topology update (issue 6).

Four subcommands, one set of rules (DESIGN.md section 7, the same as ``benchmarks/bench_matmul.py``):
every comparison is a ratio measured in this process on the same inputs; warm-up (Numba compilation)
is excluded; the median of many runs (``--budget`` seconds per product, at least 5 runs) is
reported with :func:`purerigl.cli._timing.time_call`; every product is checked against SciPy before
it is timed. Above each table: the machine (CPUs, Numba threads and layer, BLAS, versions, load
average) and the exact command, every option spelled out.

- ``bench kernels``: matmul, matmul_t, sddmm per format against NumPy dense (BLAS) and SciPy CSR.
- ``bench train``: one training step (forward, loss, backward, optimizer) and one topology update
  of an MLP per method and format, against the dense network trained by the same code; with
  ``--model lenet5|vgg-small|resnet20`` the CNN's step, conv forward and patch-extraction share
  (``_train_cnn.py``), with ``--model vit-tiny`` the ViT's step, the attention's share and every block
  projection against its dense product (``_train_vit.py``, ``_vit_probes.py``); shared timing in
  ``_train_common.py``.
- ``bench growth``: one topology update per method on a square layer as it widens, beside one dense
  ``dY^T X`` product.
- ``bench gpu``: the cuda backend on a GPU: ``matmul`` per format against the GPU's dense GEMM and
  CSR SpMM (PyTorch and/or CuPy) timed with CUDA events, and a training step and topology update per
  method on cuda against cpu; one prepared command for a short GPU session (see ``gpu.py``).

The batched rows of ``kernels``, ``train`` and ``growth`` carry a "limit" column (issue 19): the
time of the sparse work's ``nnz * batch`` multiply-adds at the rate of the dense BLAS product measured
in the same run (:func:`._shared.product_limit_s`), and the measured time as a fraction of it.
``--busy N`` runs them beside N CPU-bound processes started and stopped by the bench (``_busy.py``).

A call that takes longer than ``--max-call`` seconds is not repeated: its time is that of one call
(``runs`` = 1 in the JSON), so that the full grid finishes on a 2-core machine. ``--quick`` shrinks
every grid to a tiny configuration (for tests; the numbers mean nothing).
"""

from __future__ import annotations

import click

# ----------------------------------------------------------------------------------------------- group


@click.group()
def bench() -> None:
    """Time kernels, training steps and topology updates against NumPy dense and SciPy CSR."""


from . import gpu, growth, kernels, train  # noqa: E402,F401 (registers the subcommands on the group)
