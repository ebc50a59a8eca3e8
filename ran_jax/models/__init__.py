"""RAN models: encoder specs, the Flax modules and a builder from config."""

from ran_jax.models.encoders import ENCODERS, build_encoder_spec
from ran_jax.models.modules import Classifier, Decoder, Encoder, RANModels
from ran_jax.models.spec import ConvSpec, PoolSpec, ShapeError, feature_shape, layer_shapes

__all__ = [
    "ENCODERS", "build_encoder_spec", "Classifier", "Decoder", "Encoder", "RANModels",
    "ConvSpec", "PoolSpec", "ShapeError", "feature_shape", "layer_shapes", "build_models",
]


def build_models(model_config, input_shape, num_classes, value_range, dtype=None):
  """Builds RANModels from the `config.model` section."""
  import jax.numpy as jnp

  widths = model_config.get("widths", None)
  spec = build_encoder_spec(model_config.encoder, input_shape, tuple(widths) if widths else None)
  return RANModels(spec, input_shape, num_classes, tuple(model_config.classifier_hidden),
                   value_range=value_range, dropout=model_config.get("dropout", 0.0),
                   dtype=dtype or jnp.float32,
                   conv_impl=model_config.get("conv_impl", "auto"))
