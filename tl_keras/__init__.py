"""tl_keras: source-to-target transfer learning with TensorFlow and tf_keras."""

__version__ = "0.1.0"
