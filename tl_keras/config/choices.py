"""The values components accept: choices and ranges shared by the flag schema (`settings`) and
the components that take them as plain arguments, so that a component need not import the
whole-command settings. No TensorFlow here."""

from tl_keras.ranges import Range

# Adadelta's Keras default (0.001) is a thousand times too small for this CNN; 1.0 is the
# rate of the original paper and of the classic Keras MNIST examples.
DEFAULT_LEARNING_RATES = {"adadelta": 1.0, "adam": 1e-3}
OPTIMIZERS = tuple(DEFAULT_LEARNING_RATES)
MAX_LEARNING_RATE = 10.0  # 10x Adadelta's usual 1.0
LEARNING_RATE = Range(0, MAX_LEARNING_RATE, real=True, low_open=True)

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")

DEFAULT_CONV_FILTERS = (16, 32)
MAX_CONV_FILTERS = 1_024
CONV_FILTERS = Range(1, MAX_CONV_FILTERS)  # each convolution's

IMAGE_CACHES = ("auto", "memory", "none")
