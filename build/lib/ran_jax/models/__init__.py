"""RAN models: encoder specs, the Flax modules and a builder from config."""

from ran_jax.models.encoders import ENCODERS, build_encoder_spec
from ran_jax.models.modules import (BOTTLENECK_KINDS, EXTRA_DECODERS, Classifier, Decoder,
                                    Encoder, MLPDecoder, RANModels)
from ran_jax.models.spec import ConvSpec, PoolSpec, ShapeError, feature_shape, layer_shapes

__all__ = [
    "ENCODERS", "build_encoder_spec", "Classifier", "Decoder", "Encoder", "RANModels",
    "MLPDecoder", "BOTTLENECK_KINDS", "EXTRA_DECODERS",
    "ConvSpec", "PoolSpec", "ShapeError", "feature_shape", "layer_shapes", "build_models",
    "compute_dtype", "COMPUTE_DTYPES",
]


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(model_config):
  """The dtype activations are computed in (`model.dtype`); parameters stay float32."""
  import jax.numpy as jnp

  return jnp.bfloat16 if model_config.get("dtype", "float32") == "bfloat16" else jnp.float32


def build_models(model_config, input_shape, num_classes, value_range, ran_config=None):
  """Builds RANModels from the `config.model` section, in its compute dtype.

  `ran_config` (config.ran) adds the extra decoder families trained beside D.
  """
  ran = ran_config if ran_config is not None else {}
  widths = model_config.get("widths", None)
  spec = build_encoder_spec(model_config.encoder, input_shape, tuple(widths) if widths else None)
  return RANModels(spec, input_shape, num_classes, tuple(model_config.classifier_hidden),
                   value_range=value_range, dropout=model_config.get("dropout", 0.0),
                   dtype=compute_dtype(model_config),
                   conv_impl=model_config.get("conv_impl", "auto"),
                   bottleneck_dim=model_config.get("bottleneck_dim", 0),
                   bottleneck_kind=model_config.get("bottleneck_kind", "dense"),
                   feature_noise=model_config.get("feature_noise", 0.0),
                   extra_decoders=tuple(ran.get("extra_decoders", ())),
                   mlp_decoder_hidden=tuple(ran.get("mlp_decoder_hidden", (1024,))),
                   wide_decoder_mult=ran.get("wide_decoder_mult", 2))
