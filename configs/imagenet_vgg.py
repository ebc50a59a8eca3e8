"""RAN with VGG-16 on ImageNet (ILSVRC2012) at 224x224: the paper's T3.

Alias of the packaged `ran_jax/configs/imagenet_vgg.py` (its docstring has the launch command
and what it reaches); `--config=imagenet_vgg` names it from any directory.
"""

from ran_jax.configs.imagenet_vgg import get_config  # noqa: F401
