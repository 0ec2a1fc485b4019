"""The values components accept: choices and ranges shared by the flag schema (`settings`) and
the components that take them as plain arguments, so that a component need not import the
whole-command settings. No TensorFlow here."""

from tl_keras.ranges import Range

# Adadelta's Keras default (0.001) is a thousand times too small for this CNN; 1.0 is the
# rate of the original paper and of the classic Keras MNIST examples.
DEFAULT_LEARNING_RATES = {"adadelta": 1.0, "adam": 1e-3}
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)
# constant: the rate throughout; cosine: from the rate down to 0 over each training phase's steps.
LR_SCHEDULES = ("constant", "cosine")
# Under a cosine decay the default rate is the peak. Pretraining with Adam at 3e-3 decayed over
# 3 epochs matched 4 constant epochs at 1e-3 on MNIST 0-4 (99.75-99.82% vs 99.75-99.81%, seeds
# 1, 2, 3, 42), but the default 5-9 finetune from it scored 99.26% against 99.49% at seed 42:
# the defaults stay constant.
DEFAULT_PEAK_LEARNING_RATES = {"adadelta": 1.0, "adam": 3e-3}
MAX_LEARNING_RATE = 10.0  # 10x Adadelta's usual 1.0
LEARNING_RATE = Range(0, MAX_LEARNING_RATE, real=True, low_open=True)

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")

DEFAULT_CONV_FILTERS = (16, 32)
MAX_CONV_FILTERS = 1_024
CONV_FILTERS = Range(1, MAX_CONV_FILTERS)  # each convolution's

IMAGE_CACHES = ("auto", "memory", "none")

# How images of another size reach the model's: stretched, or scaled into the box keeping the
# aspect ratio, centred and padded with black (as MNIST centres its digits).
# 'source': framed as the source model's training images were (its metadata's `framing`: for
# MNIST, the digit's bounding box scaled into a 20x20 box, centred by mass, light on dark).
# 'auto': 'source' for images of another size when the model records a framing, else resize.
FITS = ("auto", "resize", "pad", "source")
