"""The one function that maps any image batch to a model's input.

Training, prediction and the exported serving signature all go through `preprocess_images`.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tl_keras.errors import UserError


def preprocess_images(images, input_shape: Sequence[int], fit: str = "resize") -> tf.Tensor:
  """Maps an image batch to float32 [N, *input_shape] in [0, 1].

  Accepts uint8 (0-255) or float (0-1) pixels, shaped [N,H,W] or [N,H,W,C] with C of 1 or 3:
  integer pixels are scaled by 1/255, channels converted (RGB<->grey) and the images brought
  to the model's height and width: stretched (`fit='resize'`) or scaled to fit inside keeping
  their aspect ratio, centred and padded with black (`fit='pad'`). Works on NumPy arrays and
  inside tf.function graphs.
  """
  images = tf.convert_to_tensor(images)
  if images.dtype.is_integer:
    images = tf.cast(images, tf.float32) / 255.0
  else:
    images = tf.cast(images, tf.float32)
  if images.shape.rank == 3:
    images = images[..., tf.newaxis]
  height, width, channels = input_shape
  have_channels = images.shape[-1]
  if have_channels != channels:
    if have_channels == 3 and channels == 1:
      images = tf.image.rgb_to_grayscale(images)
    elif have_channels == 1 and channels == 3:
      images = tf.image.grayscale_to_rgb(images)
    else:
      raise UserError(
        f"cannot map {have_channels}-channel images to a model input of {channels} channels"
      )
  if tuple(images.shape[1:3]) != (height, width):
    if fit == "pad":
      images = tf.image.resize_with_pad(images, height, width, antialias=True)
    else:
      images = tf.image.resize(images, (height, width), antialias=True)
  return images


def fit_images(
  images: np.ndarray, input_shape: Sequence[int], fit: str = "resize", batch_size: int = 1024
) -> np.ndarray:
  """`images` fitted to `input_shape` by `preprocess_images` (float32), or as they are if they
  already have that shape."""
  shape = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
  if shape == tuple(input_shape):
    return images
  try:
    return np.concatenate(
      [
        preprocess_images(images[start : start + batch_size], input_shape, fit).numpy()
        for start in range(0, len(images), batch_size)
      ]
    )
  except tf.errors.InvalidArgumentError as e:  # an image so thin that padding empties it
    raise UserError(
      f"images of {shape[0]}x{shape[1]} pixels become empty when fitted to "
      f"{input_shape[0]}x{input_shape[1]} with --target_fit={fit}; use "
      "--target_fit=resize"
    ) from e


def decode_and_fit(contents, input_shape: Sequence[int], fit: str = "resize") -> tf.Tensor:
  """One image file's bytes (PNG, JPEG, BMP or GIF: first frame) as float32 `input_shape` in
  [0, 1], by `preprocess_images` (resizing to the size an image already has changes nothing).

  Works eagerly and inside tf.data graphs; raises tf.errors.InvalidArgumentError for bytes
  that do not decode, an empty image, or one that `fit='pad'` scales to nothing.
  """
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  tf.debugging.assert_positive(tf.size(image), message="empty image")
  return preprocess_images(image[tf.newaxis], input_shape, fit)[0]
