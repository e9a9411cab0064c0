"""Receptive-field geometry of torchvision CNNs (pure geometry, no I/O).

For every named layer, :func:`receptive_fields` returns the receptive-field
**size**, **jump** (stride between adjacent units, in input pixels) and
**start** (centre of unit (0, 0)) per axis, following Araujo et al., "Computing
Receptive Fields of Convolutional Neural Networks" (Distill, 2019)::

    k_eff     = d * (k - 1) + 1                 (dilation d)
    r_out     = r_in + (k_eff - 1) * j_in
    j_out     = j_in * s
    start_out = start_in + ((k_eff - 1) / 2 - p) * j_in

Pooling counts like convolution. The model is traced with :mod:`torch.fx`, so any
graph works, sequential or multi-path (VGG, ResNet, DenseNet, MobileNet,
EfficientNet, RegNet, ConvNeXt, ...).

Conventions
-----------
* **Axes**: every pair is ``(y, x)``; a unit ``(u, v)`` is row ``u``, column ``v``
  of the feature map.
* **Pixel coordinates**: integer coordinate ``i`` is the *centre* of input pixel
  ``i`` (pixel-index convention; the input pixel (0, 0) has centre (0.0, 0.0)).
  ``start`` and :meth:`ReceptiveField.center` use these coordinates, so a
  half-integer means "between two pixels" (e.g. after a 2x2 pooling).
* **Boxes**: :meth:`ReceptiveField.box` returns the half-open integer box
  ``(y0, x0, y1, x1)``: the field covers pixel rows ``y0 .. y1-1`` and columns
  ``x0 .. x1-1``, i.e. ``image[y0:y1, x0:x1]`` when it lies inside the image.
  ``y1 - y0 == size[0]``. The box may extend outside the image (negative or
  ``>= H``); pass ``clip=(H, W)`` to intersect it with the image.
* **Merges** (``add``, ``mul``, ``cat`` of several paths, e.g. residual and dense
  connections): the field is the **union** of the paths' fields, i.e. the
  smallest box containing all of them (computed from the unit-0 box edges, which
  are integers); ``size`` and ``start`` are that box's size and centre. When the
  paths are concentric, as in every torchvision CNN, this is simply the largest
  field and its start. The jumps of merged paths must agree, else an error is
  raised.
* **Global context**: an operand that was pooled to 1x1 (squeeze-and-excitation
  in MobileNetV3/EfficientNet/RegNetY) or normalised over space (GroupNorm,
  LayerNorm over spatial dims) and then broadcast back makes every unit depend on
  the whole image. The *local* geometry is still reported, with
  ``global_context=True``; the empirical gradient support of such a unit is the
  whole image.
* **Eval mode**: geometry of the model in eval mode (BatchNorm uses running
  statistics, dropout/stochastic depth are identities). The model's train/eval
  flags are restored afterwards.
* **Modules called several times**: a layer is a module name from
  ``model.named_modules()`` and means that module's output on its **last** call
  in one forward pass. ResNet blocks call their single ``relu`` module several
  times; the last call is the block output, so ``layer1.0.relu`` has the same
  field as ``layer1.0``, and ``layer1`` that of its last block.

Adaptive pooling is exact when the input size is a multiple of the output size
(kernel = stride = ratio; identity when equal); otherwise, and after
flatten/linear/global reductions, the tensor has no spatial geometry and asking
for such a layer raises :class:`ReceptiveFieldError` (a ``ValueError``). Any op
the propagation does not know makes the tensors downstream of it unknown, and
asking for a layer there raises too: values are never guessed.

Modules: :mod:`.field` (the result type and map <-> image coordinates), :mod:`.tracing` (the
entry point: tracing, feature-map sizes, the graph walk), :mod:`.rules` (which geometry each op
has) and :mod:`.geometry` (the geometry states and the receptive-field arithmetic).
"""

from .field import (
    ReceptiveField,
    ReceptiveFieldError,
    image_to_map,
    map_to_image,
    upsample_to_image,
)
from .tracing import receptive_fields

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "receptive_fields",
    "map_to_image",
    "image_to_map",
    "upsample_to_image",
]
