"""The autoregressive transformer: sequence layout, model, token data, trainer, sampler."""
