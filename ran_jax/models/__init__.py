"""RAN models: encoder specs, the Flax modules and a builder from config."""

from ran_jax.models.encoders import ENCODERS, build_encoder_spec
from ran_jax.models.modules import (ATTRIBUTE_HEADS, BOTTLENECK_KINDS, EXTRA_DECODERS,
                                    REMAT_POLICIES,
                                    Classifier, Decoder, Encoder, MLPDecoder, RANModels)
from ran_jax.models.spec import ConvSpec, PoolSpec, ShapeError, feature_shape, layer_shapes

__all__ = [
    "ENCODERS", "build_encoder_spec", "Classifier", "Decoder", "Encoder", "RANModels",
    "MLPDecoder", "REMAT_POLICIES", "ATTRIBUTE_HEADS", "BOTTLENECK_KINDS", "EXTRA_DECODERS",
    "ConvSpec", "PoolSpec", "ShapeError", "feature_shape", "layer_shapes", "build_models",
    "compute_dtype", "COMPUTE_DTYPES",
]


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(model_config):
  """The dtype activations are computed in (`model.dtype`); parameters stay float32."""
  import jax.numpy as jnp

  return jnp.bfloat16 if model_config.get("dtype", "float32") == "bfloat16" else jnp.float32


def build_models(model_config, input_shape, num_classes, value_range, ran_config=None,
                 num_attributes: int = 0):
  """Builds RANModels from the `config.model` section, in its compute dtype.

  `ran_config` (config.ran) adds the extra decoder families trained beside D and, when
  `ran.attribute_weight` > 0, the attribute heads over `num_attributes` values.
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
                   release_step=model_config.get("release_step", 0.0),
                   extra_decoders=tuple(ran.get("extra_decoders", ())),
                   mlp_decoder_hidden=tuple(ran.get("mlp_decoder_hidden", (1024,))),
                   wide_decoder_mult=ran.get("wide_decoder_mult", 2),
                   bn_group_size=int(model_config.get("bn_group_size", 0) or 0),
                   remat=str(model_config.get("remat", "none")),
                   **attribute_game(ran, num_attributes))


def attribute_game(ran_config, num_attributes: int) -> dict:
  """RANModels' attribute-adversary arguments: none unless `ran.attribute_weight` > 0."""
  if not float(ran_config.get("attribute_weight", 0.0) or 0.0):
    return {}
  return dict(num_attributes=int(num_attributes),
              attribute_heads=tuple(ran_config.get("attribute_heads", ("linear", "mlp"))),
              attribute_hidden=tuple(ran_config.get("attribute_hidden", (256,))))
