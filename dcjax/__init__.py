"""dcjax: dataset condensation and membership inference in JAX/Flax."""

__version__ = "0.1.0"
