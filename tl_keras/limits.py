"""Resource limits for untrusted input, checked before anything of that size is allocated.

Model files, data files and image folders may come from anyone. Each limit below is checked
against what the input *declares* (tensor shapes, zip entry sizes, image headers), so a small
file that would inflate to gigabytes is refused while it is still small. Peak memory on any
refused input stays far below these numbers.
"""

MIB = 1 << 20

# Declared tensor data of one model (weights, constants, variables). `--max_model_mb` raises it.
MAX_MODEL_BYTES = 2048 * MIB
# What a small model file may inflate to: a file whose tensors store S bytes may declare at
# most MAX_INFLATION * S + MIN_MODEL_BUDGET_BYTES of them. Weights compress by 1.1x at most
# and Keras stores them uncompressed; loading takes about 5x the declared bytes at its peak.
MAX_INFLATION = 2
MIN_MODEL_BUDGET_BYTES = 64 * MIB
# A model's description: a Keras JSON config (ResNet50's is 0.1 MiB) or metadata, and a
# SavedModel graph (ResNet50's is 3 MiB; parsing takes about 20x its size).
MAX_CONFIG_BYTES = 16 * MIB
# How deep a Keras config or Keras metadata may nest (a Functional model: about 10 levels, and
# about 8 more for each model nested in it); deeper is refused before json.loads recurses.
MAX_CONFIG_DEPTH = 256
MAX_MODEL_DESCRIPTION_BYTES = 32 * MIB
# Memory for reading an HDF5 file's attributes (layer and weight names) in a child process.
MAX_ATTRIBUTE_READ_BYTES = 1024 * MIB
# One layer's output for one image (ResNet50 at 224x224: 3 MiB at most).
MAX_ACTIVATION_BYTES = 256 * MIB
# Declared size of the arrays in one .npz data file (MNIST's is 53 MiB).
MAX_DATA_BYTES = 512 * MIB
# One image file on disk, and its pixel count as its header declares it (a 10000x10000 PNG
# compresses to 100 KB and decodes to 300 MB). Photos of 40 megapixels still pass.
MAX_IMAGE_FILE_BYTES = 64 * MIB
MAX_IMAGE_PIXELS = 40_000_000
# Scans of one JPEG: a progressive JPEG is decoded in one pass over the image per scan (photos
# have about 10; tens of thousands in 2 MB decode for minutes). NVIDIA nvImageCodec's default.
MAX_JPEG_SCANS = 256
# The tl_keras metadata (class names etc.) of one model file or SavedModel folder.
MAX_METADATA_BYTES = 16 * MIB
# Any JSON tl_keras reads back (metrics files, backup settings, metadata): its size, and how
# deep it may nest (json.loads recurses once per level; tl_keras writes at most 5 levels).
MAX_JSON_BYTES = 16 * MIB
MAX_JSON_DEPTH = 64
# Images as the model takes them (float32 at its input size), held in memory for an .npz or
# mnist: target (train and test; unlabelled images apart): counted after framing, so that
# many 1x1 images in a small file do not become gigabytes (full MNIST at 28x28: 210 MiB).
MAX_FITTED_DATA_BYTES = 512 * MIB
# The fitted images of a dir: target kept in memory with --image_cache=auto; a larger folder
# is streamed from its files (224x224 RGB: about 850 images).
MAX_IMAGE_CACHE_BYTES = 512 * MIB
