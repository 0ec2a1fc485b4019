"""The single place that decides which Keras implementation tl_keras uses.

tl_keras builds on ``tf_keras`` (Keras 2) rather than the Keras 3 that TF 2.16+ exposes as
``tf.keras``: with Keras 3, ``MultiWorkerMirroredStrategy`` + ``Model.fit`` fails
(keras-team/keras#20585) and ``tensorflow_hub.KerasLayer`` cannot be used. Every other
module imports Keras from here:

    from tl_keras.keras_api import keras
"""

import tf_keras as keras

__all__ = ["keras"]
