"""Whole-network training on the cuda backend (Numba's CUDA simulator): a tiny VGG-small and a tiny
ResNet-20 against cpu (issue 16). In a file of their own so that the test suite's workers can run them
beside tests/test_cuda_conv.py (each takes up to a minute on the simulator)."""

from __future__ import annotations

import numpy as np
import pytest
from test_cuda_conv import _train_lenet, cu  # noqa: F401  (cu: the module-scoped cuda backend fixture)


#: VGG-small and ResNet-20 cut to fit the simulator: two channels, one conv per block / one block per stage.
TINY_CNNS = {
    "vgg-small": {"widths": (2, 2), "convs_per_block": 1},
    "resnet20": {"widths": (2, 2, 2), "blocks": 1},
}


@pytest.mark.parametrize("model_name,fmt,method", [("vgg-small", "condensed", "srigl"), ("resnet20", "csr", "set")])
def test_tiny_vgg_and_resnet_train_on_cuda_like_cpu(cu, model_name, fmt, method):
    """Whole-network training on cuda: a tiny VGG-small (batch norm, pooling, global average pooling)
    with an SRigL update on condensed filters and a tiny ResNet-20 (residual blocks, strided stages with
    their projection shortcuts) with a SET update on CSR filters (the simulator runs a ResNet step in
    about a minute, so one step and the update after it): the same topologies as cpu and the same
    parameters, batch-norm buffers included. (RigL's growth over a convolution's patches on cuda:
    the LeNet-5 test above.)"""
    cpu_model, cpu_topo = _train_lenet("cpu", 1, 1, model_name, TINY_CNNS[model_name], fmt, method)
    gpu_model, gpu_topo = _train_lenet(cu, 1, 1, model_name, TINY_CNNS[model_name], fmt, method)
    assert any(type(layer).__name__ == "SparseConv2d" for layer in gpu_model.weight_layers)
    for step, (a, b) in enumerate(zip(cpu_topo, gpu_topo)):
        for layer, (pa, pb) in enumerate(zip(a, b)):
            assert np.array_equal(pa, pb), f"layer {layer} differs after step {step} (0: before training)"
    assert any(not np.array_equal(x, y) for x, y in zip(cpu_topo[0], cpu_topo[-1]))  # the update moved filters
    for pa, pb in zip(cpu_model.parameters(), gpu_model.parameters()):
        np.testing.assert_allclose(pb.host, pa.host, rtol=1e-4, atol=1e-5, err_msg=pa.name)
    cpu_buffers, gpu_buffers = cpu_model.buffers(), gpu_model.buffers()
    assert cpu_buffers.keys() == gpu_buffers.keys() and cpu_buffers  # the running statistics
    for name in cpu_buffers:
        np.testing.assert_allclose(gpu_buffers[name], cpu_buffers[name], rtol=1e-4, atol=1e-5, err_msg=name)
