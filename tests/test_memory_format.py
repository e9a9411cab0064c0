"""The CPU memory format per architecture, and that it changes no result."""

import torch
import torchvision

from ftdyn.devices import fastest_memory_format


def test_depthwise_networks_use_channels_last_on_cpu_only():
    mobilenet = torchvision.models.mobilenet_v2(num_classes=3)
    assert fastest_memory_format(mobilenet, "cpu") == torch.channels_last
    assert fastest_memory_format(mobilenet, torch.device("cuda")) == torch.contiguous_format
    for arch in ("resnet18", "vgg11", "densenet121"):
        # only the module structure matters; skip initializing the weights
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, num_classes=3)
        assert fastest_memory_format(model, "cpu") == torch.contiguous_format, arch


def test_channels_last_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    reference.sum().backward()
    grad = model.features[0][0].weight.grad.clone()
    model.zero_grad()
    model.to(memory_format=fastest_memory_format(model, "cpu"))
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.features[0][0].weight.grad, grad, rtol=1e-3, atol=1e-5)
    assert model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
