"""Digit domains that no tl_keras setting was tuned on, for the adaptation benchmark.

Built from MNIST's *test* digits (writers the source never trained on) or from scikit-learn's
copy of UCI optdigits, each written as an .npz target with MNIST's keys:

- `usps_like`: 16x16, each digit's bounding box stretched to fill the frame (aspect ratio not
  kept, as USPS digits are), strokes of half the digits thickened by up to a pixel, blurred.
- `scanned`: 40x40 dark ink on light paper with a brightness gradient, the digit at 45-85% of
  the frame at a random place, blurred and noisy.
- `optdigits`: the UCI handwritten digits (another scanner, other writers), 8x8 with 17 grey
  levels; needs scikit-learn (`pip install scikit-learn`).

  python bench/domains.py --data_dir=../shared/datasets --output_dir=/tmp/domains
"""

import argparse
import os

import numpy as np
from PIL import Image
from PIL import ImageFilter

DOMAINS = ("usps_like", "scanned", "optdigits")


def _bbox(image: np.ndarray) -> np.ndarray:
  rows, cols = np.flatnonzero(image.max(1) > 40), np.flatnonzero(image.max(0) > 40)
  return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def usps_like(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  out = []
  for image in x:
    digit = Image.fromarray(_bbox(image)).resize((32, 32), Image.LANCZOS)
    if rng.random() < 0.5:  # a pixel at 32x32: up to half a pixel of the 16x16 image per side
      digit = digit.filter(ImageFilter.MaxFilter(3))
    digit = digit.resize((16, 16), Image.LANCZOS).filter(
      ImageFilter.GaussianBlur(rng.uniform(0, 0.6))
    )
    out.append(np.asarray(digit))
  return np.stack(out).astype(np.uint8)


def scanned(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  out, size = [], 40
  ramp = np.linspace(-1, 1, size)
  for image in x:
    digit = Image.fromarray(_bbox(image))
    height = int(size * rng.uniform(0.45, 0.85))
    width = max(4, int(height * digit.width / digit.height))
    ink = np.zeros((size, size), np.float32)
    top, left = rng.integers(0, size - height + 1), rng.integers(0, max(1, size - width + 1))
    pasted = np.asarray(digit.resize((min(width, size), height), Image.BILINEAR), np.float32) / 255
    ink[top : top + height, left : left + pasted.shape[1]] = pasted
    ink = (
      np.asarray(
        Image.fromarray((ink * 255).astype(np.uint8)).filter(
          ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))
        ),
        np.float32,
      )
      / 255
    )
    paper = (
      rng.uniform(0.65, 0.95)
      + rng.uniform(-0.1, 0.1) * ramp[None, :]
      + rng.uniform(-0.1, 0.1) * ramp[:, None]
    )
    page = paper * (1 - ink * rng.uniform(0.6, 0.9)) + rng.normal(
      0, rng.uniform(0.01, 0.05), ink.shape
    )
    out.append(np.clip(page * 255, 0, 255).astype(np.uint8))
  return np.stack(out)


def optdigits():
  from sklearn.datasets import load_digits  # scikit-learn ships the UCI file

  digits = load_digits()
  return (digits.images * 255 / 16).round().astype(np.uint8), digits.target.astype(np.uint8)


def build(name: str, data_dir: str, output_dir: str, seed: int = 0) -> str:
  """Writes OUTPUT_DIR/NAME.npz (x_train y_train x_test y_test) and returns its path."""
  rng = np.random.default_rng(seed)
  if name == "optdigits":
    images, labels = optdigits()
  else:
    with np.load(os.path.join(data_dir, "mnist.npz")) as mnist:
      x, labels = mnist["x_test"], mnist["y_test"]
    images = {"usps_like": usps_like, "scanned": scanned}[name](x, rng)
  order = rng.permutation(len(labels))
  split = len(labels) * 4 // 5
  train, test = order[:split], order[split:]
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"{name}.npz")
  np.savez_compressed(
    path, x_train=images[train], y_train=labels[train], x_test=images[test], y_test=labels[test]
  )
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--data_dir", default=os.environ.get("TL_KERAS_DATA_DIR", "../shared/datasets")
  )
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
  args = parser.parse_args()
  for name in args.domains:
    print(build(name, args.data_dir, args.output_dir))


if __name__ == "__main__":
  main()
