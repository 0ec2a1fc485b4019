"""The one function that maps any image batch to a model's input.

Training, prediction and the exported serving signature all go through `preprocess_images`.
`frame_images` frames digits as MNIST frames its own (see `preprocess_images`'s `framing`).
"""

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tl_keras.errors import UserError

# frame_images: after contrast stretching, values under this part of the ink's level are noise;
# the bounding box holds the pixels whose 3x3 mean then reaches _INK_LEVEL.
_NOISE_FLOOR = 0.1
_INK_LEVEL = 0.3


def preprocess_images(
  images, input_shape: Sequence[int], fit: str = "resize", framing: Mapping[str, Any] | None = None
) -> tf.Tensor:
  """Maps an image batch to float32 [N, *input_shape] in [0, 1].

  Accepts uint8 (0-255) or float (0-1) pixels, shaped [N,H,W] or [N,H,W,C] with C of 1 or 3:
  integer pixels are scaled by 1/255, channels converted (RGB<->grey) and the images brought
  to the model's height and width: stretched (`fit='resize'`), scaled to fit inside keeping
  their aspect ratio, centred and padded with black (`fit='pad'`), or with `fit='source'`
  framed as `framing` describes the source's training images (see `frame_images`; images of
  the model's size are framed too). Works on NumPy arrays and inside tf.function graphs.
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
  if fit == "source":
    if not framing:
      raise UserError("--target_fit=source needs a model whose metadata records its framing")
    images = frame_images(images, (height, width), int(framing["box"]))
  elif tuple(images.shape[1:3]) != (height, width):
    if fit == "pad":
      images = tf.image.resize_with_pad(images, height, width, antialias=True)
    else:
      images = tf.image.resize(images, (height, width), antialias=True)
  return images


def fit_images(
  images: np.ndarray,
  input_shape: Sequence[int],
  fit: str = "resize",
  batch_size: int = 1024,
  framing: Mapping[str, Any] | None = None,
) -> np.ndarray:
  """`images` fitted to `input_shape` by `preprocess_images` (float32), or as they are if they
  already have that shape (and `fit` is not 'source', which frames them whatever their size)."""
  shape = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
  if shape == tuple(input_shape) and fit != "source":
    return images
  try:
    return np.concatenate(
      [
        preprocess_images(images[start : start + batch_size], input_shape, fit, framing).numpy()
        for start in range(0, len(images), batch_size)
      ]
    )
  except tf.errors.InvalidArgumentError as e:  # an image so thin that padding empties it
    raise UserError(
      f"images of {shape[0]}x{shape[1]} pixels become empty when fitted to "
      f"{input_shape[0]}x{input_shape[1]} with --target_fit={fit}; use "
      "--target_fit=resize"
    ) from e


def decode_and_fit(
  contents,
  input_shape: Sequence[int],
  fit: str = "resize",
  framing: Mapping[str, Any] | None = None,
) -> tf.Tensor:
  """One image file's bytes (PNG, JPEG, BMP or GIF: first frame) as float32 `input_shape` in
  [0, 1], by `preprocess_images` (resizing to the size an image already has changes nothing).

  Works eagerly and inside tf.data graphs; raises tf.errors.InvalidArgumentError for bytes
  that do not decode, an empty image, or one that `fit='pad'` scales to nothing.
  """
  image = tf.io.decode_image(contents, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  tf.debugging.assert_positive(tf.size(image), message="empty image")
  return preprocess_images(image[tf.newaxis], input_shape, fit, framing)[0]


def _ink_span(mask: tf.Tensor, size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """First and last index along axis 1 where `mask` [N, size] holds; 0 and size-1 if nowhere."""
  found = tf.reduce_any(mask, axis=1)
  first = tf.argmax(tf.cast(mask, tf.int32), axis=1, output_type=tf.int32)
  last = size - 1 - tf.argmax(tf.cast(mask[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
  return tf.where(found, first, 0), tf.where(found, last, size - 1)


def frame_images(images: tf.Tensor, canvas: Sequence[int], box: int) -> tf.Tensor:
  """Frames digit images as MNIST frames its own: float [N,H,W,C] in [0, 1] to [N, *canvas, C].

  Per image: dark ink on a light ground is inverted (the background, the median of the border
  pixels, is brighter than the image's mean); the background level is subtracted and the
  contrast stretched to [0, 1], values under a tenth of the ink's level dropped as noise; the
  ink's bounding box, made square around its centre (so the aspect ratio is kept), is scaled
  into a `box` x `box` square (antialiased), which is placed in the canvas and shifted by whole
  pixels so that its centre of mass is the canvas's centre. (LeCun et al.: MNIST's digits were
  size-normalised into 20x20 and centred by mass in 28x28.)
  """
  x = _normalised_ink(tf.convert_to_tensor(images, tf.float32))
  count = tf.shape(x)[0]
  # Sampled at 4x, then downscaled with antialiasing, so large images do not alias.
  crops = tf.image.crop_and_resize(x, _ink_boxes(x), tf.range(count), [4 * box, 4 * box])
  crops = tf.image.resize(crops, [box, box], antialias=True)
  canvas_h, canvas_w = int(canvas[0]), int(canvas[1])
  top_pad, left_pad = (canvas_h - box) // 2, (canvas_w - box) // 2
  framed = tf.pad(
    crops,
    [[0, 0], [top_pad, canvas_h - box - top_pad], [left_pad, canvas_w - box - left_pad], [0, 0]],
  )
  return _centred_by_mass(framed, canvas_h, canvas_w)


def _normalised_ink(x: tf.Tensor) -> tf.Tensor:
  """`x` as light ink on a black ground: dark ink inverted, the background (the median of the
  border pixels) subtracted and the contrast stretched to [0, 1], faint noise dropped."""
  count = tf.shape(x)[0]
  grey = tf.reduce_mean(x, axis=-1, keepdims=True)
  border = tf.concat(
    [
      tf.reshape(grey[:, 0], [count, -1]),
      tf.reshape(grey[:, -1], [count, -1]),
      tf.reshape(grey[:, :, 0], [count, -1]),
      tf.reshape(grey[:, :, -1], [count, -1]),
    ],
    axis=1,
  )
  background = tf.sort(border, axis=1)[:, tf.shape(border)[1] // 2]
  dark_ink = background > tf.reduce_mean(grey, axis=[1, 2, 3])
  x = tf.where(dark_ink[:, None, None, None], 1.0 - x, x)
  background = tf.where(dark_ink, 1.0 - background, background)
  x = tf.nn.relu(x - background[:, None, None, None])
  # The ink's level, from 3x3 means so that single noisy pixels do not set it.
  peak = tf.reduce_max(tf.nn.avg_pool2d(x, 3, 1, "SAME"), axis=[1, 2, 3], keepdims=True)
  return tf.clip_by_value(
    (x / tf.maximum(peak, 1e-3) - _NOISE_FLOOR) / (1 - _NOISE_FLOOR), 0.0, 1.0
  )


def _ink_boxes(x: tf.Tensor) -> tf.Tensor:
  """[N, 4] normalised boxes (y1, x1, y2, x2): each image's ink bounding box, made square
  around its centre."""
  height, width = tf.shape(x)[1], tf.shape(x)[2]
  ink = tf.nn.avg_pool2d(tf.reduce_mean(x, axis=-1, keepdims=True), 3, 1, "SAME")[..., 0]
  ink = ink > _INK_LEVEL
  top, bottom = _ink_span(tf.reduce_any(ink, axis=2), height)
  left, right = _ink_span(tf.reduce_any(ink, axis=1), width)
  centre_y = tf.cast(top + bottom + 1, tf.float32) / 2
  centre_x = tf.cast(left + right + 1, tf.float32) / 2
  half = tf.cast(tf.maximum(bottom - top, right - left) + 1, tf.float32) / 2
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  return tf.stack(
    [(centre_y - half) / h, (centre_x - half) / w, (centre_y + half) / h, (centre_x + half) / w],
    axis=1,
  )


def _centred_by_mass(framed: tf.Tensor, canvas_h: int, canvas_w: int) -> tf.Tensor:
  """`framed` [N, canvas_h, canvas_w, C] shifted by whole pixels so that each image's centre
  of mass is the canvas's centre."""
  mass = tf.reduce_mean(framed, axis=-1)
  total = tf.reduce_sum(mass, axis=[1, 2]) + 1e-6
  rows = tf.range(canvas_h, dtype=tf.float32)[None, :, None]
  cols = tf.range(canvas_w, dtype=tf.float32)[None, None, :]
  shift_y = tf.round(tf.reduce_sum(mass * rows, axis=[1, 2]) / total - (canvas_h - 1) / 2)
  shift_x = tf.round(tf.reduce_sum(mass * cols, axis=[1, 2]) / total - (canvas_w - 1) / 2)
  ones, zeros = tf.ones_like(shift_y), tf.zeros_like(shift_y)
  # Output pixel (y, x) reads input pixel (y + shift_y, x + shift_x).
  transforms = tf.stack([ones, zeros, shift_x, zeros, ones, shift_y, zeros, zeros], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
    images=framed,
    transforms=transforms,
    output_shape=[canvas_h, canvas_w],
    fill_value=0.0,
    interpolation="NEAREST",
    fill_mode="CONSTANT",
  )
